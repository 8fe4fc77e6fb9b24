"""The rendered ruleset against real traffic, in throwaway network namespaces on this machine (its own
firewall is never touched): a server namespace loads the ruleset and holds Docker's shape (the named
bridge of ai-network with a container behind it, another Docker network's bridge with another, and
Docker's DNAT of published ports); a LAN namespace is a host on the server's network that routes the
Docker subnets through the server.

- From the LAN: external host ports answer, internal ones do not; a published external container port
  answers through DNAT, a published internal one does not; a container reached directly by routing
  (no DNAT) does not answer on any port, external ones included.
- From containers: the internal host ports answer the ai-network bridge only; containers reach out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data
from kca_stack.firewall import external_ports, internal_bridge, internal_ports, ruleset_context
from tasks.render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"kf{os.getpid() % 100000}"
SERVER, LAN, AI_CONTAINER, OTHER_CONTAINER = (f"{PREFIX}-{n}" for n in ("srv", "lan", "ai", "oth"))
SERVER_LAN_IP, LAN_IP = "10.250.0.1", "10.250.0.2"
AI_GATEWAY, AI_CONTAINER_IP = "172.30.0.1", "172.30.0.2"
OTHER_GATEWAY, OTHER_CONTAINER_IP = "172.31.0.1", "172.31.0.2"
OTHER_BRIDGE = "br-0123456789ab"  # what Docker names a network's bridge when nobody names it
LAN_PORT = 9000

LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5) as c:
        sys.exit(0 if c.recv(2) == b"ok" else 1)
except OSError:
    sys.exit(1)
"""


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def in_ns(ns: str, *args: str) -> None:
    run("ip", "netns", "exec", ns, *args)


def reaches(ns: str, address: str, port: int) -> bool:
    attempt = ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, address, str(port)]
    return subprocess.run(attempt).returncode == 0


def veth(a_ns: str, a_name: str, b_ns: str, b_name: str) -> None:
    run("ip", "link", "add", f"{PREFIX}a", "type", "veth", "peer", "name", f"{PREFIX}b")
    run("ip", "link", "set", f"{PREFIX}a", "netns", a_ns)
    run("ip", "link", "set", f"{PREFIX}b", "netns", b_ns)
    in_ns(a_ns, "ip", "link", "set", f"{PREFIX}a", "name", a_name)
    in_ns(b_ns, "ip", "link", "set", f"{PREFIX}b", "name", b_name)
    in_ns(a_ns, "ip", "link", "set", a_name, "up")
    in_ns(b_ns, "ip", "link", "set", b_name, "up")


def bridge_with_container(bridge: str, gateway: str, container_ns: str, container_ip: str) -> None:
    in_ns(SERVER, "ip", "link", "add", bridge, "type", "bridge")
    in_ns(SERVER, "ip", "addr", "add", f"{gateway}/24", "dev", bridge)
    in_ns(SERVER, "ip", "link", "set", bridge, "up")
    veth(SERVER, f"v{bridge[-8:]}", container_ns, "eth0")
    in_ns(SERVER, "ip", "link", "set", f"v{bridge[-8:]}", "master", bridge)
    in_ns(container_ns, "ip", "addr", "add", f"{container_ip}/24", "dev", "eth0")
    in_ns(container_ns, "ip", "route", "add", "default", "via", gateway)


def render(stack) -> str:
    return render_template("templates/etc/kca/firewall.nft.j2", source="test", **ruleset_context(stack))


@pytest.fixture(scope="module")
def stack():
    return build_stack(group_data("production"))


@pytest.fixture(scope="module")
def network(stack, tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, ip (iproute2) and nft (nftables)")
    probe = subprocess.run(["ip", "netns", "add", f"{PREFIX}-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {probe.stderr.strip()}")
    run("ip", "netns", "del", f"{PREFIX}-probe")

    namespaces = [SERVER, LAN, AI_CONTAINER, OTHER_CONTAINER]
    listeners: list[subprocess.Popen] = []
    try:
        for ns in namespaces:
            run("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        veth(SERVER, "eth0", LAN, "eth0")
        in_ns(SERVER, "ip", "addr", "add", f"{SERVER_LAN_IP}/24", "dev", "eth0")
        in_ns(LAN, "ip", "addr", "add", f"{LAN_IP}/24", "dev", "eth0")
        # The LAN host routes Docker's subnets through the server.
        in_ns(LAN, "ip", "route", "add", "172.16.0.0/12", "via", SERVER_LAN_IP)
        bridge_with_container(internal_bridge(stack), AI_GATEWAY, AI_CONTAINER, AI_CONTAINER_IP)
        bridge_with_container(OTHER_BRIDGE, OTHER_GATEWAY, OTHER_CONTAINER, OTHER_CONTAINER_IP)
        in_ns(SERVER, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

        ruleset = tmp_path_factory.mktemp("fw") / "kca.nft"
        ruleset.write_text(render(stack))
        in_ns(SERVER, "nft", "-f", str(ruleset))
        # Docker's publishing: DNAT at prerouting from the server's ports to the container.
        published = {min(external_ports(stack)): "external", min(internal_ports(stack)): "internal"}
        nat = tmp_path_factory.mktemp("nat") / "docker-nat.nft"
        nat.write_text(
            f"table ip {PREFIX}nat {{\n\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat;\n"
            + "".join(f'\t\tiifname "eth0" tcp dport {port} dnat to {AI_CONTAINER_IP}:{port}\n' for port in published)
            + "\t}\n}\n"
        )
        in_ns(SERVER, "nft", "-f", str(nat))

        host_ports = [*external_ports(stack), *internal_ports(stack)]
        for ns, ports in (
            (SERVER, host_ports),
            (AI_CONTAINER, [*external_ports(stack), *internal_ports(stack)]),
            (LAN, [LAN_PORT]),
        ):
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, *map(str, ports)], stdout=subprocess.PIPE
            )
            assert process.stdout.readline().strip() == b"ready"
            listeners.append(process)
        time.sleep(0.2)
        yield published
    finally:
        for process in listeners:
            process.terminate()
            process.wait(timeout=10)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_lan_reaches_external_host_ports_only(stack, network):
    for port in external_ports(stack):
        assert reaches(LAN, SERVER_LAN_IP, port), port
    for port in internal_ports(stack):
        assert not reaches(LAN, SERVER_LAN_IP, port), port


def test_lan_reaches_a_container_only_through_dnat_of_an_external_port(stack, network):
    by_exposure = {exposure: port for port, exposure in network.items()}
    assert reaches(LAN, SERVER_LAN_IP, by_exposure["external"]), "the published external port is closed"
    assert not reaches(LAN, SERVER_LAN_IP, by_exposure["internal"]), "Docker opened an internal port"
    # Routed straight to the container, no DNAT: nothing answers, external ports included.
    for port in (by_exposure["external"], by_exposure["internal"]):
        assert not reaches(LAN, AI_CONTAINER_IP, port), f"the LAN reached the container's {port} by routing"


def test_internal_host_ports_answer_the_ai_network_bridge_only(stack, network):
    for port in internal_ports(stack):
        assert reaches(AI_CONTAINER, AI_GATEWAY, port), f"ai-network's container cannot reach {port}"
        assert not reaches(OTHER_CONTAINER, OTHER_GATEWAY, port), f"another Docker network reached {port}"


def test_containers_reach_out(network):
    assert reaches(AI_CONTAINER, LAN_IP, LAN_PORT)
    assert reaches(OTHER_CONTAINER, LAN_IP, LAN_PORT)
