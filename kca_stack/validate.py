"""Assertions checked before any change: each returns Problems that name the field and the fix.

Every check is a small function over the Stack; `validate` runs them all so that one run reports every
problem at once.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from .model import EXPOSURES, GPU_CLASSES, KINDS, SYSTEMD_KINDS, Problem

if TYPE_CHECKING:
    from .model import Stack


def check_kinds(stack: Stack) -> list[Problem]:
    problems = []
    for s in stack.services.values():
        where = f"services.{s.name}"
        if s.kind not in KINDS:
            problems.append(Problem(f"{where}.kind", f"unknown kind {s.kind!r}", f"use one of {', '.join(KINDS)}"))
        if s.exposure not in EXPOSURES:
            problems.append(
                Problem(f"{where}.exposure", f"unknown exposure {s.exposure!r}", "use external or internal")
            )
        if s.gpu not in GPU_CLASSES:
            problems.append(Problem(f"{where}.gpu", f"unknown GPU class {s.gpu!r}", "use large, small or None"))
        if s.kind in SYSTEMD_KINDS and not (s.unit or "").endswith(".service"):
            problems.append(
                Problem(
                    f"{where}.unit",
                    f"a {s.kind} service needs a systemd unit name, got {s.unit!r}",
                    "name the unit, e.g. 'my-service.service'",
                )
            )
        if s.kind == "docker" and not s.compose_project:
            problems.append(
                Problem(
                    f"{where}.compose_project",
                    "a docker service needs its compose project",
                    "set compose_project (e.g. 'dify' or 'openwebui')",
                )
            )
    return problems


def check_ports(stack: Stack) -> list[Problem]:
    """Ports in range, and no host port claimed twice (SSH included)."""
    problems = []
    owners: dict[int, list[str]] = defaultdict(list)
    ssh_port = stack.network.get("ssh_port", 22)
    owners[ssh_port].append("network.ssh_port")
    for s in stack.services.values():
        for index, port in enumerate(s.ports):
            where = f"services.{s.name}.ports[{index}]"
            for label, number in (("port", port.number), ("container_port", port.container_port)):
                if number is not None and not 1 <= number <= 65535:
                    problems.append(
                        Problem(f"{where}.{label}", f"{number} is outside 1-65535", "pick a port in 1-65535")
                    )
            owners[port.number].append(f"services.{s.name}")
        backend = s.settings.get("backend")
        if backend is not None:
            # The service's own process listens there, behind the proxy that holds its port.
            owners[backend.get("port")].append(f"services.{s.name}.backend")
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
    firewall_on = bool(stack.firewall.get("enabled", False))
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
        secret = s.settings.get("api_key_secret")
        if secret is not None and secret not in stack.secrets:
            problems.append(
                Problem(
                    f"services.{s.name}.api_key_secret",
                    f"refers to the undeclared secret {secret!r}",
                    f"declare secrets.{secret} (it is generated on the host) or remove the reference",
                )
            )
    if stack.llama_cpp.source not in ("git", "archive"):
        problems.append(Problem("llama_cpp.source", f"unknown source {stack.llama_cpp.source!r}", "use git or archive"))
    if stack.llama_cpp.source == "archive" and stack.llama_cpp.archive not in stack.artifacts:
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
        artifact = standin.get("artifact")
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
    for s in stack.services.values():
        if s.kind == "docker" and not s.settings.get("compose_service"):
            problems.append(
                Problem(
                    f"services.{s.name}.compose_service",
                    "a docker service needs the name of its service in the compose file",
                    "set compose_service (e.g. 'web' for Dify's web UI)",
                )
            )
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
        proxy_user = stack.auth_proxy.get("user")
        if proxy_user not in stack.service_users:
            problems.append(
                Problem("auth_proxy.user", f"{proxy_user!r} is not a key of service_users", "name one of them")
            )
    for s in stack.proxied_services():
        backend = s.settings["backend"]
        if not ipaddress.ip_address(backend.get("bind", "0.0.0.0")).is_loopback:
            problems.append(
                Problem(
                    f"services.{s.name}.backend.bind",
                    f"{backend.get('bind')} is not loopback: the backend would answer without the proxy's check",
                    "bind the backend to 127.0.0.1",
                )
            )
        if not s.settings.get("api_key_secret"):
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


def check_network(stack: Stack) -> list[Problem]:
    """The Docker network's bridge has a name the firewall can match exactly."""
    from .firewall import MAX_INTERFACE_NAME

    bridge = stack.network.get("docker_network_bridge")
    if not isinstance(bridge, str) or not bridge:
        return [
            Problem(
                "network.docker_network_bridge",
                "is missing: the firewall opens the internal ports to this bridge only",
                "name the bridge of network.docker_network, e.g. 'br-ai-network'",
            )
        ]
    if len(bridge) > MAX_INTERFACE_NAME or not all(c.isalnum() or c in "-_." for c in bridge):
        return [
            Problem(
                "network.docker_network_bridge",
                f"{bridge!r} is not a Linux interface name (at most {MAX_INTERFACE_NAME} letters, digits, - _ .)",
                "pick a shorter plain name",
            )
        ]
    return []


CHECKS = (
    check_kinds,
    check_ports,
    check_binds,
    check_references,
    check_vram,
    check_paths,
    check_docker,
    check_identities,
    check_network,
)


def validate(stack: Stack) -> list[Problem]:
    problems: list[Problem] = []
    for check in CHECKS:
        problems.extend(check(stack))
    return problems
