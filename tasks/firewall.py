"""The firewall: one nftables table rendered from the stack's port map, checked with `nft -c` before it
is loaded, loaded atomically (only its own table is replaced; Docker's tables survive), and loaded
again at boot by kca-firewall.service."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import systemd

from kca_stack import Stack
from kca_stack.firewall import TABLE, ruleset_context

from . import ops

SOURCE = "tasks/firewall.py"
RULESET = "/etc/kca/firewall.nft"
STAGED = "/etc/kca/firewall.nft.staged"
UNIT = "kca-firewall.service"
DOCKER_DROPIN = "docker.service.d/kca-firewall.conf"


@deploy("Firewall")
def deploy_firewall(stack: Stack) -> None:
    if not stack.firewall.enabled:
        logger.warning(f"{host.name}: firewall.enabled is false: no firewall is installed.")
        return

    ops.packages(name="Install nftables", packages=["nftables"], no_recommends=False)

    staged = ops.install_files(
        name="Render the firewall ruleset from the port map",
        files=[ops.template("templates/etc/kca/firewall.nft.j2", STAGED, source=SOURCE, **ruleset_context(stack))],
    )
    # Established traffic and SSH are accepted first and `nft -f` swaps the table in one transaction:
    # the deploy's own session survives. A ruleset nft refuses is never installed. Loaded when the staged
    # file is not the live one or the table is not loaded (a host that rebooted without the unit).
    ops.shell_unless(
        name="Check and load the firewall ruleset",
        done=f"cmp -s {STAGED} {RULESET} && nft list table inet {TABLE}",
        commands=[f"nft -c -f {STAGED}", f"install -m 0644 {STAGED} {RULESET}", f"nft -f {RULESET}"],
        triggers=[staged],
    )

    # Docker publishes ports on every address: it starts only with the firewall, as the services do
    # (their units carry Requires= themselves). A drop-in, so it holds whichever package ships docker.
    unit_files = ops.install_files(
        name=f"Install {UNIT} and make docker.service require it",
        files=[
            ops.template(
                f"templates/etc/systemd/system/{UNIT}.j2",
                f"/etc/systemd/system/{UNIT}",
                source=SOURCE,
                table=TABLE,
                ruleset=RULESET,
            ),
            ops.template(
                f"templates/etc/systemd/system/{DOCKER_DROPIN}.j2",
                f"/etc/systemd/system/{DOCKER_DROPIN}",
                source=SOURCE,
                firewall_unit=UNIT,
            ),
        ],
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit_files.did_change)
    # Enabled for the next boot; already active after the load above (a first start loads it again,
    # which is harmless: the file replaces only its own table).
    ops.units_running(name=f"Enable {UNIT}", units=[(UNIT, True, True)])
