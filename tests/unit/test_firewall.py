"""The nftables ruleset rendered from the committed data holds exactly the port map's external and
internal sets, keeps SSH and established traffic first, replaces only its own table, and nft accepts
it (checked in a throwaway network namespace, so this machine's firewall is never touched)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data
from kca_stack.firewall import (
    TABLE,
    docker_published_internal_ports,
    egress_bridges,
    external_ports,
    internal_bridge,
    internal_ports,
    ruleset_context,
)
from tasks.render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["testhost", "production"]


def render(stack) -> str:
    return render_template("templates/etc/kca/firewall.nft.j2", source="test", **ruleset_context(stack))


def set_elements(ruleset: str, name: str) -> set[int]:
    body = re.search(rf"set {name} \{{(.*?)\n\t\}}", ruleset, re.S).group(1)
    found = re.search(r"elements = \{(.*?)\}", body, re.S)
    return {int(x) for x in found.group(1).replace(",", " ").split()} if found else set()


def chain(ruleset: str, name: str) -> list[str]:
    body = re.search(rf"chain {name} \{{(.*?)\n\t\}}", ruleset, re.S).group(1)
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(params=GROUPS)
def stack(request):
    return build_stack(group_data(request.param))


def test_port_sets_partition_the_port_map(stack):
    every = {port.number for port, _ in stack.port_map()}
    assert set(external_ports(stack)) | set(internal_ports(stack)) == every
    assert not set(external_ports(stack)) & set(internal_ports(stack))
    for port, service in stack.port_map():
        assert (port.number in external_ports(stack)) == (service.exposure == "external"), service.name


def test_docker_published_internal_ports_are_the_containers_internal_ports(stack):
    expected = {
        p.number for s in stack.services.values() if s.kind == "docker" and s.exposure == "internal" for p in s.ports
    }
    assert set(docker_published_internal_ports(stack)) == expected
    # The design document's internal container ports.
    assert {3000, 3128, 5003, 5432, 6379} <= expected


def test_ruleset_sets_are_exactly_the_port_map(stack):
    ruleset = render(stack)
    assert set_elements(ruleset, "external_tcp") == set(external_ports(stack))
    assert set_elements(ruleset, "internal_tcp") == set(internal_ports(stack))
    # SSH is never in the port map's sets: it has a rule of its own.
    assert stack.network.ssh_port not in set_elements(ruleset, "internal_tcp")


def test_ruleset_replaces_only_its_own_table(stack):
    statements = [
        line
        for line in render(stack).splitlines()
        if line.strip() and not line.startswith("#") and not line[0].isspace()
    ]
    assert statements[:3] == [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    assert "flush ruleset" not in render(stack)


def test_established_and_ssh_come_first(stack):
    rules = chain(render(stack), "input")
    assert rules[0].startswith("type filter hook input") and "policy drop" in rules[0]
    assert rules[1] == "ct state established,related accept"
    ssh = next(i for i, r in enumerate(rules) if r.startswith(f"tcp dport {stack.network.ssh_port} accept"))
    external = next(i for i, r in enumerate(rules) if "@external_tcp" in r)
    assert ssh < external


def test_internal_ports_only_from_the_named_bridge_of_the_docker_network(stack):
    rules = chain(render(stack), "input")
    internal = [r for r in rules if "@internal_tcp" in r]
    bridge = internal_bridge(stack)
    assert bridge == stack.network.docker_network_bridge and "*" not in bridge
    # Exactly one rule per address family, each naming the bridge AND a Docker subnet.
    assert internal == [
        f'iifname "{bridge}" ip saddr @docker_v4 tcp dport @internal_tcp accept',
        f'iifname "{bridge}" ip6 saddr @docker_v6 tcp dport @internal_tcp accept',
    ]
    assert not any("br-*" in r or "docker0" in r for r in rules)


def test_ipv6_lets_dhcpv6_replies_and_mld_queries_in(stack):
    rules = chain(render(stack), "input")
    assert "ip6 saddr fe80::/10 icmpv6 type mld-listener-query accept" in rules
    assert any(r.startswith("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept") for r in rules)
    # Before the final counter: nothing after it accepts.
    assert rules[-1].startswith("counter")


def test_forward_accepts_only_dnat_to_external_ports_from_outside(stack):
    rules = chain(render(stack), "forward")
    assert rules[1] == "ct state established,related accept"
    outside = [r for r in rules[2:] if not r.startswith("iifname ")]
    # The one accept for traffic from outside the Docker bridges: DNATed by Docker from an external port.
    assert outside == [
        'meta l4proto tcp ct status dnat ct original proto-dst @external_tcp accept comment "published external ports"',
        'counter drop comment "dropped forward to unpublished or internal ports"',
    ]
    egress = [r for r in rules[2:] if r.startswith("iifname ")]
    assert egress == [f'iifname "{b}" accept' for b in egress_bridges(stack)]


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (apt-get install nftables)")
def test_nft_accepts_the_ruleset(stack, tmp_path):
    path = tmp_path / "kca.nft"
    path.write_text(render(stack))
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot check in a throwaway network namespace")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    check = subprocess.run(["unshare", "-n", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # Loading it twice in a namespace: the create-delete-create prologue makes it idempotent.
    twice = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"nft -f {path} && nft -f {path} && nft list table inet {TABLE}"],
        capture_output=True,
        text=True,
    )
    assert twice.returncode == 0, twice.stderr
    assert "ct original proto-dst @external_tcp" in twice.stdout
