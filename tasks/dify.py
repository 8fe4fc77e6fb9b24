"""Dify: the official release's docker/ folder at a pinned tag (checked by sha256), a .env with every
upstream default secret replaced on the host, and a docker-compose.override.yaml that publishes
exactly what the stack's port map says. `compose up` runs only where images can be pulled, only when
something it reads changed, and only after the merged project was checked to publish nothing else.

Where Dify's images cannot be pulled, `dify.database_standin` may put a real PostgreSQL server in place
of db_postgres (the test host): its image is built on the host before a restored dump is loaded into
its volume, and it starts where Dify would."""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import files

from kca_stack import Service, Stack

from . import ops
from .docker import COMPOSE, COMPOSE_PORTS, compose_up, published_lines, render_with_secrets, secret_placeholder
from .images import build_local_image, image_ref
from .util import CACHE_DIR, sha256_of

SOURCE = "tasks/dify.py"
ENV_TEMPLATE = "templates/opt/ai-platform/dify-official/docker/env.j2"
STANDIN_COMPOSE_TEMPLATE = "templates/opt/ai-platform/dify-official/docker/docker-compose.db-standin.yaml.j2"
STANDIN_ENV_TEMPLATE = "templates/etc/kca/dify-db-standin.env.in.j2"
OVERRIDE_TEMPLATE = "templates/opt/ai-platform/dify-official/docker/docker-compose.override.yaml.j2"
PROJECT = "dify"
SECRETS_CHECK = "/usr/local/sbin/kca-compose-secrets"
SECRETS_RULES = "/etc/kca/dify-compose-rules.json"


def services(stack: Stack) -> list[Service]:
    return [s for s in stack.services.values() if s.kind == "docker" and s.compose_project == PROJECT]


def compose_name(service: Service) -> str:
    return service.settings.compose_service


def port_spec(service: Service, port) -> str:
    return f"{service.bind}:{port.number}:{port.target}"


def upstream_port_var(stack: Stack, service: Service, port) -> str | None:
    """The .env variable through which upstream's own compose file publishes this port, if any."""
    by_container_port = stack.dify["upstream_port_vars"].get(compose_name(service), {})
    return by_container_port.get(str(port.target))


def port_var_value(service: Service, port) -> str:
    return str(port.number) if service.bind == "0.0.0.0" else f"{service.bind}:{port.number}"


def port_vars(stack: Stack) -> list[tuple[str, str]]:
    return [
        (var, port_var_value(s, p)) for s in services(stack) for p in s.ports if (var := upstream_port_var(stack, s, p))
    ]


def expected_published(stack: Stack) -> list[tuple[str, str, int, int]]:
    """(compose service, host ip, host port, container port): all the merged project may publish."""
    return [(compose_name(s), s.bind, p.number, p.target) for s in services(stack) for p in s.ports]


def _empty_row() -> dict:
    """Every key the override template reads (it renders with StrictUndefined, as the deploy does)."""
    return {"ports": [], "environment": [], "networks": [], "extra_hosts": []}


def override_services(stack: Stack) -> list[dict]:
    """Ports upstream does not publish itself go in the override; a port variable upstream also
    reads as a plain port (the API's plugin install port) is set back to the plain number there; the
    services that call the host's model services join ai-network (listing their upstream networks too:
    a service that names networks leaves the implicit default one)."""
    rows: dict[str, dict] = {}
    for s in services(stack):
        for p in s.ports:
            if upstream_port_var(stack, s, p) is None:
                rows.setdefault(compose_name(s), _empty_row())["ports"].append(port_spec(s, p))
    for name, upstream_networks in stack.dify["host_service_clients"].items():
        row = rows.setdefault(name, _empty_row())
        row["networks"] = [*upstream_networks, stack.network.docker_network]
        row["extra_hosts"] = ["host.docker.internal:host-gateway"]
    values = dict(port_vars(stack))
    for var, readers in stack.dify.get("port_var_readers", {}).items():
        if var in values:
            plain = values[var].rsplit(":", 1)[-1]
            for compose_service, key in readers:
                rows.setdefault(compose_service, _empty_row())["environment"].append((key, plain))
    return [{"name": name, **row} for name, row in sorted(rows.items())]


def api_url(stack: Stack) -> str:
    """CONSOLE_API_URL and APP_API_URL: the nginx entry (network.domain, https by dify.https).

    The web entry on 3002 is the web container alone: with both empty, its page calls /console/api on
    its own origin, which only nginx routes. The page served by nginx calls its own origin either way."""
    scheme = "https" if stack.dify["https"].get("enabled") else "http"
    return f"{scheme}://{stack.network.domain}"


def env_context(stack: Stack) -> dict:
    cfg = stack.dify
    https = cfg["https"]
    domain = stack.network.domain
    secrets = [(key, secret_placeholder(name)) for key, name in cfg["secrets"].items()]
    return {
        "source": SOURCE,
        "tag": cfg["tag"],
        "profiles": list(cfg["profiles"]) + (["certbot"] if https.get("certbot") else []),
        "secrets": secrets,
        "celery_broker_url": f"redis://:{secret_placeholder(cfg['secrets']['REDIS_PASSWORD'])}@redis:6379/1",
        "server_name": domain,
        "https_enabled": "true" if https.get("enabled") else "false",
        "certbot_enabled": "true" if https.get("certbot") else "false",
        "certbot_email": https.get("email", "") if https.get("certbot") else "",
        "certbot_domain": domain if https.get("certbot") else "",
        "port_vars": port_vars(stack),
        "api_url": api_url(stack),
        "unused_credentials": list(cfg["unused_credentials"]),
        "environment": [(str(k), str(v)) for k, v in cfg.get("environment", {}).items()],
    }


def secrets_rules(stack: Stack) -> dict:
    """What kca-compose-secrets checks in the merged configuration (see group_data: dify.must_agree)."""
    return {"must_agree": stack.dify["must_agree"], "default_credentials": stack.dify["default_credentials"]}


def override_context(stack: Stack) -> dict:
    return {
        "source": SOURCE,
        "tag": stack.dify["tag"],
        "services": override_services(stack),
        "network": stack.network.docker_network,
    }


def archive_name(stack: Stack) -> str:
    return stack.dify["archive_file"].format(tag=stack.dify["tag"])


def fetch_release(stack: Stack, folder: str):
    """The release's docker/ folder, once per (tag, sha256): the archive is fetched (or uploaded) and
    checked by its sha256, then unpacked when the folder holds another release. Returns the unpack."""
    cfg = stack.dify
    url = cfg["archive_url"].format(tag=cfg["tag"])
    if not cfg.get("sha256"):
        raise SystemExit(
            f"{host.name}: dify.sha256 is unset, so the Dify {cfg['tag']} archive cannot be checked; nothing "
            f"was fetched. Fix: run `curl -fsSL {url} | sha256sum` once and set dify.sha256 in group_data/all.py."
        )
    archives = str(Path(folder).parent / "archives")
    archive = f"{archives}/{archive_name(stack)}"
    ops.directories(name=f"Create {archives}", dirs=[ops.HostDirectory(archives, mode="0755")])
    if cfg["source"] == "upload":
        local = CACHE_DIR / "downloads" / archive_name(stack)
        if not local.exists() or sha256_of(local) != cfg["sha256"]:
            raise SystemExit(
                f"dify.source is upload: {local} is missing or its sha256 is not {cfg['sha256']}. Fix: put the "
                f"release archive ({url}) there."
            )
        ops.install_files(
            name=f"Upload the Dify {cfg['tag']} archive", files=[ops.HostFile(archive, src=local, mode="0644")]
        )
    else:
        files.download(
            name=f"Fetch the Dify {cfg['tag']} archive (checked by sha256)",
            src=url,
            dest=archive,
            sha256sum=cfg["sha256"],
            mode="0644",
        )
    return ops.stamped(
        name=f"Unpack Dify {cfg['tag']}'s docker/ folder into {folder}",
        stamp=f"{folder}/.kca-release",
        wanted=f"{cfg['tag']} {cfg['sha256']}",
        commands=[
            f"echo '{cfg['sha256']}  {archive}' | sha256sum -c --quiet",
            # GitHub's tarball holds dify-<tag>/docker/...; .env, the override and volumes/*/data are ours.
            f"tar -xzf {archive} -C {folder} --strip-components=2 --wildcards '*/docker/*'",
        ],
    )


def standin_state(stack: Stack):
    """The state entry of the database the stand-in replaces (its volume, superuser, PGDATA, secret)."""
    name = stack.dify["database_standin"]["service"]
    return next(item for item in stack.backup.state if item.owner == name)


def standin_image(stack: Stack) -> tuple[str, str]:
    """(image, tag) of the database the stand-in replaces: the one its state's restore runs too."""
    image, _, tag = standin_state(stack).postgresql.image.partition(":")
    return image, tag or "latest"


def standin_context(stack: Stack) -> dict:
    """The stand-in's compose file: every value from the data of the service it stands in for."""
    standin = stack.dify["database_standin"]
    service = stack.services[standin["service"]]
    state = standin_state(stack)
    postgresql = state.postgresql
    port = service.ports[0]
    return {
        "source": SOURCE,
        "project": service.compose_project,
        "service": compose_name(service),
        "image": image_ref(stack, *standin_image(stack)),
        "env_file": standin["env_file"],
        "superuser": postgresql.user,
        "database": stack.dify["environment"]["DB_DATABASE"],
        "pgdata": postgresql.pgdata,
        "volume": state.paths[0],
        "mount": postgresql.mount,
        "bind": service.bind,
        "port": port.number,
        "container_port": port.target,
    }


@deploy("Dify's database stand-in (image)")
def build_database_standin(stack: Stack):
    """The stand-in's image, before the deploy loads a restored dump with it. Returns the operation whose
    change means a new image (None: no stand-in, or the image is present)."""
    standin = stack.dify.get("database_standin")
    if not standin or stack.docker["pull_images"]:
        return None
    service = stack.services[standin["service"]]
    return build_local_image(
        stack=stack,
        image=service.name,
        ref=image_ref(stack, *standin_image(stack)),
        title=f"{service.title} standing in for Dify's {compose_name(service)}",
        build=standin["local_build"],
        port=service.ports[0].target,
    )


def start_database_standin(stack: Stack, image_changes: list) -> None:
    standin = stack.dify["database_standin"]
    folder = stack.paths["dify"]
    context = standin_context(stack)
    env_ops = render_with_secrets(
        "Dify database stand-in environment",
        STANDIN_ENV_TEMPLATE,
        standin["env_file"],
        {
            "source": SOURCE,
            "env_file": standin["env_file"],
            "password": secret_placeholder(standin_state(stack).postgresql.password_secret),
        },
    )
    compose = ops.install_files(
        name=f"Install {folder}/{standin['compose_file']}",
        files=[ops.template(STANDIN_COMPOSE_TEMPLATE, f"{folder}/{standin['compose_file']}", **context)],
    )
    compose_up(
        name="Converge Dify's database stand-in (docker compose up -d)",
        project=context["project"],
        folder=folder,
        compose_args=["-f", standin["compose_file"]],
        triggers=[compose, *env_ops, *image_changes],
        wait=120,
    )


@deploy("Dify")
def deploy_dify(stack: Stack, standin_changes: list | None = None) -> None:
    cfg = stack.dify
    folder = stack.paths["dify"]
    standin = cfg.get("database_standin") and not stack.docker["pull_images"]
    if cfg["source"] == "unavailable":
        logger.warning(
            f"{host.name}: Dify's release archive cannot be reached here (dify.source = unavailable): "
            "Dify is not installed. Its .env and override are tested offline (tests/unit/test_compose_rendering.py)."
            + (" A real PostgreSQL server stands in for its database (dify.database_standin)." if standin else "")
        )
        if standin:
            ops.directories(name=f"Create {folder}", dirs=[ops.HostDirectory(folder, mode="0755")])
            start_database_standin(stack, standin_changes or [])
        return

    release = fetch_release(stack, folder)
    env_ops = render_with_secrets("Dify environment", ENV_TEMPLATE, f"{folder}/.env", env_context(stack))
    override = ops.install_files(
        name=f"Install {folder}/docker-compose.override.yaml",
        files=[ops.template(OVERRIDE_TEMPLATE, f"{folder}/docker-compose.override.yaml", **override_context(stack))],
    )
    # kca-compose-secrets checks the secrets of a merged compose configuration, by these rules.
    rules = ops.install_files(
        name="Install kca-compose-secrets and the rules of Dify's configuration check",
        files=[
            ops.HostFile(SECRETS_CHECK, src=f"files{SECRETS_CHECK}", mode="0755"),
            ops.json_file(secrets_rules(stack), SECRETS_RULES),
        ],
    )

    if not stack.docker["pull_images"]:
        logger.warning(f"{host.name}: images cannot be pulled here (docker.pull_images is false): Dify is not started.")
        return

    config = f"{COMPOSE} -p {PROJECT} config --format json"
    expected = published_lines(expected_published(stack))
    # Checked on the host, after the merge, before anything starts: upstream cannot open a port, and
    # no pair of settings that must share a secret disagrees.
    ports_check = (
        f"expected={shlex.quote(expected)}; actual=$({config} | {COMPOSE_PORTS}) || exit 1; "
        'if [ "$actual" != "$expected" ]; then echo "Dify would publish:" >&2; echo "$actual" >&2; '
        'echo "the stack says:" >&2; echo "$expected" >&2; exit 1; fi'
    )
    secrets_check = f"{config} | {SECRETS_CHECK} {SECRETS_RULES}"
    changed = [release, override, rules, *env_ops]
    compose_up(
        name="Converge Dify (docker compose up -d)",
        project=PROJECT,
        folder=folder,
        triggers=changed,
        checks=[ports_check, secrets_check],
    )
