"""The port map made true on the deployed target: from this machine, a port answers iff the map calls it
external and something listens there; a port a container publishes is reachable from outside only if
the map calls it external; SSH survives the firewall; secrets and rendered configs keep their modes.

Run with `-s` to see the table (port, service, exposure, listening, reachable).
"""

from __future__ import annotations

import socket

import pytest

from kca_stack.firewall import TABLE, docker_published_external_ports, docker_published_internal_ports

CONNECT_TIMEOUT = 2.0
TEST_IMAGE = "kca-test/busybox"


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:  # refused, dropped (timeout) or unreachable
        return False


def listening_ports(host) -> set[int]:
    """TCP ports something listens on, on any address (ss -Htln: State Recv-Q Send-Q Local Peer)."""
    out = host.check_output("ss -Htln")
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.split()}


@pytest.fixture(scope="module")
def port_table(host, stack, target_address, request):
    listening = listening_ports(host)
    rows = []
    for port, service in stack.port_map():
        rows.append(
            {
                "port": port.number,
                "service": service.name,
                "exposure": service.exposure,
                "listening": port.number in listening,
                "reachable": reachable(target_address, port.number),
            }
        )
    lines = [
        f"Port map on {target_address} (from this machine, {CONNECT_TIMEOUT:g} s timeout):",
        f"{'port':>5}  {'service':<20} {'exposure':<9} {'listening':<9} reachable",
        *(
            f"{r['port']:>5}  {r['service']:<20} {r['exposure']:<9} {r['listening']!s:<9} {r['reachable']}"
            for r in rows
        ),
    ]
    # Shown even under pytest's output capture: the table is the point of this module.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))
    return {r["port"]: r for r in rows}


def port_ids(stack_rows):
    return [f"{port.number}-{service.name}" for port, service in stack_rows]


def pytest_generate_tests(metafunc):
    if "map_port" in metafunc.fixturenames:
        from kca_stack import build_stack
        from kca_stack.data import group_data

        stack = build_stack(group_data(metafunc.config.option.kca_group))
        rows = stack.port_map()
        metafunc.parametrize("map_port", [port.number for port, _ in rows], ids=port_ids(rows))


def test_port_reachable_iff_external_and_listening(port_table, map_port):
    row = port_table[map_port]
    expected = row["exposure"] == "external" and row["listening"]
    assert row["reachable"] == expected, (
        f"port {map_port} ({row['service']}, {row['exposure']}, listening={row['listening']}) "
        f"is {'reachable' if row['reachable'] else 'unreachable'} from outside"
    )


def test_ssh_answers_through_the_firewall(stack, target_address):
    with socket.create_connection((target_address, stack.network.ssh_port), timeout=5) as conn:
        assert conn.recv(64).startswith(b"SSH-")


def test_firewall_table_is_loaded_and_persistent(host):
    assert host.run(f"nft list table inet {TABLE}").rc == 0
    unit = host.service("kca-firewall.service")
    assert unit.is_enabled
    ruleset = host.file("/etc/kca/firewall.nft")
    assert ruleset.user == "root" and ruleset.mode == 0o644
    assert host.run("nft -c -f /etc/kca/firewall.nft").rc == 0


# --- a container publishing ports, built on the host without any registry ------------------------


@pytest.fixture(scope="module")
def busybox_image(host):
    if host.run("command -v docker").rc != 0:
        pytest.skip("Docker is not installed on the target")
    if host.run(f"docker image inspect {TEST_IMAGE}").rc != 0:
        if host.run("test -x /bin/busybox").rc != 0:
            installed = host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static")
            if installed.rc != 0:
                pytest.skip(f"busybox-static cannot be installed on the target: {installed.stderr[-300:]}")
        built = host.run(
            "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/busybox; "
            f"tar -C $d -c bin | docker import - {TEST_IMAGE} >/dev/null; rm -rf $d"
        )
        assert built.rc == 0, built.stderr
    return TEST_IMAGE


def free_port(ports: list[int], listening: set[int]) -> int | None:
    return next((p for p in ports if p not in listening), None)


@pytest.fixture
def published(host, busybox_image):
    """Start a container publishing 0.0.0.0:PORT -> PORT (busybox httpd); removed afterwards."""
    started = []

    def run(port: int) -> None:
        name = f"kca-test-{port}"
        host.run(f"docker rm -f {name}")
        result = host.run(
            f"docker run -d --rm --name {name} -p 0.0.0.0:{port}:{port} {busybox_image} "
            f"/bin/busybox httpd -f -p {port} -h /"
        )
        assert result.rc == 0, result.stderr
        started.append(name)
        # Up when it answers from inside the host.
        assert (
            host.run(f"timeout 10 sh -c 'until curl -s -o /dev/null http://127.0.0.1:{port}/; do sleep 0.2; done'").rc
            == 0
        )

    yield run
    for name in started:
        host.run(f"docker rm -f {name}")


def test_container_cannot_open_an_internal_port(host, stack, target_address, published):
    port = free_port(docker_published_internal_ports(stack), listening_ports(host))
    if port is None:
        pytest.skip("every internal container port is in use on the target")
    published(port)
    assert host.run(f"curl -s -o /dev/null --max-time 3 http://127.0.0.1:{port}/").rc == 0, "not up inside the host"
    assert not reachable(target_address, port), f"a container published internal port {port} to the outside"


def test_container_can_open_an_external_port(host, stack, target_address, published):
    port = free_port(docker_published_external_ports(stack), listening_ports(host))
    if port is None:
        pytest.skip("every external container port is in use on the target")
    published(port)
    assert reachable(target_address, port), f"external port {port}, published by a container, is not reachable"


# --- modes --------------------------------------------------------------------------------------


def test_secret_files_are_root_only(host, stack):
    for name in stack.secrets:
        f = host.file(f"{stack.paths['secrets']}/{name}")
        assert f.exists, f"secret {name} was not generated"
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), name
    folder = host.file(stack.paths["secrets"])
    assert folder.mode == 0o700 and folder.user == "root"


def test_rendered_configs_modes(host, stack):
    expected = {
        "/etc/docker/daemon.json": 0o644,
        f"{stack.paths['openwebui']}/docker-compose.yml": 0o644,
        stack.openwebui["env_file"]: 0o600,
        "/etc/kca/firewall.nft": 0o644,
    }
    if stack.dify["source"] != "unavailable":
        expected[f"{stack.paths['dify']}/.env"] = 0o600
        expected[f"{stack.paths['dify']}/docker-compose.override.yaml"] = 0o644
    for path, mode in expected.items():
        f = host.file(path)
        assert f.exists, path
        assert f.user == "root" and f.mode == mode, f"{path}: {f.user} {oct(f.mode)}"
    # No placeholder is left and no secret is in the world-readable compose file.
    assert "@@secret:" not in host.file(stack.openwebui["env_file"]).content_string
    assert "@@secret:" not in host.file(f"{stack.paths['openwebui']}/docker-compose.yml").content_string


def test_firewall_reapplied_without_dropping_the_ssh_session(host):
    """Re-load the ruleset through the very SSH session testinfra holds, then use that session again:
    established traffic is accepted first and the table is swapped in one transaction."""
    from tasks.firewall import RULESET

    reload = host.run(f"nft -f {RULESET} && echo reloaded")
    assert reload.rc == 0 and "reloaded" in reload.stdout, reload.stderr
    assert host.run("echo still-here").stdout.strip() == "still-here"
