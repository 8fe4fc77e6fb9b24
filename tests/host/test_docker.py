"""The Docker layer on the deployed target: the engine the data asks for, log rotation, the NVIDIA
runtime only with a GPU, the shared network, and compose files that the host's own compose parses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tasks.images import image_ref

ROOT = Path(__file__).resolve().parents[2]


COMPOSE = "docker compose"


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
        # Compose v2 at the production version, from its registry package, as the docker CLI plugin.
        version = stack.os_profiles["debian-12"]["docker_ce"]["versions"]["docker-compose-plugin"]
        assert host.check_output("docker compose version --short") == version.split("-")[0]


def test_daemon_json(host, stack):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == stack.docker["log_driver"]
    assert config["log-opts"] == stack.docker["log_opts"]
    assert ("nvidia" in config.get("runtimes", {})) == stack.gpu.present
    # And the running daemon uses it.
    assert host.check_output("docker info --format '{{.LoggingDriver}}'") == stack.docker["log_driver"]


def test_ai_network_exists(host, stack):
    assert host.run(f"docker network inspect {stack.network.docker_network}").rc == 0


def test_openwebui_compose_parses_on_the_host(host, stack):
    folder = stack.paths["openwebui"]
    result = host.run(f"cd {folder} && {COMPOSE} -p openwebui -f docker-compose.yml config -q")
    assert result.rc == 0, result.stderr


def test_openwebui_publishes_only_the_port_map(host, stack):
    folder = stack.paths["openwebui"]
    out = host.check_output(
        f"cd {folder} && {COMPOSE} -p openwebui config --format json | /usr/local/sbin/kca-compose-ports"
    )
    service = stack.services[stack.openwebui["service"]]
    port = service.ports[0]
    assert out.splitlines() == [f"{service.name} {service.bind} {port.number} {port.container_port}/tcp"]


def test_openwebui_runs_the_image_the_data_names(host, stack):
    image = image_ref(stack, stack.openwebui["image"], stack.openwebui["tag"])
    project = stack.services[stack.openwebui["service"]].compose_project
    running = host.check_output(
        f"docker ps --filter label=com.docker.compose.project={project} --format '{{{{.Image}}}} {{{{.Status}}}}'"
    )
    assert running.startswith(image + " Up"), running
    assert "(healthy)" in running, running


def test_a_half_started_project_is_converged_by_the_next_deploy(host, stack):
    """A deploy interrupted after the containers were created, or a container stopped by hand: the
    project is no longer converged, and the next deploy starts it (a converged one it leaves alone)."""
    webui = stack.services[stack.openwebui["service"]]
    folder = stack.paths["openwebui"]
    state = f"cd {folder} && /usr/local/sbin/kca-compose-state {webui.compose_project} -f docker-compose.yml"
    assert host.check_output(state) == "converged"
    container = host.check_output(f"docker ps -q --filter label=com.docker.compose.project={webui.compose_project}")
    host.run(f"docker stop {container}")
    try:
        assert host.check_output(state).startswith("pending"), "a stopped container must not look converged"
        done = subprocess.run(
            ["pyinfra", "-y", "--json", "inventory.py", "deploy.py"], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads(done.stdout)["results"]
        changed = [op["name"] for op in results["operations"] if op["success"]]
        assert [name for name in changed if "Open WebUI" in name] == [
            "Open WebUI | Converge Open WebUI (docker compose up -d)"
        ]
        assert host.check_output(state) == "converged"
    finally:
        host.run(f"docker start {container} || true")
