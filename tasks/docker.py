"""Docker engine: Docker's apt repository at pinned versions (production) or Debian's docker.io with
Docker Compose v2 from its registry package (the test host), by data; daemon.json with log rotation
(and the NVIDIA runtime where the GPU layer is present); the shared ai-network; the host-side helpers
the compose projects use; and `compose_up`, which converges a project."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from kca_stack import Stack

from . import ops
from .base import fetch_signing_key, os_profile
from .util import local_artifact

SOURCE = "tasks/docker.py"
RENDER_SECRETS = "/usr/local/sbin/kca-render-secrets"
COMPOSE_PORTS = "/usr/local/sbin/kca-compose-ports"
COMPOSE_STATE = "/usr/local/sbin/kca-compose-state"
DAEMON_JSON = "/etc/docker/daemon.json"
# Where the host keeps the files it renders with the secrets, their secrets still placeholders.
SECRET_TEMPLATES = "/etc/kca/templates"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


# Docker Compose v2 on every host: the plugin from Docker's repository, or the same release from
# artifacts.docker-compose where the engine is Debian's.
COMPOSE = "docker compose"


def daemon_config(stack: Stack) -> dict:
    config = {
        "log-driver": stack.docker["log_driver"],
        "log-opts": dict(stack.docker["log_opts"]),
    }
    if stack.gpu.present:
        # What `nvidia-ctk runtime configure --runtime=docker` writes; the GPU layer installs the
        # toolkit. Declared, not made the default: only containers that ask for it get the GPU.
        config["runtimes"] = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    return config


def docker_ce_packages(stack: Stack) -> list[str]:
    """`name=version` for each pinned package of this OS (apt installs exactly that version)."""
    versions = os_profile(stack)["docker_ce"]["versions"]
    return [f"{name}={version}" for name, version in versions.items()]


@deploy("Docker engine")
def deploy_docker(stack: Stack):
    """Returns the operations whose change means containers should be recreated (daemon.json)."""
    helpers = [
        ops.HostFile(RENDER_SECRETS, src=f"files{RENDER_SECRETS}", mode="0755"),
        ops.HostFile(COMPOSE_PORTS, src=f"files{COMPOSE_PORTS}", mode="0755"),
        ops.HostFile(COMPOSE_STATE, src=f"files{COMPOSE_STATE}", mode="0755"),
    ]
    if stack.docker["engine"] == "docker-ce":
        install_docker_ce(stack)
    else:
        ops.packages(
            name=f"Install {', '.join(stack.docker['debian_packages'])} (Debian's Docker)",
            packages=list(stack.docker["debian_packages"]),
        )
        compose = stack.artifacts[stack.docker["compose_artifact"]]
        helpers.append(ops.HostFile(stack.docker["compose_plugin_path"], src=local_artifact(compose), mode="0755"))

    # kca-render-secrets builds a compose project's environment from its template and the secrets;
    # kca-compose-ports and kca-compose-state read a project's merged configuration and its state.
    ops.directories(
        name=f"Create {SECRET_TEMPLATES}", dirs=[ops.HostDirectory(SECRET_TEMPLATES, "root", "root", "0700")]
    )
    ops.install_files(name="Install the Docker helpers (Compose v2, kca-render-secrets, kca-compose-*)", files=helpers)
    daemon_json = ops.install_files(
        name="Configure the Docker daemon (log rotation, runtimes)",
        files=[ops.json_file(daemon_config(stack), DAEMON_JSON)],
    )
    ops.units_running(name="Enable and start docker", units=[("docker.service", True, True)])
    systemd.service(
        name="Restart docker (daemon.json changed)",
        service="docker.service",
        restarted=True,
        _if=daemon_json.did_change,
    )
    name, bridge = stack.network.docker_network, stack.network.docker_network_bridge
    network(name=f"Create the Docker network {name} (bridge {bridge})", network=name, bridge=bridge)
    return [daemon_json]


class NetworkBridge(FactBase[str]):
    """The bridge interface of a Docker network: 'absent' when there is no such network, '' when it
    was created without a fixed name."""

    def command(self, network: str) -> str:
        template = f'{{{{index .Options "{BRIDGE_NAME_OPTION}"}}}}'
        return f"docker network inspect -f {shlex.quote(template)} {shlex.quote(network)} 2>/dev/null || echo absent"

    def process(self, output: list[str]) -> str:
        return output[-1].strip() if output else ""


@operation()
def network(network: str, bridge: str):
    """The shared Docker network, with the bridge name the firewall opens the internal ports to. That
    name is fixed at creation and cannot be changed on a network that exists: a network made without
    it is named, never replaced."""
    found = host.get_fact(NetworkBridge, network=network)
    if found == bridge:
        host.noop(f"the Docker network {network} exists with bridge {bridge}")
        return
    if found != "absent":
        raise OperationError(
            f"the Docker network {network} exists with bridge {found or 'br-<id>'}, the data says {bridge}; the "
            f"firewall would keep its containers from the internal ports. This step changed nothing. Fix: stop the "
            f"projects on it (docker compose -p openwebui down), `docker network rm {network}`, deploy again."
        )
    yield (
        f"docker network create --driver bridge -o {BRIDGE_NAME_OPTION}={shlex.quote(bridge)} {shlex.quote(network)}"
    )


def install_docker_ce(stack: Stack) -> None:
    repo = stack.docker["apt_repo"]
    profile = os_profile(stack)["docker_ce"]
    distro = profile["distro"]
    keyring = repo["keyring"]

    ops.packages(name="Install what checks Docker's repository key", packages=["ca-certificates", "curl", "gnupg"])
    ops.directories(name="Create /etc/apt/keyrings", dirs=[ops.HostDirectory("/etc/apt/keyrings", mode="0755")])
    fetch_signing_key(
        "Docker's repository key",
        repo["key_url"].format(distro=distro),
        keyring,
        repo["key_fingerprint"],
        dearmor=False,
    )
    sources = ops.install_files(
        name="Add Docker's apt repository",
        files=[
            ops.template(
                "templates/etc/apt/sources.list.d/docker.sources.j2",
                "/etc/apt/sources.list.d/docker.sources",
                source=SOURCE,
                url=repo["url"].format(distro=distro),
                suite=profile["codename"],
                components=repo["components"],
                arch=host.get_fact(Command, command="dpkg --print-architecture") or "amd64",
                keyring=keyring,
            )
        ],
    )
    ops.packages(
        name=f"Install Docker ({', '.join(docker_ce_packages(stack))})",
        packages=docker_ce_packages(stack),
        # A downgrade to the pinned version is what the data asks for.
        allow_downgrades=True,
        # A changed repository is read before anything is installed from it.
        update=True,
    )
    return sources


@operation()
def compose_up(project: str, folder: str, compose_args: Sequence[str] = (), triggers: Sequence = (), checks=(), wait=0):
    """Converge a compose project with `docker compose up -d`, which is idempotent.

    It runs when the project is not converged (a container missing, stopped or built from another
    configuration: a deploy interrupted half-way is finished by the next one), or when one of
    `triggers` (an operation that wrote a file the project reads) changed the host. `checks` run first
    and stop it on failure. `wait` (seconds): wait until every service is running and healthy, so the
    deploy ends with the application answering (its first start migrates a database)."""
    files_args = " ".join(shlex.quote(a) for a in compose_args)
    state = host.get_fact(
        ops.ShellTest,
        test=f'cd {shlex.quote(folder)} && [ "$({COMPOSE_STATE} {shlex.quote(project)} {files_args})" = converged ]',
    )
    if state and not ops.changed(triggers):
        host.noop(f"the compose project {project} is converged")
        return
    args = f"-p {shlex.quote(project)} {files_args}".strip()
    up = f"{COMPOSE} {args} up -d --remove-orphans" + (f" --wait --wait-timeout {wait}" if wait else "")
    for command in [*checks, up]:
        yield f"cd {shlex.quote(folder)} && {command}"


def secret_placeholder(secret: str | None) -> str:
    """What kca-render-secrets replaces with the secret file's content on the host ('' for none)."""
    return f"@@secret:{secret}@@" if secret else ""


def render_with_secrets(label: str, template: str, dest: str, context: dict):
    """Upload `template` (placeholders only) to /etc/kca/templates and have the host build `dest`
    from it with the secret files. Runs only when the uploaded template changed or `dest` is
    missing, so a converged host reports no change. Returns the operations whose change means
    `dest` changed."""
    staged = f"{SECRET_TEMPLATES}/{dest.strip('/').replace('/', '_')}.in"
    uploaded = ops.install_files(
        name=f"Upload the {label} template (secrets as placeholders)",
        files=[ops.template(template, staged, mode="0600", **context)],
    )
    rendered = ops.shell_unless(
        name=f"Render {dest} with the host's secrets",
        done=f"[ -e {shlex.quote(dest)} ]",
        commands=[f"{RENDER_SECRETS} {shlex.quote(staged)} {shlex.quote(dest)} 0600"],
        triggers=[uploaded],
    )
    return [uploaded, rendered]


def published_lines(rows: list[tuple[str, str, int, int]]) -> str:
    """The expected output of kca-compose-ports for (compose service, host ip, published, target)."""
    return "\n".join(
        f"{service} {ip} {published} {target}/tcp"
        for service, ip, published, target in sorted(rows, key=lambda r: (r[0], r[1], str(r[2]), str(r[3])))
    )
