"""Build the typed Stack from plain inventory data, collecting every problem instead of stopping at
the first: the operator fixes the data once, not once per run.

What each value is, is declared once, in `kca_stack.model` and `kca_stack.kinds`; the generic reader
(`kca_stack.schema`) reads by those declarations. Here only what the declarations cannot say: a
service's settings type follows its kind, the state entries of services and of the host form one list,
and a few values follow others (this host's venv lock, the default of `backed_up`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .data import merge_layers
from .kinds import KINDS, LlamaServer
from .model import Backup, Service, Stack, StackError, StateItem
from .schema import Reader, read_keys
from .validate import validate


def _service(r: Reader, name: str, raw: Any) -> Service | None:
    """The common keys as a Service, the others as the settings of its kind."""
    where = f"services.{name}"
    if not isinstance(raw, Mapping):
        r.problem(where, "must be a mapping", "describe the service as a dict")
        return None
    kind = KINDS.get(raw.get("kind"))
    if kind is None:
        if "kind" in raw:
            r.problem(f"{where}.kind", f"unknown kind {raw['kind']!r}", f"use one of {', '.join(KINDS)}")
        else:
            r.problem(f"{where}.kind", "is missing", f"add kind to {where} (one of {', '.join(KINDS)})")
        return None
    # The common keys and the kind's share one mapping: each reader leaves the keys alone, and what
    # neither knows is refused here, once. The state entry is read with the backup.
    service = r.dataclass(Service, raw, where, given={"name": name}, ignore=set(raw))
    settings = r.dataclass(kind.settings, raw, where, ignore=set(raw))
    known = read_keys(Service) | read_keys(kind.settings) | {"state"}
    unknown = [key for key in raw if key not in known]
    for key in unknown:
        r.problem(
            f"{where}.{key}",
            f"is not a setting of a {kind.name} service",
            f"remove it or correct its name (a {kind.name} service takes {', '.join(sorted(known))})",
        )
    if service is None or settings is None or unknown:
        return None
    return replace(service, title=service.title or name, settings=settings)


def _state_item(r: Reader, name: str, owner: str | None, raw: Any, where: str) -> StateItem | None:
    item = r.dataclass(StateItem, raw, where, given={"name": name, "owner": owner})
    if item is None:
        return None
    return item if item.backed_up is not None else replace(item, backed_up=not item.recreatable)


def _backup(r: Reader, data: Mapping[str, Any], services: Mapping[str, Any]) -> Backup | None:
    """The backup section, with the state of every service (services.*.state) and of the host
    (backup.host_state): services first, in the data's order."""
    raw = data.get("backup")
    if raw is None:
        return None
    backup = r.dataclass(Backup, raw, "backup", ignore={"host_state"})
    if not isinstance(raw, Mapping) or backup is None:
        return None
    state = []
    for name, service in services.items():
        if isinstance(service, Mapping) and "state" in service:
            state.append(_state_item(r, name, name, service["state"], f"services.{name}.state"))
    host_state = raw.get("host_state", {})
    if not isinstance(host_state, Mapping):
        r.problem("backup.host_state", "must be a mapping", "name each host state entry")
        host_state = {}
    for name, item in host_state.items():
        state.append(_state_item(r, name, None, item, f"backup.host_state.{name}"))
    return replace(
        backup,
        state=tuple(item for item in state if item is not None),
        # Set by inventory.py for each host; absent when the data is read without an inventory.
        password_given=data.get("backup_password_given"),
    )


def build_stack(data: Mapping[str, Any], target: bool = False) -> Stack:
    """Parse and validate. Raises StackError naming every bad field; returns a Stack otherwise.
    `target`: also check what a deploy needs of its host (validate.TARGET_CHECKS)."""
    r = Reader()
    raw_services = data.get("services", {})
    if not isinstance(raw_services, Mapping):
        r.problem("services", "must be a mapping", "name each service")
        raw_services = {}
    services = {name: _service(r, name, raw) for name, raw in raw_services.items()}
    overrides = r.dataclass(LlamaServer, data.get("llama_server_overrides", {}), "llama_server_overrides", partial=True)
    stack = r.dataclass(
        Stack,
        data,
        "",
        given={
            "services": {name: s for name, s in services.items() if s is not None},
            "backup": _backup(r, data, raw_services),
            "llama_server_overrides": overrides or {},
            # The inventory's ssh_port reaches host.data; unset means pyinfra's default.
            "connection_port": int(data.get("ssh_port") or 22),
        },
        open_keys=True,
    )
    if r.problems or stack is None:
        # Shape problems make the semantic checks meaningless: report them alone.
        raise StackError(r.problems)
    # One lock per accelerator: torch's CUDA build and its runtime wheels, or its CPU build.
    accelerator = "cuda" if stack.gpu.present else "cpu"
    stack = replace(stack, venvs={name: replace(v, lock=v.locks.get(accelerator)) for name, v in stack.venvs.items()})
    problems = validate(stack, target=target)
    if problems:
        raise StackError(problems)
    return stack


def load_stack(host_data: Any) -> Stack:
    """Build the Stack from pyinfra's `host.data` (or any mapping of the group_data keys).

    pyinfra looks a key up layer by layer (override, host, groups, all, deploy defaults) and returns
    the first whole value it finds; the stack merges those layers deeply instead, so that a group file
    overrides one value of a table without repeating the table."""
    if isinstance(host_data, Mapping):
        return build_stack(host_data, target=True)
    layers = [layer() if callable(layer) else layer for layer in host_data.datas]
    return build_stack(merge_layers(reversed([dict(layer) for layer in layers if layer])), target=True)
