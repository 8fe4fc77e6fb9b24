"""The firewall fails closed. With the ruleset broken (nft refuses it) or missing, kca-firewall.service
fails, and nothing that listens beyond loopback starts: the services (and the proxy, and Docker) carry
Requires=/After= on it, so a restart of the firewall stops them and a start of any of them fails on
the dependency, as it would at boot. The ruleset is restored and everything restarted afterwards.

Destructive for the duration of the test: run it on the test host, not on a server in use."""

from __future__ import annotations

import ipaddress

import pytest

from tasks.firewall import RULESET, UNIT

BACKUP = f"{RULESET}.kca-test-backup"
BROKEN = "table inet kca_filter { chain input { this is not a rule; } }\n"


def guarded_units(stack) -> list[str]:
    """Units that listen beyond loopback (or publish ports): each must require the firewall."""
    found = [
        s.unit for s in stack.systemd_services() if not ipaddress.ip_address(stack.listen_address(s)[0]).is_loopback
    ]
    if stack.proxied_services():
        found.append(stack.auth_proxy.unit)
    return [*found, "docker.service"]


def listeners_beyond_loopback(host, ports: set[int]) -> list[str]:
    """`ss` lines of listeners on a port of the map at a non-loopback address."""
    lines = []
    for line in host.check_output("ss -Htln").splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        if int(port) in ports and not ipaddress.ip_address(address.replace("*", "0.0.0.0")).is_loopback:
            lines.append(line)
    return lines


@pytest.fixture
def firewall_broken_then_restored(host, stack):
    """Yield a function that breaks the ruleset in a given way; always put the real one back and start
    what was running before."""
    units = guarded_units(stack)
    active = [u for u in units if host.service(u).is_running]
    assert host.run(f"cp -p {RULESET} {BACKUP}").rc == 0

    def breaks(how: str) -> None:
        if how == "broken":
            host.run(f"printf '%s' '{BROKEN}' > {RULESET}")
        else:
            host.run(f"rm -f {RULESET}")

    yield breaks, units, active
    host.run(f"mv -f {BACKUP} {RULESET}")
    # The test started each unit a few times in a row: Docker's own unit allows 3 starts a minute.
    host.run(f"systemctl reset-failed {UNIT} {' '.join(units)}")
    started = host.run(f"systemctl start {UNIT}")
    assert started.rc == 0, started.stderr
    if active:
        host.run(f"systemctl start {' '.join(active)}")
    assert host.service(UNIT).is_running
    still_down = [u for u in active if not host.service(u).is_running]
    assert not still_down, f"not running again after the restore: {still_down}"


@pytest.mark.parametrize("how", ["broken", "missing"])
def test_nothing_listens_beyond_loopback_without_the_ruleset(host, stack, firewall_broken_then_restored, how):
    breaks, units, active = firewall_broken_then_restored
    ports = {port.number for port, _ in stack.port_map()}
    assert active, f"none of {units} runs before the test: it would prove nothing"
    assert listeners_beyond_loopback(host, ports), "nothing listened beyond loopback before the test"

    breaks(how)
    restart = host.run(f"systemctl restart {UNIT}")
    assert restart.rc != 0, f"{UNIT} started with the ruleset {how}"
    # nft refusing the file fails the unit; a missing file fails its assertion (the unit stays inactive).
    assert not host.service(UNIT).is_running
    # As at boot: starting any of them fails on the dependency.
    for unit in units:
        start = host.run(f"systemctl start {unit}")
        assert start.rc != 0, f"{unit} started without the firewall"
        assert not host.service(unit).is_running, unit
    assert listeners_beyond_loopback(host, ports) == []
    # Why: each of them requires the firewall's unit.
    for unit in units:
        requires = host.run(f"systemctl show -p Requires --value {unit}").stdout.split()
        assert UNIT in requires, f"{unit} does not require {UNIT}"
