"""The Docker layer on the deployed target: the engine the data asks for, log rotation, the NVIDIA
runtime only with a GPU, the shared network, and compose files that the host's own compose parses."""

from __future__ import annotations

import json


def compose(stack) -> str:
    return "docker compose" if stack.docker["engine"] == "docker-ce" else "docker-compose"


def test_docker_is_running_and_enabled(host):
    docker = host.service("docker")
    assert docker.is_running
    assert docker.is_enabled


def test_engine_packages_match_the_data(host, stack):
    if stack.docker["engine"] == "docker-ce":
        for name in ("docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"):
            assert host.package(name).is_installed, name
    else:
        for name in stack.docker["debian_packages"]:
            assert host.package(name).is_installed, name


def test_daemon_json(host, stack):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == stack.docker["log_driver"]
    assert config["log-opts"] == stack.docker["log_opts"]
    assert ("nvidia" in config.get("runtimes", {})) == stack.gpu.present
    # And the running daemon uses it.
    assert host.check_output("docker info --format '{{.LoggingDriver}}'") == stack.docker["log_driver"]


def test_ai_network_exists(host, stack):
    assert host.run(f"docker network inspect {stack.network['docker_network']}").rc == 0


def test_openwebui_compose_parses_on_the_host(host, stack):
    folder = stack.paths["openwebui"]
    result = host.run(f"cd {folder} && {compose(stack)} -p openwebui -f docker-compose.yml config -q")
    assert result.rc == 0, result.stderr


def test_openwebui_publishes_only_the_port_map(host, stack):
    folder = stack.paths["openwebui"]
    config = "config --format json" if stack.docker["engine"] == "docker-ce" else "config"
    out = host.check_output(
        f"cd {folder} && {compose(stack)} -p openwebui {config} | /usr/local/sbin/kca-compose-ports"
    )
    service = stack.services[stack.openwebui["service"]]
    port = service.ports[0]
    assert out.splitlines() == [f"{service.name} {service.bind} {port.number} {port.container_port}/tcp"]
