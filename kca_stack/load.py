"""Build the typed Stack from plain inventory data, collecting every problem instead of stopping at
the first: the operator fixes the data once, not once per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .data import merge_layers
from .model import (
    Artifact,
    Backup,
    Directory,
    Gpu,
    LlamaCpp,
    Model,
    ModelFile,
    ModelsFilesystem,
    Port,
    Problem,
    Scenario,
    Service,
    ServiceUser,
    Stack,
    StackError,
    StateItem,
    User,
    Venv,
)
from .validate import validate

# Keys of a service that the model knows; anything else is a kind-specific setting.
_SERVICE_KEYS = {
    "title",
    "kind",
    "unit",
    "compose_project",
    "ports",
    "exposure",
    "bind",
    "gpu",
    "vram_gb",
    "models",
    "feature",
    "state",
}

_STATE_KEYS = {
    "kind",
    "paths",
    "capture",
    "recreatable",
    "backed_up",
    "databases",
    "only",
    "exclude",
    "pin",
    "restore_to",
}


class _Reader:
    """Reads typed values from plain data, recording a Problem (not raising) for each bad one."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, field: str, message: str, fix: str) -> None:
        self.problems.append(Problem(field, message, fix))

    def get(self, data: Mapping, key: str, where: str, types: type | tuple, default: Any = ...):
        if not isinstance(data, Mapping):
            self.problem(where, f"must be a mapping, got {type(data).__name__}", "write it as a dict")
            return None if default is ... else default
        if key not in data:
            if default is ...:
                self.problem(f"{where}.{key}", "is missing", f"add {key} to {where}")
                return None
            return default
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
            expected = " or ".join(t.__name__ for t in _tuple(types))
            self.problem(
                f"{where}.{key}",
                f"must be {expected}, got {type(value).__name__} {value!r}",
                f"give {where}.{key} a value of type {expected}",
            )
            return None if default is ... else default
        return value


def _tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _number(r: _Reader, data: Mapping, key: str, where: str, default: Any = ...) -> float | None:
    value = r.get(data, key, where, (int, float, type(None)), default)
    return None if value is None else float(value)


def _ports(r: _Reader, raw: Any, where: str) -> tuple[Port, ...]:
    if not isinstance(raw, list):
        r.problem(where, f"must be a list of ports, got {raw!r}", "write ports as a list of dicts")
        return ()
    ports = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        number = r.get(item, "port", at, int)
        protocol = r.get(item, "protocol", at, str, "TCP")
        container_port = r.get(item, "container_port", at, (int, type(None)), None)
        if number is not None:
            ports.append(Port(number, protocol, container_port))
    return tuple(ports)


def _service(r: _Reader, name: str, raw: Mapping) -> Service | None:
    where = f"services.{name}"
    if not isinstance(raw, Mapping):
        r.problem(where, "must be a mapping", "describe the service as a dict")
        return None
    models = r.get(raw, "models", where, list, [])
    return Service(
        name=name,
        title=r.get(raw, "title", where, str, name),
        kind=r.get(raw, "kind", where, str),
        exposure=r.get(raw, "exposure", where, str),
        bind=r.get(raw, "bind", where, str),
        ports=_ports(r, raw.get("ports", []), f"{where}.ports"),
        unit=r.get(raw, "unit", where, (str, type(None)), None),
        compose_project=r.get(raw, "compose_project", where, (str, type(None)), None),
        gpu=r.get(raw, "gpu", where, (str, type(None)), None),
        vram_gb=_number(r, raw, "vram_gb", where, 0.0) or 0.0,
        models=tuple(models or ()),
        feature=r.get(raw, "feature", where, str, ""),
        settings={k: v for k, v in raw.items() if k not in _SERVICE_KEYS},
    )


def _state_item(r: _Reader, name: str, owner: str | None, raw: Any, where: str) -> StateItem | None:
    if not isinstance(raw, Mapping):
        r.problem(where, "must be a mapping", "describe the state as a dict with kind, paths and capture")
        return None
    recreatable = r.get(raw, "recreatable", where, bool)
    return StateItem(
        name=name,
        owner=owner,
        kind=r.get(raw, "kind", where, str),
        paths=tuple(r.get(raw, "paths", where, list, [])),
        capture=r.get(raw, "capture", where, str),
        recreatable=bool(recreatable),
        backed_up=r.get(raw, "backed_up", where, bool, not recreatable),
        databases=tuple(r.get(raw, "databases", where, list, [])),
        only=tuple(r.get(raw, "only", where, list, [])),
        exclude=tuple(r.get(raw, "exclude", where, list, [])),
        pin=r.get(raw, "pin", where, (str, type(None)), None),
        restore_to=r.get(raw, "restore_to", where, (str, type(None)), None),
        settings={k: v for k, v in raw.items() if k not in _STATE_KEYS},
    )


def _backup(r: _Reader, data: Mapping[str, Any]) -> Backup | None:
    """The backup section, with the state of every service (services.*.state) and of the host
    (backup.host_state): services first, in the data's order."""
    raw = r.get(data, "backup", "data", Mapping, None)
    if raw is None:
        return None
    state = []
    for name, service in r.get(data, "services", "data", Mapping, {}).items():
        if isinstance(service, Mapping) and "state" in service:
            item = _state_item(r, name, name, service["state"], f"services.{name}.state")
            if item is not None:
                state.append(item)
    for name, item_raw in r.get(raw, "host_state", "backup", Mapping, {}).items():
        item = _state_item(r, name, None, item_raw, f"backup.host_state.{name}")
        if item is not None:
            state.append(item)
    retention = r.get(raw, "retention", "backup", Mapping, {})
    return Backup(
        enabled=r.get(raw, "enabled", "backup", bool, False),
        repository=r.get(raw, "repository", "backup", (str, type(None)), None),
        password_env=r.get(raw, "password_env", "backup", str, "KCA_BACKUP_PASSWORD"),
        credentials_env=tuple(r.get(raw, "credentials_env", "backup", list, [])),
        config_dir=r.get(raw, "config_dir", "backup", str, "/etc/kca/backup"),
        work_dir=r.get(raw, "work_dir", "backup", str, "/var/lib/kca-backup"),
        schedule=r.get(raw, "schedule", "backup", str, "daily"),
        check_schedule=r.get(raw, "check_schedule", "backup", str, "weekly"),
        check_read_data_subset=r.get(raw, "check_read_data_subset", "backup", (str, type(None)), None),
        retention=dict(retention),
        max_age_hours=_number(r, raw, "max_age_hours", "backup", 36.0) or 36.0,
        restore=r.get(raw, "restore", "backup", (str, type(None)), None),
        state=tuple(state),
        # Set by inventory.py for each host; absent when the data is read without an inventory.
        password_given=data.get("backup_password_given"),
    )


def build_stack(data: Mapping[str, Any], target: bool = False) -> Stack:
    """Parse and validate. Raises StackError naming every bad field; returns a Stack otherwise.
    `target`: also check what a deploy needs of its host (validate.TARGET_CHECKS)."""
    r = _Reader()

    raw_gpu = r.get(data, "gpu", "data", Mapping, {})
    gpu = Gpu(
        name=r.get(raw_gpu, "name", "gpu", str, "GPU"),
        vram_total_gb=_number(r, raw_gpu, "vram_total_gb", "gpu") or 0.0,
        vram_usable_gb=_number(r, raw_gpu, "vram_usable_gb", "gpu") or 0.0,
        present=r.get(raw_gpu, "present", "gpu", bool, True),
        device_node=r.get(raw_gpu, "device_node", "gpu", str, "/dev/nvidiactl"),
        boot_scenario=r.get(raw_gpu, "boot_scenario", "gpu", str),
    )

    raw_user = r.get(data, "user", "data", Mapping, {})
    user = User(
        name=r.get(raw_user, "name", "user", str, "kca"),
        home=r.get(raw_user, "home", "user", str, "/home/kca"),
        shell=r.get(raw_user, "shell", "user", str, "/bin/bash"),
        uid=r.get(raw_user, "uid", "user", (int, type(None)), None),
    )
    service_users = {
        name: ServiceUser(
            name=r.get(raw, "name", f"service_users.{name}", str, ""),
            uid=r.get(raw, "uid", f"service_users.{name}", int, 0),
        )
        for name, raw in r.get(data, "service_users", "data", Mapping, {}).items()
    }

    directories = tuple(
        Directory(
            path=r.get(d, "path", f"directories[{i}]", str, ""),
            owner=r.get(d, "owner", f"directories[{i}]", (str, type(None)), None),
            mode=r.get(d, "mode", f"directories[{i}]", (str, type(None)), None),
            manage=r.get(d, "manage", f"directories[{i}]", bool, True),
        )
        for i, d in enumerate(r.get(data, "directories", "data", list, []))
    )

    raw_fs = r.get(data, "models_filesystem", "data", Mapping, {})
    models_filesystem = ModelsFilesystem(
        mountpoint=r.get(raw_fs, "mountpoint", "models_filesystem", str, "/models"),
        device=r.get(raw_fs, "device", "models_filesystem", (str, type(None)), None),
        fstype=r.get(raw_fs, "fstype", "models_filesystem", str, "ext4"),
        options=r.get(raw_fs, "options", "models_filesystem", str, "defaults"),
        format_empty=r.get(raw_fs, "format_empty", "models_filesystem", bool, False),
        plain_directory=r.get(raw_fs, "plain_directory", "models_filesystem", bool, False),
    )

    venvs = {
        name: Venv(
            name=name,
            path=r.get(v, "path", f"venvs.{name}", str, ""),
            link=r.get(v, "link", f"venvs.{name}", (str, type(None)), None),
            # One lock per accelerator: torch's CUDA build and its runtime wheels, or its CPU build.
            lock=r.get(v, "locks", f"venvs.{name}", Mapping, {}).get("cuda" if gpu.present else "cpu"),
        )
        for name, v in r.get(data, "venvs", "data", Mapping, {}).items()
    }

    services = {}
    for name, raw in r.get(data, "services", "data", Mapping, {}).items():
        service = _service(r, name, raw)
        if service is not None:
            services[name] = service

    models = {}
    for name, raw in r.get(data, "models", "data", Mapping, {}).items():
        files = []
        for index, f in enumerate(r.get(raw, "files", f"models.{name}", list, [])):
            at = f"models.{name}.files[{index}]"
            files.append(
                ModelFile(
                    role=r.get(f, "role", at, str),
                    repo=r.get(f, "repo", at, str),
                    revision=r.get(f, "revision", at, str, "main"),
                    file=r.get(f, "file", at, (str, type(None)), None),
                    sha256=r.get(f, "sha256", at, (str, type(None)), None),
                    size=r.get(f, "size", at, (int, type(None)), None),
                )
            )
        models[name] = Model(
            name=name,
            dir=r.get(raw, "dir", f"models.{name}", str, ""),
            disk_gb=_number(r, raw, "disk_gb", f"models.{name}", None),
            files=tuple(files),
        )

    raw_llama = r.get(data, "llama_cpp", "data", Mapping, {})
    llama_cpp = LlamaCpp(
        source=r.get(raw_llama, "source", "llama_cpp", str, "git"),
        git_url=r.get(raw_llama, "git_url", "llama_cpp", str, ""),
        git_ref=r.get(raw_llama, "git_ref", "llama_cpp", str, ""),
        archive=r.get(raw_llama, "archive", "llama_cpp", str, ""),
        targets=tuple(r.get(raw_llama, "targets", "llama_cpp", list, ["llama-server"])),
        cmake_flags=tuple(r.get(raw_llama, "cmake_flags", "llama_cpp", list, [])),
        cuda_cmake_flags=tuple(r.get(raw_llama, "cuda_cmake_flags", "llama_cpp", list, [])),
        ccache=r.get(raw_llama, "ccache", "llama_cpp", bool, True),
    )

    artifacts = {}
    for name, raw in r.get(data, "artifacts", "data", Mapping, {}).items():
        at = f"artifacts.{name}"
        artifacts[name] = Artifact(
            name=name,
            pip=r.get(raw, "pip", at, str),
            file=r.get(raw, "file", at, str),
            sha256=r.get(raw, "sha256", at, str),
            subdir=r.get(raw, "subdir", at, (str, type(None)), None),
            member=r.get(raw, "member", at, (str, type(None)), None),
        )

    scenarios = {
        name: Scenario(
            name=name,
            title=r.get(raw, "title", f"vram_scenarios.{name}", str, name),
            services=tuple(r.get(raw, "services", f"vram_scenarios.{name}", list, [])),
        )
        for name, raw in r.get(data, "vram_scenarios", "data", Mapping, {}).items()
    }

    raw_vllm = r.get(data, "vllm", "data", Mapping, {})

    backup = _backup(r, data)

    if r.problems:
        # Shape problems make the semantic checks meaningless: report them alone.
        raise StackError(r.problems)

    stack = Stack(
        gpu=gpu,
        user=user,
        paths=dict(r.get(data, "paths", "data", Mapping, {})),
        directories=directories,
        models_filesystem=models_filesystem,
        venvs=venvs,
        base_packages=tuple(r.get(data, "base_packages", "data", list, [])),
        os_profiles=dict(r.get(data, "os_profiles", "data", Mapping, {})),
        services=services,
        models=models,
        scenarios=scenarios,
        network=dict(r.get(data, "network", "data", Mapping, {})),
        firewall=dict(r.get(data, "firewall", "data", Mapping, {})),
        llama_cpp=llama_cpp,
        artifacts=artifacts,
        secrets=dict(r.get(data, "secrets", "data", Mapping, {})),
        vllm=dict(raw_vllm),
        nvidia=dict(r.get(data, "nvidia", "data", Mapping, {})),
        systemd_hardening=dict(r.get(data, "systemd_hardening", "data", Mapping, {})),
        systemd_relaxations=dict(r.get(data, "systemd_relaxations", "data", Mapping, {})),
        model_standins=dict(r.get(data, "model_standins", "data", Mapping, {})),
        llama_server_overrides=dict(r.get(data, "llama_server_overrides", "data", Mapping, {})),
        docker=dict(r.get(data, "docker", "data", Mapping, {})),
        openwebui=dict(r.get(data, "openwebui", "data", Mapping, {})),
        dify=dict(r.get(data, "dify", "data", Mapping, {})),
        backup=backup,
        # The inventory's ssh_port reaches host.data; unset means pyinfra's default.
        connection_port=int(data.get("ssh_port") or 22),
        service_users=service_users,
        container_uids=dict(r.get(data, "container_uids", "data", Mapping, {})),
        auth_proxy=dict(r.get(data, "auth_proxy", "data", Mapping, {})),
    )
    problems = r.problems + validate(stack, target=target)
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
