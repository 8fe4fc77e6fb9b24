"""Assertions checked before any change: each returns Problems that name the field and the fix.

Every check is a small function over the Stack; `validate` runs them all so that one run reports every
problem at once.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .kinds import KINDS
from .model import REPOSITORY_SCHEMES, Problem

REPOSITORY = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from .model import Stack


def check_kinds(stack: Stack) -> list[Problem]:
    """What a kind asks of the service beyond its settings: a unit name or a compose project."""
    problems = []
    for s in stack.services.values():
        where = f"services.{s.name}"
        if s.is_systemd and not (s.unit or "").endswith(".service"):
            problems.append(
                Problem(
                    f"{where}.unit",
                    f"a {s.kind} service needs a systemd unit name, got {s.unit!r}",
                    "name the unit, e.g. 'my-service.service'",
                )
            )
        if not s.is_systemd and not s.compose_project:
            problems.append(
                Problem(
                    f"{where}.compose_project",
                    "a docker service needs its compose project",
                    "set compose_project (e.g. 'dify' or 'openwebui')",
                )
            )
    return problems


def check_ports(stack: Stack) -> list[Problem]:
    """No host port claimed twice (SSH included); each port's range is declared with it (model.Port)."""
    problems = []
    owners: dict[int, list[str]] = defaultdict(list)
    ssh_port = stack.network.ssh_port
    owners[ssh_port].append("network.ssh_port")
    for s in stack.services.values():
        for port in s.ports:
            owners[port.number].append(f"services.{s.name}")
        if s.backend is not None:
            # The service's own process listens there, behind the proxy that holds its port.
            owners[s.backend.port].append(f"services.{s.name}.backend")
    for number, claimants in sorted(owners.items()):
        if len(claimants) > 1:
            problems.append(
                Problem(
                    f"{claimants[1]}.ports",
                    f"host port {number} is already taken by {claimants[0]}",
                    f"give one of {' and '.join(claimants)} another port",
                )
            )
    return problems


def check_binds(stack: Stack) -> list[Problem]:
    """An internal service never listens on a public address, and only on the wildcard address when
    the firewall keeps the outside away; an external one listens where the outside can reach it."""
    problems = []
    firewall_on = bool(stack.firewall.enabled)
    for s in stack.services.values():
        where = f"services.{s.name}.bind"
        try:
            address = ipaddress.ip_address(s.bind)
        except ValueError:
            problems.append(Problem(where, f"{s.bind!r} is not an IP address", "use e.g. 127.0.0.1 or 0.0.0.0"))
            continue
        if s.exposure == "internal":
            if address.is_global:
                problems.append(
                    Problem(
                        where,
                        f"internal service bound to the public address {s.bind}",
                        "bind it to 127.0.0.1, a private address, or 0.0.0.0 with the firewall enabled",
                    )
                )
            elif address.is_unspecified and not firewall_on:
                problems.append(
                    Problem(
                        where,
                        f"internal service bound to {s.bind} while firewall.enabled is false",
                        "bind it to 127.0.0.1 or enable the firewall",
                    )
                )
        elif address.is_loopback and s.ports:
            problems.append(
                Problem(
                    where,
                    f"external service bound to loopback {s.bind}, unreachable from outside",
                    "bind it to 0.0.0.0 or mark it internal",
                )
            )
    return problems


def check_references(stack: Stack) -> list[Problem]:
    problems = []
    for s in stack.services.values():
        for model in s.models:
            if model not in stack.models:
                problems.append(
                    Problem(
                        f"services.{s.name}.models",
                        f"refers to the unknown model {model!r}",
                        f"add models.{model} or use one of {', '.join(sorted(stack.models))}",
                    )
                )
    for scenario in stack.scenarios.values():
        for name in scenario.services:
            if name not in stack.services:
                problems.append(
                    Problem(
                        f"vram_scenarios.{scenario.name}.services",
                        f"refers to the unknown service {name!r}",
                        "use a name from services",
                    )
                )
            elif not stack.services[name].uses_gpu:
                problems.append(
                    Problem(
                        f"vram_scenarios.{scenario.name}.services",
                        f"{name!r} does not use the GPU",
                        f"remove {name} from the scenario or give services.{name}.gpu a class",
                    )
                )
    if stack.gpu.boot_scenario not in stack.scenarios:
        problems.append(
            Problem(
                "gpu.boot_scenario",
                f"refers to the unknown scenario {stack.gpu.boot_scenario!r}",
                f"use one of {', '.join(sorted(stack.scenarios))}",
            )
        )
    for s in stack.services.values():
        secret = s.api_key_secret
        if secret is not None and secret not in stack.secrets:
            problems.append(
                Problem(
                    f"services.{s.name}.api_key_secret",
                    f"refers to the undeclared secret {secret!r}",
                    f"declare secrets.{secret} (it is generated on the host) or remove the reference",
                )
            )
    if stack.llama_cpp and stack.llama_cpp.source == "archive" and stack.llama_cpp.archive not in stack.artifacts:
        problems.append(
            Problem(
                "llama_cpp.archive",
                f"refers to the unknown artifact {stack.llama_cpp.archive!r}",
                "name an entry of artifacts",
            )
        )
    for model, standin in stack.model_standins.items():
        if model not in stack.models:
            problems.append(
                Problem(f"model_standins.{model}", "stands in for an unknown model", "use a name from models")
            )
        artifact = standin.artifact
        if artifact is not None and artifact not in stack.artifacts:
            problems.append(
                Problem(
                    f"model_standins.{model}.artifact",
                    f"refers to the unknown artifact {artifact!r}",
                    "name an entry of artifacts",
                )
            )
    for venv in stack.venvs.values():
        if not venv.path:
            problems.append(Problem(f"venvs.{venv.name}.path", "is empty", "give the venv a path"))
        if venv.lock and not (REPOSITORY / venv.lock).is_file():
            problems.append(
                Problem(
                    f"venvs.{venv.name}.lock",
                    f"{venv.lock} is not a file of this repository",
                    "compile it (the command is at the top of the other lock files) or fix the path",
                )
            )
    return problems


def check_vram(stack: Stack) -> list[Problem]:
    """The document's section 8: at most one large model per scenario, every scenario fits, and every
    large model has a scenario (the switch command needs to know what runs beside it)."""
    problems = []
    if stack.gpu.vram_usable_gb > stack.gpu.vram_total_gb:
        problems.append(Problem("gpu.vram_usable_gb", "is larger than gpu.vram_total_gb", "lower vram_usable_gb"))
    for scenario in stack.scenarios.values():
        where = f"vram_scenarios.{scenario.name}"
        known = [stack.services[n] for n in scenario.services if n in stack.services]
        large = [s.name for s in known if s.gpu == "large"]
        if len(large) > 1:
            problems.append(
                Problem(
                    f"{where}.services",
                    f"holds {len(large)} large models ({', '.join(large)}); "
                    "only one large model fits the GPU at a time",
                    "keep one large model per scenario",
                )
            )
        if len(known) == len(scenario.services):
            total = stack.scenario_vram_gb(scenario)
            if total > stack.gpu.vram_usable_gb:
                parts = " + ".join(f"{s.name} {stack.service_vram_gb(s):g}" for s in known)
                problems.append(
                    Problem(
                        f"{where}.services",
                        f"needs {total:g} GB ({parts}) but only {stack.gpu.vram_usable_gb:g} GB are usable",
                        "remove a service from the scenario or lower a vram_gb estimate you have measured",
                    )
                )
    in_a_scenario = {n for scenario in stack.scenarios.values() for n in scenario.services}
    for s in stack.large_services():
        if s.name not in in_a_scenario:
            problems.append(
                Problem(
                    f"services.{s.name}.gpu",
                    "is a large model that no VRAM scenario holds",
                    f"add a vram_scenarios entry with {s.name} and what runs beside it",
                )
            )
    return problems


def check_paths(stack: Stack) -> list[Problem]:
    """Every path of the data lies under one of the document's roots."""
    roots = [PurePosixPath(p) for p in stack.paths.get("roots", [])]

    def inside(path: str) -> bool:
        p = PurePosixPath(path)
        return p.is_absolute() and ".." not in p.parts and any(p == r or r in p.parents for r in roots)

    candidates = [(f"paths.{k}", v) for k, v in stack.paths.items() if k != "roots" and isinstance(v, str)]
    candidates += [(f"directories[{i}].path", d.path) for i, d in enumerate(stack.directories)]
    candidates += [(f"models.{m.name}.dir", m.dir) for m in stack.models.values()]
    for venv in stack.venvs.values():
        candidates.append((f"venvs.{venv.name}.path", venv.path))
        if venv.link:
            candidates.append((f"venvs.{venv.name}.link", venv.link))
    candidates.append(("models_filesystem.mountpoint", stack.models_filesystem.mountpoint))
    roots_text = ", ".join(str(r) for r in roots)
    return [
        Problem(
            field,
            f"{path!r} lies outside the document's roots ({roots_text})",
            "move it under one of the roots or add the root to paths.roots",
        )
        for field, path in candidates
        if not inside(path)
    ]


def check_docker(stack: Stack) -> list[Problem]:
    """Docker services name their compose service; the sources and secrets the Docker layer reads exist."""
    problems = []
    engine = stack.docker.get("engine", "docker-ce")
    if engine not in ("docker-ce", "debian"):
        problems.append(Problem("docker.engine", f"unknown engine {engine!r}", "use docker-ce or debian"))
    source = stack.dify.get("source", "github")
    if source not in ("github", "upload", "unavailable"):
        problems.append(Problem("dify.source", f"unknown source {source!r}", "use github, upload or unavailable"))
    names = {*stack.dify.get("secrets", {}).values(), stack.openwebui.get("secret_key_secret")}
    for name in sorted(n for n in names if n):
        if name not in stack.secrets:
            problems.append(
                Problem("secrets", f"{name!r} is used by the Docker layer but not declared", f"add secrets.{name}")
            )
    for key in ("service", "embedding_service", "reranker_service", "docling_service"):
        name = stack.openwebui.get(key)
        if name is not None and name not in stack.services:
            problems.append(
                Problem(f"openwebui.{key}", f"refers to the unknown service {name!r}", "use a name from services")
            )
    return problems


def check_support_load(stack: Stack) -> list[Problem]:
    """A text fits one forward pass of a FastAPI model server (or the pass bound says nothing about
    VRAM), and the queue's own 503 comes before uvicorn's. Each value's range is declared with it
    (kinds.Batching, kinds.Limits, kinds.Uvicorn)."""
    problems = []
    for s in stack.services_of_kind("fastapi"):
        where = f"services.{s.name}"
        batching, limits, server = s.settings.batching, s.settings.limits, s.settings.uvicorn
        if limits.max_text_tokens > batching.batch_tokens:
            problems.append(
                Problem(
                    f"{where}.limits.max_text_tokens",
                    f"{limits.max_text_tokens} is more than batching.batch_tokens {batching.batch_tokens}",
                    "raise batch_tokens or lower max_text_tokens: one text must fit one forward pass",
                )
            )
        if server.limit_concurrency <= batching.max_queued_requests:
            problems.append(
                Problem(
                    f"{where}.uvicorn.limit_concurrency",
                    f"{server.limit_concurrency} is not above batching.max_queued_requests "
                    f"{batching.max_queued_requests}",
                    "raise limit_concurrency: the queue's 503 with Retry-After must come before uvicorn's bare one",
                )
            )
    return problems


def check_identities(stack: Stack) -> list[Problem]:
    """One identity per service unit (and the proxy): every unit has one, no two share a name or an id,
    and none takes kca's id or an id that containers' files carry on the host."""
    problems = []
    for s in stack.systemd_services():
        if s.name not in stack.service_users:
            problems.append(
                Problem(
                    "service_users",
                    f"the unit of services.{s.name} has no identity of its own",
                    f"add service_users.{s.name} with a name and a fixed uid",
                )
            )
    if stack.proxied_services():
        proxy_user = stack.auth_proxy.user if stack.auth_proxy else None
        if proxy_user not in stack.service_users:
            problems.append(
                Problem("auth_proxy.user", f"{proxy_user!r} is not a key of service_users", "name one of them")
            )
    for s in stack.proxied_services():
        if not _is_loopback(s.backend.bind):
            problems.append(
                Problem(
                    f"services.{s.name}.backend.bind",
                    f"{s.backend.bind} is not loopback: the backend would answer without the proxy's check",
                    "bind the backend to 127.0.0.1",
                )
            )
        if not s.api_key_secret:
            problems.append(
                Problem(
                    f"services.{s.name}.api_key_secret",
                    "a service behind the authenticating proxy needs the key the proxy checks",
                    "name a secret",
                )
            )
    claims: dict[object, list[str]] = defaultdict(list)
    claims[("name", stack.user.name)].append("user")
    if stack.user.uid is not None:
        claims[("uid", stack.user.uid)].append("user")
    for key, identity in stack.service_users.items():
        claims[("name", identity.name)].append(f"service_users.{key}")
        claims[("uid", identity.uid)].append(f"service_users.{key}")
    for (kind, value), holders in sorted(claims.items(), key=str):
        if len(holders) > 1:
            problems.append(
                Problem(
                    f"{holders[1]}.{kind}",
                    f"{kind} {value} is also {holders[0]}'s",
                    f"give {holders[1]} another {kind}",
                )
            )
        if kind == "uid" and value in stack.container_uids:
            problems.append(
                Problem(
                    f"{holders[0]}.uid",
                    f"uid {value} is the one {stack.container_uids[value]} files carry on the host",
                    "pick an id that no container uses",
                )
            )
    return problems


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# Which captures give a consistent copy of which kind of state.
CAPTURES_OF_KIND = {
    "sqlite": ("sqlite-backup",),
    "postgresql": ("pg-dumpall",),
    "files": ("copy", "stop-copy-start"),
    "secrets": ("copy",),
}
RETENTION_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def repository_problem(repository: str) -> str | None:
    """Why `repository` is not in restic's syntax (a local path or scheme:...), or None."""
    if repository.startswith("/"):
        return None
    scheme, colon, rest = repository.partition(":")
    if colon and scheme in REPOSITORY_SCHEMES and rest:
        return None
    return f"{repository!r} is neither an absolute path nor {', '.join(s + ':...' for s in REPOSITORY_SCHEMES)}"


def check_state(stack: Stack) -> list[Problem]:
    """Each state entry: a known kind with a capture that is consistent for it, paths under the roots,
    the settings its kind needs, and a pin that names a value of the data."""
    backup = stack.backup
    if backup is None:
        return []
    problems = []
    roots = [PurePosixPath(p) for p in stack.paths.get("roots", [])]

    def inside(path: str) -> bool:
        p = PurePosixPath(path)
        return p.is_absolute() and ".." not in p.parts and any(p == r or r in p.parents for r in roots)

    seen: dict[str, str] = {}
    for item in backup.state:
        where = f"services.{item.owner}.state" if item.owner else f"backup.host_state.{item.name}"
        if item.name in seen:
            problems.append(
                Problem(where, f"the state name {item.name!r} is also {seen[item.name]}", "rename the host state")
            )
        seen[item.name] = where
        if item.capture not in CAPTURES_OF_KIND[item.kind]:
            problems.append(
                Problem(
                    f"{where}.capture",
                    f"{item.capture!r} does not give a consistent copy of {item.kind} state",
                    f"use {' or '.join(CAPTURES_OF_KIND[item.kind])}",
                )
            )
        if not item.paths:
            problems.append(Problem(f"{where}.paths", "is empty", "name where the state lives"))
        for path in (*item.paths, *([item.restore_to] if item.restore_to else [])):
            if not inside(path):
                problems.append(
                    Problem(f"{where}.paths", f"{path!r} lies outside the document's roots", "move it under a root")
                )
        if item.kind == "sqlite" and not item.databases:
            problems.append(
                Problem(f"{where}.databases", "sqlite state names no database", "list the database files, relative")
            )
        if item.capture == "stop-copy-start" and not item.owner:
            problems.append(
                Problem(f"{where}.capture", "only a service's container can be stopped", "use copy for host state")
            )
        if item.kind == "postgresql" and item.postgresql is None:
            problems.append(
                Problem(
                    f"{where}.postgresql",
                    "is missing",
                    "give the image, superuser, password secret, mount point and PGDATA of the database container",
                )
            )
        if item.postgresql is not None:
            secret = item.postgresql.password_secret
            if secret not in stack.secrets:
                problems.append(
                    Problem(
                        f"{where}.postgresql.password_secret", f"{secret!r} is not declared", f"add secrets.{secret}"
                    )
                )
        if item.pin is not None and stack.pin_value(item.pin) is None:
            problems.append(
                Problem(f"{where}.pin", f"{item.pin!r} names no value of the data", "use section.key, e.g. dify.tag")
            )
    if not any(item.kind == "secrets" and stack.paths.get("secrets") in item.paths for item in backup.state):
        problems.append(
            Problem(
                "backup.host_state",
                f"no secrets state holds {stack.paths.get('secrets')}",
                "declare it: a rebuilt host with new secrets cannot read the old state",
            )
        )
    return problems


def check_backup(stack: Stack) -> list[Problem]:
    """The repository, retention and restore request; the operator's settings (repository, password)
    only where an inventory supplied them (a deploy), not where data is read alone (docs, unit tests)."""
    backup = stack.backup
    if backup is None:
        return []
    problems = []
    if backup.repository and (why := repository_problem(backup.repository)):
        problems.append(
            Problem("backup.repository", why, "write e.g. /mnt/backup/kca, sftp:user@host:/srv/restic/kca or s3:...")
        )
    for key, value in backup.retention.items():
        if key not in RETENTION_KEYS:
            problems.append(
                Problem(
                    f"backup.retention.{key}", "is not a restic retention option", f"use {', '.join(RETENTION_KEYS)}"
                )
            )
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(Problem(f"backup.retention.{key}", f"must be a positive integer, got {value!r}", "fix it"))
    if not backup.retention:
        problems.append(Problem("backup.retention", "is empty: nothing would ever be forgotten", "e.g. keep_daily: 7"))
    restore = backup.restore
    if restore is not None and restore != "latest" and not all(c in "0123456789abcdef" for c in restore):
        problems.append(
            Problem("backup.restore", f"{restore!r} is not a snapshot ID", "use latest or an ID from restic snapshots")
        )
    for name in backup.credentials_env:
        if not name.isidentifier() or name.upper() != name:
            problems.append(
                Problem("backup.credentials_env", f"{name!r} is not a variable name", "e.g. AWS_ACCESS_KEY_ID")
            )
    if backup.enabled and backup.password_given is not None:
        if not backup.repository:
            problems.append(
                Problem(
                    "backup.repository",
                    "backups are enabled and no repository is set",
                    "set KCA_BACKUP_REPOSITORY in production.env beside inventory.py (or export it), "
                    "e.g. sftp:backup@nas:/srv/restic/kca; or set backup.enabled = False",
                )
            )
        if not backup.password_given:
            problems.append(
                Problem(
                    "backup.password",
                    f"backups are enabled and no repository password was given ({backup.password_env} is unset)",
                    f"put {backup.password_env}=<a long random password> in production.env beside inventory.py "
                    "(or export it) and keep a copy off the server: without it no snapshot can be read",
                )
            )
    return problems


def check_ssh_port(stack: Stack) -> list[Problem]:
    """The firewall opens network.ssh_port; the deploy connects on the inventory's port. If they differ,
    the first deploy locks itself (and the operator) out."""
    wanted = stack.network.ssh_port
    if wanted == stack.connection_port:
        return []
    return [
        Problem(
            "network.ssh_port",
            f"is {wanted}, but the deploy connects on port {stack.connection_port} (the inventory's ssh_port): "
            f"the firewall would close the port the deploy uses",
            f"set network.ssh_port to {stack.connection_port}, or connect on {wanted} "
            f"(KCA_PRODUCTION_PORT={wanted} in production.env)",
        )
    ]


def check_models_device(stack: Stack) -> list[Problem]:
    """/models on a device, or a plain directory said explicitly: never a directory by default, which in a
    rebuild would fill the root disk with downloads while the surviving models partition sits unmounted."""
    fs = stack.models_filesystem
    if fs.device is None and not fs.plain_directory:
        return [
            Problem(
                "models_filesystem.device",
                f"no device is configured for {fs.mountpoint}, and models_filesystem.plain_directory is not set: "
                "the models would fill the root disk while a models partition sits unmounted",
                "set KCA_MODELS_DEVICE to the models partition (lsblk lists them) in production.env, or set "
                "models_filesystem.plain_directory = True if /models really is a directory on the root disk",
            )
        ]
    return []


def check_models_filesystem(stack: Stack) -> list[Problem]:
    """A models device is mounted so that a dead disk never stops the boot."""
    fs = stack.models_filesystem
    if fs.device is None:
        return []
    problems = []
    if fs.plain_directory:
        problems.append(
            Problem(
                "models_filesystem.plain_directory",
                f"is set, but models_filesystem.device is {fs.device}",
                "drop plain_directory, or the device",
            )
        )
    options = fs.options.split(",")
    for needed, why in (
        ("nofail", "a dead models disk would send the boot to emergency mode, with no SSH"),
        ("x-systemd.device-timeout=", "without it, boot waits 90 s for a missing disk"),
    ):
        if not any(option == needed or (needed.endswith("=") and option.startswith(needed)) for option in options):
            problems.append(
                Problem(
                    "models_filesystem.options",
                    f"{fs.options!r} lacks {needed.rstrip('=')}: {why}",
                    f"add {needed}{'30s' if needed.endswith('=') else ''} to models_filesystem.options",
                )
            )
    return problems


def check_venv_owners(stack: Stack) -> list[Problem]:
    """Root runs pip and Python from the venvs: the directories that hold them are root's, or the user
    who owns them could put code there that root runs at the next deploy."""
    problems = []
    for index, directory in enumerate(stack.directories):
        path = PurePosixPath(directory.path)
        holds = [v for v in stack.venvs.values() if path in (PurePosixPath(v.path), *PurePosixPath(v.path).parents)]
        if holds and directory.manage and directory.owner not in (None, "root"):
            names = ", ".join(f"venvs.{v.name}" for v in holds)
            problems.append(
                Problem(
                    f"directories[{index}].owner",
                    f"{directory.path} holds {names}, which root runs, but belongs to {directory.owner}",
                    f"make {directory.path} root-owned (owner 'root'); services only need to read it",
                )
            )
    return problems


def check_nvidia(stack: Stack) -> list[Problem]:
    """The driver branch is new enough for the card (its form, the checksums and the key's fingerprint
    are declared with them: model.Nvidia)."""
    nvidia = stack.nvidia
    if nvidia is None or int(nvidia.driver_branch) >= nvidia.driver_min_major:
        return []
    return [
        Problem(
            "nvidia.driver_branch",
            f"{nvidia.driver_branch} is older than nvidia.driver_min_major {nvidia.driver_min_major}",
            f"pin a branch >= {nvidia.driver_min_major}",
        )
    ]


def _is_hex(value: object, length: int) -> bool:
    text = str(value)
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)


def _is_commit(ref: object) -> bool:
    return _is_hex(ref, 40)


def moving_refs(stack: Stack) -> list[str]:
    """What this host's deploy fetches by a reference that can move under it (a branch, a tag without
    digest, a file without checksum): not refused, said once per deploy so that it gets pinned."""
    found = []
    if not stack.use_model_standins:
        for model in stack.models.values():
            for index, f in enumerate(model.files):
                at = f"models.{model.name}.files[{index}]"
                if not _is_commit(f.revision):
                    found.append(f"{at}.revision = {f.revision!r} (a branch: pin the commit)")
                if f.role != "snapshot" and f.sha256 is None:
                    found.append(f"{at}.sha256 = None (verified by the hub's own checksum only)")
    plugin = stack.vllm.plugin if stack.vllm else None
    if plugin and plugin.source == "git" and not _is_commit(plugin.git_ref):
        found.append(f"vllm.plugin.git_ref = {plugin.git_ref!r} (a branch: pin the commit)")
    if stack.llama_cpp and stack.llama_cpp.source == "git" and not _is_commit(stack.llama_cpp.git_ref):
        found.append(f"llama_cpp.git_ref = {stack.llama_cpp.git_ref!r} (not a commit)")
    if stack.docker.get("pull_images", True):
        if stack.openwebui.get("image") and not stack.openwebui.get("digest"):
            found.append(f"openwebui: {stack.openwebui['image']}:{stack.openwebui.get('tag')} (a tag, no digest)")
        if stack.dify.get("source") != "unavailable":
            found.append(f"dify {stack.dify.get('tag')}: upstream's compose file names its images by tag")
    if stack.dify.get("source") == "github" and stack.dify.get("sha256") is None:
        found.append("dify.sha256 = None (the archive is not fetched until it is set)")
    return found


# Keys of systemd_relaxations beside the kinds: the GPU, and the authenticating proxy's unit.
RELAXATION_KEYS = ("gpu", "auth-proxy")


def check_accounts(stack: Stack) -> list[Problem]:
    """Every directory belongs to an account the deploy knows: root, the operator, or a service user
    (the base layer creates them before the tree; an unknown name fails halfway through a deploy)."""
    known = {"root", stack.user.name, *(u.name for u in stack.service_users.values())}
    return [
        Problem(
            f"directories[{index}].owner",
            f"{directory.owner!r} is not an account of this stack",
            f"use one of {', '.join(sorted(known))}",
        )
        for index, directory in enumerate(stack.directories)
        if directory.owner is not None and directory.owner not in known
    ]


def _unique(claims: list[tuple[object, str]], what: str, fix: str) -> list[Problem]:
    """One Problem for each later claim of an identity (value, field) that an earlier one holds."""
    first: dict[object, str] = {}
    problems = []
    for value, field in claims:
        if value in first:
            problems.append(Problem(field, f"{what} {value} is also {first[value]}'s", fix))
        else:
            first[value] = field
    return problems


def check_unique(stack: Stack) -> list[Problem]:
    """Each identity once: unit names, compose services of a project, model files, model and venv
    folders, directories of the tree, and secret files."""
    problems = []
    units = [(s.unit, f"services.{s.name}.unit") for s in stack.services.values() if s.unit]
    if stack.auth_proxy:
        units.append((stack.auth_proxy.unit, "auth_proxy.unit"))
    problems += _unique(units, "the unit", "give each service a unit of its own")
    compose = [
        (f"{s.compose_project}/{s.settings.compose_service}", f"services.{s.name}.compose_service")
        for s in stack.services.values()
        if s.compose_project and hasattr(s.settings, "compose_service")
    ]
    problems += _unique(compose, "the compose service", "name each service of a compose project once")
    files = [
        (model.path_of(f.role) if f.file is None else f"{model.dir}/{f.file}", f"models.{model.name}.files[{i}]")
        for model in stack.models.values()
        for i, f in enumerate(model.files)
    ]
    problems += _unique(files, "the file", "give each model file its own path")
    folders = [(PurePosixPath(m.dir), f"models.{m.name}.dir") for m in stack.models.values()]
    folders += [(PurePosixPath(v.path), f"venvs.{v.name}.path") for v in stack.venvs.values()]
    problems += _unique(folders, "the folder", "give each model and venv a folder of its own")
    tree = [(PurePosixPath(d.path), f"directories[{i}].path") for i, d in enumerate(stack.directories)]
    problems += _unique(tree, "the directory", "list each directory once (its owner and mode in one entry)")
    # Secrets are keys of one mapping; their files live in one folder, so names that differ only in
    # case collide on a case-insensitive copy (a backup on another filesystem).
    secrets = [(name.lower(), f"secrets.{name}") for name in stack.secrets]
    problems += _unique(secrets, "the secret file", "rename one of the secrets")
    return problems


def check_kind_references(stack: Stack) -> list[Problem]:
    """What the settings of a kind name exists: its venv, its requirements and app in this repository,
    the model it serves; vLLM's venv; the stand-ins' sources; the relaxations' keys."""
    problems = []
    for s in stack.services.values():
        where = f"services.{s.name}"
        venv = getattr(s.settings, "venv", None)
        if venv is not None and venv not in stack.venvs:
            problems.append(
                Problem(f"{where}.venv", f"refers to the unknown venv {venv!r}", f"use one of {', '.join(stack.venvs)}")
            )
        for label, path in (
            ("requirements", getattr(s.settings, "requirements", None)),
            ("app.src", getattr(getattr(s.settings, "app", None), "src", None)),
        ):
            if path is not None and not (REPOSITORY / path).is_file():
                problems.append(Problem(f"{where}.{label}", f"{path} is not a file of this repository", "fix the path"))
        if KINDS[s.kind].serves_model and not s.models:
            problems.append(
                Problem(f"{where}.models", f"a {s.kind} service serves a model and names none", "name its model")
            )
    if stack.vllm and stack.vllm.venv not in stack.venvs:
        problems.append(
            Problem("vllm.venv", f"refers to the unknown venv {stack.vllm.venv!r}", "name an entry of venvs")
        )
    for model, standin in stack.model_standins.items():
        if (standin.artifact is None) == (standin.build is None):
            problems.append(
                Problem(f"model_standins.{model}", "needs either an artifact or a build", "name exactly one of them")
            )
        if standin.build is not None and standin.base not in stack.models:
            problems.append(
                Problem(
                    f"model_standins.{model}.base",
                    f"refers to the unknown model {standin.base!r}",
                    "name the model the build starts from",
                )
            )
    for key, relaxed in stack.systemd_relaxations.items():
        if key not in KINDS and key not in RELAXATION_KEYS:
            problems.append(
                Problem(
                    f"systemd_relaxations.{key}",
                    "is neither a kind nor one of " + ", ".join(RELAXATION_KEYS),
                    f"use one of {', '.join([*KINDS, *RELAXATION_KEYS])}",
                )
            )
        for name, pair in relaxed.items():
            if name not in stack.systemd_hardening:
                problems.append(
                    Problem(
                        f"systemd_relaxations.{key}.{name}",
                        "relaxes a setting the baseline does not have",
                        "add it to systemd_hardening or remove the relaxation",
                    )
                )
            if len(pair) != 2 or not pair[1].strip():
                problems.append(
                    Problem(
                        f"systemd_relaxations.{key}.{name}",
                        f"is {list(pair)!r}, not [value, why]",
                        "give the relaxed value and why the unit needs it",
                    )
                )
    return problems


CHECKS = (
    check_kinds,
    check_accounts,
    check_unique,
    check_kind_references,
    check_ports,
    check_binds,
    check_references,
    check_vram,
    check_paths,
    check_docker,
    check_models_filesystem,
    check_venv_owners,
    check_nvidia,
    check_state,
    check_backup,
    check_identities,
    check_support_load,
)

# What a deploy needs of its target beyond consistent data: the connection's port and where /models
# lives. Checked by load_stack (the deploy); docs and tests that only describe the stack skip them.
TARGET_CHECKS = (check_ssh_port, check_models_device)


def validate(stack: Stack, target: bool = False) -> list[Problem]:
    problems: list[Problem] = []
    for check in CHECKS + (TARGET_CHECKS if target else ()):
        problems.extend(check(stack))
    return problems
