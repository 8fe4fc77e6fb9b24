"""The firewall: one nftables table rendered from the stack's port map, checked with `nft -c` before it
is loaded, loaded atomically (only its own table is replaced; Docker's tables survive), and loaded
again at boot by kca-firewall.service."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from kca_stack import Stack
from kca_stack.firewall import TABLE, ruleset_context

from .base import packages_missing
from .util import remote_output

SOURCE = "tasks/firewall.py"
RULESET = "/etc/kca/firewall.nft"
STAGED = "/etc/kca/firewall.nft.staged"
UNIT = "kca-firewall.service"
DOCKER_DROPIN = "docker.service.d/kca-firewall.conf"
DOCKER_DROPIN_TEMPLATE = "docker.service.d/kca-firewall.conf.j2"
JINJA = {"trim_blocks": True, "lstrip_blocks": True}


@deploy("Firewall")
def deploy_firewall(stack: Stack) -> None:
    if not stack.firewall.enabled:
        logger.warning(f"{host.name}: firewall.enabled is false: no firewall is installed.")
        return

    apt.packages(name="Install nftables", packages=["nftables"], update=bool(packages_missing(["nftables"])))

    staged = files.template(
        name="Render the firewall ruleset from the port map",
        src="templates/etc/kca/firewall.nft.j2",
        dest=STAGED,
        mode="0644",
        jinja_env_kwargs=JINJA,
        source=SOURCE,
        **ruleset_context(stack),
    )
    # Facts, read before the run: is the staged file already the live one, and is the table loaded?
    state = remote_output(
        f"cmp -s {STAGED} {RULESET} && echo same || echo differ; "
        f"nft list table inet {TABLE} >/dev/null 2>&1 && echo loaded || echo absent",
    )
    pending = "same" not in state or "loaded" not in state
    # Established traffic and SSH are accepted first and `nft -f` swaps the table in one transaction:
    # the deploy's own session survives. A ruleset nft refuses is never installed.
    commands = [f"nft -c -f {STAGED}", f"install -m 0644 {STAGED} {RULESET}", f"nft -f {RULESET}"]
    if pending:
        server.shell(name="Check and load the firewall ruleset", commands=commands)
    else:
        server.shell(name="Check and load the firewall ruleset (changed)", commands=commands, _if=staged.did_change)

    files.directory(name="Create docker.service's drop-in folder", path="/etc/systemd/system/docker.service.d")
    unit = files.template(
        name=f"Install {UNIT}",
        src=f"templates/etc/systemd/system/{UNIT}.j2",
        dest=f"/etc/systemd/system/{UNIT}",
        mode="0644",
        source=SOURCE,
        table=TABLE,
        ruleset=RULESET,
    )
    # Docker publishes ports on every address: it starts only with the firewall, as the services do
    # (their units carry Requires= themselves). A drop-in, so it holds whichever package ships docker.
    docker_dropin = files.template(
        name=f"Make docker.service require {UNIT}",
        src=f"templates/etc/systemd/system/{DOCKER_DROPIN_TEMPLATE}",
        dest=f"/etc/systemd/system/{DOCKER_DROPIN}",
        mode="0644",
        source=SOURCE,
        firewall_unit=UNIT,
    )
    systemd.daemon_reload(name="Reload systemd units", _if=lambda: unit.did_change() or docker_dropin.did_change())
    # Enabled for the next boot; already active after the load above (a first start loads it again,
    # which is harmless: the file replaces only its own table).
    systemd.service(name=f"Enable {UNIT}", service=UNIT, enabled=True, running=True)
