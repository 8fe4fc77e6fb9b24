"""The firewall's port sets, computed from the stack's port map: the deploy renders the nftables
ruleset from these, and the tests check the rendered ruleset and the live host against the same sets.

Pure functions over the Stack: no pyinfra, no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Stack

TABLE = "kca_filter"


@dataclass(frozen=True)
class PortRule:
    """One row of the port map, as the firewall sees it."""

    port: int
    service: str
    exposure: str
    # A container publishes it (Docker DNATs it at prerouting, so it crosses the forward hook).
    docker: bool
    bind: str


def port_rules(stack: Stack) -> list[PortRule]:
    return [
        PortRule(port.number, service.name, service.exposure, service.kind == "docker", service.bind)
        for port, service in stack.port_map()
    ]


def external_ports(stack: Stack) -> list[int]:
    """Open to the world."""
    return sorted({r.port for r in port_rules(stack) if r.exposure == "external"})


def internal_ports(stack: Stack) -> list[int]:
    """Open to loopback and the Docker networks only."""
    return sorted({r.port for r in port_rules(stack) if r.exposure == "internal"})


def docker_published_internal_ports(stack: Stack) -> list[int]:
    """Internal ports a container publishes: the ones ufw-style INPUT rules would not protect."""
    return sorted({r.port for r in port_rules(stack) if r.exposure == "internal" and r.docker})


def docker_published_external_ports(stack: Stack) -> list[int]:
    return sorted({r.port for r in port_rules(stack) if r.exposure == "external" and r.docker})


def docker_subnets(stack: Stack) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) networks containers come from when they reach host services."""
    v4, v6 = [], []
    for text in stack.network.docker_subnets:
        network = ipaddress.ip_network(text, strict=False)
        (v4 if network.version == 4 else v6).append(str(network))
    return v4, v6


def internal_bridge(stack: Stack) -> str:
    """The Linux bridge of the stack's Docker network (its name is pinned when the network is made):
    the only interface, besides loopback, that reaches the internal ports."""
    return stack.network.docker_network_bridge


def egress_bridges(stack: Stack) -> list[str]:
    return list(stack.network.docker_egress_bridges)


def ruleset_context(stack: Stack) -> dict:
    """Everything the nftables template needs; the template only lays it out."""
    v4, v6 = docker_subnets(stack)
    return {
        "table": TABLE,
        "ssh_port": int(stack.network.ssh_port),
        "external_ports": external_ports(stack),
        "internal_ports": internal_ports(stack),
        "docker_subnets_v4": v4,
        "docker_subnets_v6": v6,
        "internal_bridge": internal_bridge(stack),
        "egress_bridges": egress_bridges(stack),
        "rows": port_rules(stack),
    }
