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


# The load settings of the FastAPI model servers (apps/): (section or None for the service itself, key,
# smallest, largest, what it is).
SUPPORT_LOAD_FIELDS = (
    (None, "threads", 1, 256, "CPU threads of the forward pass"),
    ("batching", "batch_tokens", 1, 1 << 20, "tokens in one forward pass"),
    ("batching", "wait_ms", 0, 100, "a short wait in ms: single requests must not pay for batching"),
    ("batching", "max_queued_requests", 1, 4096, "requests admitted at once"),
    ("limits", "max_items", 1, 1 << 16, "texts in one request"),
    ("limits", "max_text_chars", 1, 1 << 24, "characters in one text"),
    ("limits", "max_text_tokens", 1, 1 << 20, "tokens in one text"),
    ("limits", "max_request_tokens", 1, 1 << 24, "tokens in one request"),
    ("limits", "max_body_bytes", 1, 1 << 30, "bytes in one request body"),
    ("limits", "body_timeout_s", 1, 600, "seconds to receive a body"),
    ("uvicorn", "limit_concurrency", 1, 65536, "open connections and tasks"),
    ("uvicorn", "timeout_keep_alive_s", 1, 600, "seconds an idle connection stays open"),
)


def check_support_load(stack: Stack) -> list[Problem]:
    """Every load setting of a FastAPI model server is a whole number in its range, a text fits one
    forward pass (or the pass bound says nothing about VRAM), and the queue's own 503 comes before
    uvicorn's."""
    problems = []
    for s in stack.services_of_kind("fastapi"):
        values = {}
        for section, key, smallest, largest, meaning in SUPPORT_LOAD_FIELDS:
            field = f"services.{s.name}.{section}.{key}" if section else f"services.{s.name}.{key}"
            value = (s.settings.get(section) or {}).get(key) if section else s.settings.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(Problem(field, f"is {value!r}, not a whole number", f"set {meaning}"))
            elif not smallest <= value <= largest:
                problems.append(
                    Problem(field, f"{value} is outside {smallest}-{largest}", f"set {meaning} within the range")
                )
            else:
                values[key] = value
        where = f"services.{s.name}"
        if values.get("max_text_tokens", 0) > values.get("batch_tokens", 1 << 30):
            problems.append(
                Problem(
                    f"{where}.limits.max_text_tokens",
                    f"{values['max_text_tokens']} is more than batching.batch_tokens {values['batch_tokens']}",
                    "raise batch_tokens or lower max_text_tokens: one text must fit one forward pass",
                )
            )
        if values.get("limit_concurrency", 1 << 30) <= values.get("max_queued_requests", 0):
            problems.append(
                Problem(
                    f"{where}.uvicorn.limit_concurrency",
                    f"{values['limit_concurrency']} is not above batching.max_queued_requests "
                    f"{values['max_queued_requests']}",
                    "raise limit_concurrency: the queue's 503 with Retry-After must come before uvicorn's bare one",
                )
            )
    return problems


CHECKS = (
    check_kinds,
    check_ports,
    check_binds,
    check_references,
    check_vram,
    check_paths,
    check_docker,
    check_support_load,
)


def validate(stack: Stack) -> list[Problem]:
    problems: list[Problem] = []
    for check in CHECKS:
        problems.extend(check(stack))
    return problems
