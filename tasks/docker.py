"""Docker engine: Docker's apt repository at pinned versions (production) or Debian's docker.io with
Docker Compose v2 from its registry package (the test host), by data; daemon.json with log rotation
(and the NVIDIA runtime where the GPU layer is present); the shared ai-network; the host-side helpers
the compose projects use; and `compose_up`, which converges a project."""

from __future__ import annotations

import posixpath
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from kca_stack import Stack

from .base import fetch_signing_key, os_profile, packages_missing
from .util import local_artifact, put_json, remote_output

SOURCE = "tasks/docker.py"
RENDER_SECRETS = "/usr/local/sbin/kca-render-secrets"
COMPOSE_PORTS = "/usr/local/sbin/kca-compose-ports"
COMPOSE_STATE = "/usr/local/sbin/kca-compose-state"
DAEMON_JSON = "/etc/docker/daemon.json"
SECRET_TEMPLATES = "/etc/kca/templates"
JINJA = {"trim_blocks": True, "lstrip_blocks": True}
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
    if stack.docker["engine"] == "docker-ce":
        install_docker_ce(stack)
    else:
        wanted = list(stack.docker["debian_packages"])
        apt.packages(
            name=f"Install {', '.join(wanted)} (Debian's Docker)",
            packages=wanted,
            update=bool(packages_missing(wanted)),
            no_recommends=True,
        )
        compose = stack.artifacts[stack.docker["compose_artifact"]]
        plugin = stack.docker["compose_plugin_path"]
        files.directory(name=f"Create {posixpath.dirname(plugin)}", path=posixpath.dirname(plugin), mode="0755")
        files.put(
            name=f"Install Docker Compose v2 as the docker CLI plugin ({compose.pip})",
            src=str(local_artifact(compose)),
            dest=plugin,
            mode="0755",
        )

    files.directory(name="Create /etc/docker", path="/etc/docker", mode="0755")
    daemon_json = put_json("Configure the Docker daemon (log rotation, runtimes)", daemon_config(stack), DAEMON_JSON)
    systemd.service(name="Enable and start docker", service="docker.service", enabled=True, running=True)
    systemd.service(
        name="Restart docker (daemon.json changed)",
        service="docker.service",
        restarted=True,
        _if=daemon_json.did_change,
    )

    network = stack.network.docker_network
    bridge = stack.network.docker_network_bridge
    # The bridge's name is fixed at creation (the firewall opens the internal ports to it alone) and
    # cannot be changed on a network that exists: a network made without it is named, never replaced.
    found = remote_output(
        f"docker network inspect -f '{{{{index .Options \"{BRIDGE_NAME_OPTION}\"}}}}' {shlex.quote(network)}"
        " 2>/dev/null || echo absent"
    )
    if found not in ("absent", bridge):
        raise SystemExit(
            f"{host.name}: the Docker network {network} exists with bridge {found or 'br-<id>'}, the data says "
            f"{bridge}; the firewall would keep its containers from the internal ports. Nothing was changed. Fix: "
            f"stop the projects on it (docker compose -p openwebui down), `docker network rm {network}`, deploy again."
        )
    if found == "absent":
        server.shell(
            name=f"Create the Docker network {network} (bridge {bridge})",
            # Guarded again on the host: the fact was read before Docker was installed on a new host.
            commands=[
                f"docker network inspect {shlex.quote(network)} >/dev/null 2>&1"
                f" || docker network create --driver bridge -o {BRIDGE_NAME_OPTION}={shlex.quote(bridge)}"
                f" {shlex.quote(network)}"
            ],
        )

    install_helpers()
    return [daemon_json]


def install_docker_ce(stack: Stack) -> None:
    repo = stack.docker["apt_repo"]
    profile = os_profile(stack)["docker_ce"]
    distro = profile["distro"]
    keyring = repo["keyring"]

    apt.packages(
        name="Install what checks Docker's repository key",
        packages=["ca-certificates", "curl", "gnupg"],
        update=bool(packages_missing(["ca-certificates", "curl", "gnupg"])),
        no_recommends=True,
    )
    files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="0755")
    fetch_signing_key(
        "Docker's repository key",
        repo["key_url"].format(distro=distro),
        keyring,
        repo["key_fingerprint"],
        dearmor=False,
    )
    arch = remote_output("dpkg --print-architecture") or "amd64"
    sources = files.template(
        name="Add Docker's apt repository",
        src="templates/etc/apt/sources.list.d/docker.sources.j2",
        dest="/etc/apt/sources.list.d/docker.sources",
        mode="0644",
        source=SOURCE,
        url=repo["url"].format(distro=distro),
        suite=profile["codename"],
        components=repo["components"],
        arch=arch,
        keyring=keyring,
    )
    apt.update(name="Refresh the package index (Docker's repository changed)", _if=sources.did_change)
    pinned = docker_ce_packages(stack)
    apt.packages(
        name=f"Install Docker ({', '.join(pinned)})",
        packages=pinned,
        no_recommends=True,
        # A downgrade to the pinned version is what the data asks for.
        allow_downgrades=True,
        # Refresh the index only when something must be installed: a converged host stays quiet.
        update=bool(packages_missing([p.split("=")[0] for p in pinned])),
    )


def install_helpers() -> None:
    files.directory(name=f"Create {SECRET_TEMPLATES}", path=SECRET_TEMPLATES, mode="0700")
    files.put(
        name="Install kca-render-secrets (puts the host's secrets into rendered files)",
        src="files/usr/local/sbin/kca-render-secrets",
        dest=RENDER_SECRETS,
        mode="0755",
    )
    files.put(
        name="Install kca-compose-ports (what a compose project publishes)",
        src="files/usr/local/sbin/kca-compose-ports",
        dest=COMPOSE_PORTS,
        mode="0755",
    )
    files.put(
        name="Install kca-compose-state (whether a compose project is converged)",
        src="files/usr/local/sbin/kca-compose-state",
        dest=COMPOSE_STATE,
        mode="0755",
    )


def compose_up(label: str, project: str, folder: str, compose_args: list[str], changed: list, checks=(), wait=0):
    """Converge a compose project with `docker compose up -d`, which is idempotent.

    It runs when the project was not converged at planning (a container missing, stopped or built
    from another configuration: a deploy interrupted half-way is finished by the next one), or when
    a file the project reads changed during this run. `checks` run first and stop it on failure.
    `wait` (seconds): wait until every service is running and healthy, so the deploy ends with the
    application answering (its first start migrates a database)."""
    files_args = " ".join(shlex.quote(a) for a in compose_args)
    args = f"-p {shlex.quote(project)} {files_args}".strip()
    state = remote_output(
        f"cd {shlex.quote(folder)} && {COMPOSE_STATE} {shlex.quote(project)} {files_args} 2>/dev/null || echo pending"
    )
    pending = state != "converged"
    up = f"{COMPOSE} {args} up -d --remove-orphans" + (f" --wait --wait-timeout {wait}" if wait else "")
    return server.shell(
        name=f"Converge {label} (docker compose up -d)",
        commands=[*checks, up],
        _chdir=folder,
        _if=lambda: pending or any(op.did_change() for op in changed if op is not None),
    )


def secret_placeholder(secret: str | None) -> str:
    """What kca-render-secrets replaces with the secret file's content on the host ('' for none)."""
    return f"@@secret:{secret}@@" if secret else ""


def render_with_secrets(label: str, template: str, dest: str, context: dict):
    """Upload `template` (placeholders only) to /etc/kca/templates and have the host build `dest`
    from it with the secret files. Runs only when the uploaded template changed or `dest` is
    missing, so a converged host reports no change. Returns the operations whose change means
    `dest` changed."""
    staged = f"{SECRET_TEMPLATES}/{dest.strip('/').replace('/', '_')}.in"
    uploaded = files.template(
        name=f"Upload the {label} template (secrets as placeholders)",
        src=template,
        dest=staged,
        mode="0600",
        user="root",
        group="root",
        jinja_env_kwargs=JINJA,
        **context,
    )
    command = f"{RENDER_SECRETS} {shlex.quote(staged)} {shlex.quote(dest)} 0600"
    if host.get_fact(File, path=dest):
        rendered = server.shell(
            name=f"Render {dest} with the host's secrets", commands=[command], _if=uploaded.did_change
        )
    else:
        rendered = server.shell(name=f"Render {dest} with the host's secrets (missing)", commands=[command])
    return [uploaded, rendered]


def published_lines(rows: list[tuple[str, str, int, int]]) -> str:
    """The expected output of kca-compose-ports for (compose service, host ip, published, target)."""
    return "\n".join(
        f"{service} {ip} {published} {target}/tcp"
        for service, ip, published, target in sorted(rows, key=lambda r: (r[0], r[1], str(r[2]), str(r[3])))
    )
