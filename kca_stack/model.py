"""The typed model of the stack: the one declaration of the data.

`group_data/*.py` holds plain values (pyinfra's debug-inventory cannot serialise objects); these frozen
dataclasses say what each value is: its type, its default, and its domain (`schema.setting`). The
reader (`kca_stack.schema`, driven by `kca_stack.load`) checks each value against them and collects
every problem; `kca_stack.validate` checks what spans several values (ports, references, VRAM).
A service's kind-specific settings are declared with its kind in `kca_stack.kinds`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .kinds import KINDS, PORT, KindSettings, LlamaServer
from .problems import Problem, StackError
from .schema import setting

__all__ = ["KINDS", "Problem", "StackError"]

EXPOSURES = ("external", "internal")
GPU_CLASSES = ("large", "small", None)
STATE_KINDS = ("sqlite", "postgresql", "files", "secrets")
STATE_CAPTURES = ("sqlite-backup", "pg-dumpall", "stop-copy-start", "copy")
# restic's repository syntax: a local path, or one of these back ends.
REPOSITORY_SCHEMES = ("sftp", "rest", "s3")

HEX64 = r"[0-9a-fA-F]{64}"
ABSOLUTE = r"/\S*"
# A systemd unit of a service: what systemctl accepts as a name, ending in .service.
UNIT = r"[A-Za-z0-9][A-Za-z0-9@_.:-]*\.service"
# Linux account names (useradd's default NAME_REGEX, and what Debian's adduser accepts).
ACCOUNT = r"[a-z_][a-z0-9_-]{0,31}"
# A uid for an account of this stack: not root, below the range of nobody and the user namespaces.
UID = {"ge": 1, "le": 65533}


@dataclass(frozen=True)
class Port:
    number: int = setting(doc="a host port", key="port", **PORT)
    protocol: Literal["HTTP", "HTTPS", "TCP", "UDP"] = setting("TCP", doc="what the port speaks")
    container_port: int | None = setting(None, doc="the port inside the container", **PORT)

    @property
    def target(self) -> int:
        """The port inside the container: the host port unless the data names another."""
        return self.container_port or self.number


@dataclass(frozen=True)
class Service:
    name: str = setting(from_key=True)
    kind: str = setting(doc="the service's kind")
    exposure: Literal["external", "internal"] = setting(doc="who may reach it")
    bind: str = setting(doc="the address it listens on")
    title: str = setting("", doc="its name in the documents")
    ports: tuple[Port, ...] = setting((), doc="its host ports")
    unit: str | None = setting(None, doc="a systemd unit name", pattern=UNIT)
    compose_project: str | None = setting(None, doc="its compose project", pattern=r"[a-z0-9][a-z0-9_-]*")
    gpu: Literal["large", "small"] | None = setting(None, doc="its GPU class")
    vram_gb: float = setting(0.0, doc="its VRAM in GB", ge=0, le=1024)
    models: tuple[str, ...] = setting((), doc="names from models")
    feature: str = setting("", doc="what it does, in a few words")
    # The settings of its kind (kinds.KINDS[kind].settings), read from the service's other keys.
    settings: KindSettings | None = setting(None, derived=True)

    @property
    def is_systemd(self) -> bool:
        return self.kind in KINDS and KINDS[self.kind].systemd

    @property
    def uses_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def port(self) -> int | None:
        """The service's main port (the first one), or None when it publishes nothing."""
        return self.ports[0].number if self.ports else None

    @property
    def api_key_secret(self) -> str | None:
        """The secret its API key is read from, for the kinds that take one."""
        return getattr(self.settings, "api_key_secret", None)

    @property
    def backend(self):
        """Where its own process listens behind the authenticating proxy, or None."""
        return getattr(self.settings, "backend", None)


@dataclass(frozen=True)
class Gpu:
    vram_total_gb: float = setting(doc="the card's memory in GB", gt=0, le=1024)
    vram_usable_gb: float = setting(doc="the memory the services may take, in GB", gt=0, le=1024)
    boot_scenario: str = setting(doc="a key of vram_scenarios")
    name: str = setting("GPU", doc="the card's name")
    present: bool = setting(True, doc="whether the host has the GPU")
    device_node: str = setting("/dev/nvidiactl", doc="the GPU's device node", pattern=r"/dev/\S+")


@dataclass(frozen=True)
class Scenario:
    name: str = setting(from_key=True)
    title: str = setting("", doc="what the scenario is")
    services: tuple[str, ...] = setting((), doc="names from services")


@dataclass(frozen=True)
class Directory:
    path: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    owner: str | None = setting(None, doc="a user of the host (root, user.name or a service user)", pattern=ACCOUNT)
    mode: str | None = setting(None, doc="an octal mode such as 0755", pattern=r"0?[0-7]{3}")
    # False: create when missing, never change owner or mode afterwards (Docker volumes).
    manage: bool = setting(True, doc="whether owner and mode are kept")


@dataclass(frozen=True)
class ModelsFilesystem:
    mountpoint: str = setting("/models", doc="an absolute path", pattern=ABSOLUTE)
    device: str | None = setting(None, doc="a block device such as /dev/nvme1n1p1", pattern=r"/dev/\S+")
    fstype: str = setting("ext4", doc="a filesystem type", pattern=r"[a-z0-9]+")
    options: str = setting("defaults", doc="fstab options", pattern=r"[^\s,]+(,[^\s,]+)*")
    # Format the device when it holds no filesystem at all (a new disk after a failure). Off by default.
    format_empty: bool = setting(False, doc="whether an empty device is formatted")
    # True only where /models really is a directory on the root disk (the test host). Without a device
    # and without this, the deploy refuses: a models partition that survived a rebuild must not sit
    # unmounted while downloads fill the root disk.
    plain_directory: bool = setting(False, doc="whether /models is a plain directory on purpose")


@dataclass(frozen=True)
class ModelFile:
    """One file of a model (role model|mmproj), or a whole repository snapshot (role snapshot)."""

    role: Literal["model", "mmproj", "snapshot"] = setting(doc="what the file is")
    repo: str = setting(doc="a hub repository, owner/name", pattern=r"[\w.-]+/[\w.-]+")
    revision: str = setting("main", doc="a commit or a branch", pattern=r"[\w./-]+")
    file: str | None = setting(None, doc="a file name in the repository", pattern=r"[^/\s][^\s]*")
    sha256: str | None = setting(None, doc="a sha256 (64 hex digits)", pattern=HEX64)
    # Bytes: what the fetcher checks when no sha256 is known (a hub's small, non-LFS files).
    size: int | None = setting(None, doc="the file's size in bytes", ge=1)


@dataclass(frozen=True)
class Model:
    name: str = setting(from_key=True)
    dir: str = setting(doc="an absolute path under /models", pattern=ABSOLUTE)
    disk_gb: float | None = setting(None, doc="its size on disk in GB", gt=0, le=100000)
    files: tuple[ModelFile, ...] = setting((), doc="its files")

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

    name: str = setting(from_key=True)
    pip: str = setting(doc="a pinned requirement, name==version", pattern=r"[\w.-]+==[\w.+-]+")
    file: str = setting(doc="the file pip downloads", pattern=r"[^/\s]+")
    sha256: str = setting(doc="the file's sha256 (64 hex digits)", pattern=HEX64)
    subdir: str | None = setting(None, doc="a folder inside the archive")
    member: str | None = setting(None, doc="a member of the archive")


@dataclass(frozen=True)
class LlamaCpp:
    git_url: str = setting(doc="the repository to clone")
    git_ref: str = setting(doc="the commit to build")
    archive: str = setting(doc="a key of artifacts")
    source: Literal["git", "archive"] = setting("git", doc="where the source comes from")
    targets: tuple[str, ...] = setting(("llama-server",), doc="cmake targets", pattern=r"[\w.-]+")
    cmake_flags: tuple[str, ...] = setting((), doc="cmake flags", pattern=r"-D\w+=\S*")
    cuda_cmake_flags: tuple[str, ...] = setting((), doc="cmake flags", pattern=r"-D\w+=\S*")
    ccache: bool = setting(True, doc="whether ccache keeps the objects")


@dataclass(frozen=True)
class Venv:
    name: str = setting(from_key=True)
    path: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    link: str | None = setting(None, doc="an absolute path", pattern=ABSOLUTE)
    # The hashed lock file of this repository for each accelerator (cuda, cpu), installed with
    # --require-hashes in place of the requirements it was compiled from.
    locks: Mapping[Literal["cuda", "cpu"], str] = setting({}, doc="lock files by accelerator")
    # This host's lock (locks.cuda where the GPU is present, else locks.cpu).
    lock: str | None = setting(None, derived=True)


@dataclass(frozen=True)
class User:
    name: str = setting("kca", doc="an account name", pattern=ACCOUNT)
    home: str = setting("/home/kca", doc="an absolute path", pattern=ABSOLUTE)
    shell: str = setting("/bin/bash", doc="a login shell", pattern=ABSOLUTE)
    uid: int | None = setting(None, doc="a uid", **UID)


@dataclass(frozen=True)
class ServiceUser:
    """The system user (and group of the same name and id) one service unit runs as."""

    name: str = setting(doc="an account name", pattern=ACCOUNT)
    uid: int = setting(doc="a fixed uid", **UID)


@dataclass(frozen=True)
class Secret:
    """A secret generated on the host, once: `bytes` random bytes, base64 without / + =."""

    name: str = setting(from_key=True)
    # 16 bytes (128 bits) at least: anything shorter can be guessed offline.
    bytes: int = setting(32, doc="the random bytes behind the secret (16 to 256)", ge=16, le=256)


@dataclass(frozen=True)
class PostgresqlState:
    """The database container a pg_dumpall runs through, and a restore loads into."""

    image: str = setting(doc="the image of upstream's compose file", pattern=r"\S+:\S+")
    user: str = setting(doc="the superuser", pattern=ACCOUNT)
    password_secret: str = setting(doc="the secret that holds its password")
    mount: str = setting(doc="where the volume is mounted", pattern=ABSOLUTE)
    pgdata: str = setting(doc="PGDATA", pattern=ABSOLUTE)


@dataclass(frozen=True)
class StateItem:
    """Something a rebuild cannot make again (or can, when recreatable): where it is, what it is, and
    how a consistent copy is taken. `owner` is the service that holds it, or None for host state."""

    name: str = setting(from_key=True)
    kind: Literal["sqlite", "postgresql", "files", "secrets"] = setting(doc="what the state is")
    paths: tuple[str, ...] = setting(doc="where it lives", pattern=ABSOLUTE)
    capture: Literal["sqlite-backup", "pg-dumpall", "stop-copy-start", "copy"] = setting(doc="how it is copied")
    recreatable: bool = setting(doc="whether a rebuild makes it again")
    # The service that holds it, or None for host state.
    owner: str | None = setting(None, derived=True)
    # Whether snapshots hold it: by default (None in the data), everything that cannot be recreated.
    backed_up: bool | None = setting(None, doc="whether snapshots hold it")
    databases: tuple[str, ...] = setting((), doc="database files, relative")
    only: tuple[str, ...] = setting((), doc="patterns to keep")
    exclude: tuple[str, ...] = setting((), doc="patterns to leave out")
    pin: str | None = setting(None, doc="a dotted pin such as dify.tag", pattern=r"\w+\.\w+")
    restore_to: str | None = setting(None, doc="an absolute path", pattern=ABSOLUTE)
    postgresql: PostgresqlState | None = setting(None, doc="the database container")


@dataclass(frozen=True)
class Backup:
    enabled: bool = setting(False, doc="whether snapshots are taken")
    repository: str | None = setting(None, doc="a restic repository")
    password_env: str = setting("KCA_BACKUP_PASSWORD", doc="a variable name", pattern=r"[A-Z_][A-Z0-9_]*")
    credentials_env: tuple[str, ...] = setting((), doc="variable names")
    config_dir: str = setting("/etc/kca/backup", doc="an absolute path", pattern=ABSOLUTE)
    work_dir: str = setting("/var/lib/kca-backup", doc="an absolute path", pattern=ABSOLUTE)
    schedule: str = setting("daily", doc="a systemd calendar expression")
    check_schedule: str = setting("weekly", doc="a systemd calendar expression")
    check_read_data_subset: str | None = setting(
        None, doc="restic's --read-data-subset, e.g. 10% or 1/5", pattern=r"\d+(\.\d+)?%|\d+/\d+|\d+[KMGT]?"
    )
    retention: Mapping[str, Any] = setting({}, doc="restic forget options")
    max_age_hours: float = setting(36.0, doc="the age in hours past which the backup row turns red", gt=0)
    restore: str | None = setting(None, doc="a snapshot ID or latest")
    host_state: Mapping[str, StateItem] = setting({}, doc="state that belongs to no service")
    # Every state entry: the services' (services.*.state) first, in the data's order, then host_state.
    state: tuple[StateItem, ...] = setting((), derived=True)
    # Whether the inventory found the repository password: None when the data was read without an
    # inventory (unit tests, docs), where it is not asked for.
    password_given: bool | None = setting(None, derived=True)

    @property
    def password_file(self) -> str:
        return f"{self.config_dir}/restic-password"

    def backed_up(self) -> list[StateItem]:
        return [item for item in self.state if item.backed_up]


@dataclass(frozen=True)
class VllmPlugin:
    """The HyperCLOVA X plugin, installed editable into vLLM's venv."""

    # unavailable: the step stops there with one message.
    source: Literal["git", "unavailable"] = setting(doc="where the plugin comes from")
    path: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    entry_point_group: str = setting(doc="the entry point group vLLM loads plugins from")
    git_url: str = setting("", doc="the repository to clone")
    git_ref: str = setting("", doc="the commit to check out")


@dataclass(frozen=True)
class Vllm:
    venv: str = setting(doc="a key of venvs")
    packages: tuple[str, ...] = setting(doc="pinned requirements", pattern=r"[\w.-]+==[\w.+-]+")
    plugin: VllmPlugin = setting(doc="the HyperCLOVA X plugin")


@dataclass(frozen=True)
class AuthProxy:
    """The authenticating reverse proxy in front of each service that names a backend."""

    unit: str = setting(doc="a systemd unit name", pattern=UNIT)
    user: str = setting(doc="a key of service_users")
    config: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    package: str = setting("nginx", doc="the OS package")
    public_paths: tuple[str, ...] = setting((), doc="paths answered without a key", pattern=r"/\S*")
    read_timeout_s: int = setting(3600, doc="seconds between two reads of a response", ge=1, le=86400)
    max_body: str = setting("32m", doc="nginx's client_max_body_size, e.g. 32m", pattern=r"\d+[kmg]?")
    worker_processes: int = setting(2, doc="nginx's worker processes", ge=1, le=64)
    retry_after_s: int = setting(30, doc="seconds a client waits while the backend is off", ge=1, le=3600)


@dataclass(frozen=True)
class Standin:
    """A real small model placed at a production model's path on the test host."""

    artifact: str | None = setting(None, doc="a key of artifacts")
    build: str | None = setting(None, doc="a script of this repository that builds it")
    base: str | None = setting(None, doc="the model the build starts from")


def _network_problem(value: tuple[str, ...]) -> str | None:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not a network"
    return None


@dataclass(frozen=True)
class Network:
    domain: str = setting(doc="the server's domain name", pattern=r"[a-z0-9.-]+")
    docker_network: str = setting(doc="the Docker network of the services", pattern=r"[a-z0-9][a-z0-9_.-]*")
    # Docker's com.docker.network.bridge.name: the firewall opens the internal ports to this bridge only.
    # Linux interface names are at most 15 characters (IFNAMSIZ - 1).
    docker_network_bridge: str = setting(
        doc="a Linux interface name (at most 15 letters, digits, - _ .)", pattern=r"[A-Za-z0-9_.-]{1,15}"
    )
    # Where containers come from when they reach host services.
    docker_subnets: tuple[str, ...] = setting((), doc="networks such as 172.16.0.0/12", check=_network_problem)
    # Bridges whose containers may open connections out through the host: Docker's default bridge and the
    # bridges of user-defined networks (compose projects). Egress only: internal ports answer the one
    # named bridge of docker_network.
    docker_egress_bridges: tuple[str, ...] = setting(
        ("docker0", "br-*"), doc="interface names (a trailing * matches many)", pattern=r"[A-Za-z0-9_.-]{1,15}\*?"
    )
    ssh_port: int = setting(22, doc="the SSH port the firewall opens", **PORT)


@dataclass(frozen=True)
class Firewall:
    # When enabled, internal services may bind the wildcard address: the firewall keeps them internal.
    enabled: bool = setting(False, doc="whether the firewall is on")


# An OpenPGP fingerprint as gpg --show-keys prints it: 40 hex digits, spaces allowed between groups.
FINGERPRINT = r"[0-9A-Fa-f]{4}( ?[0-9A-Fa-f]{4}){9}"
PACKAGE = r"[a-z0-9][a-z0-9.+*-]*"


@dataclass(frozen=True)
class ContainerToolkit:
    key_url: str = setting(doc="where the signing key is fetched", pattern=r"https://\S+")
    # The fetched key is refused unless it has this fingerprint.
    key_fingerprint: str = setting(doc="an OpenPGP fingerprint (40 hex digits)", pattern=FINGERPRINT)
    keyring: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    repo_url: str = setting(doc="the apt repository", pattern=r"https://\S+")
    packages: tuple[str, ...] = setting(doc="apt packages", pattern=PACKAGE)


@dataclass(frozen=True)
class CudaRepository:
    """NVIDIA's CUDA apt repository, trusted through its signing key (what the cuda-keyring package
    would install: the same key, the same source line)."""

    key_url: str = setting(doc="where the signing key is fetched, with {repo}", pattern=r"https://\S+")
    # The fetched key is refused unless it has this fingerprint.
    key_fingerprint: str = setting(doc="an OpenPGP fingerprint (40 hex digits)", pattern=FINGERPRINT)
    keyring: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    repo_url: str = setting(doc="the apt repository, with {repo}", pattern=r"https://\S+")


@dataclass(frozen=True)
class Nvidia:
    """The NVIDIA layer: driver branch, CUDA toolkit, container toolkit (skipped without a GPU)."""

    cuda_repository: CudaRepository = setting(doc="NVIDIA's CUDA apt repository")
    driver_min_major: int = setting(doc="the oldest driver the card runs on", ge=1)
    # The branch apt may install (an apt pin): a new branch is a decision, not an upgrade.
    driver_branch: str = setting(doc="a driver branch, e.g. '580'", pattern=r"\d+")
    driver_pin_packages: tuple[str, ...] = setting(doc="apt globs the pin holds", pattern=PACKAGE)
    driver_packages: tuple[str, ...] = setting(doc="apt packages", pattern=PACKAGE)
    cuda_packages: tuple[str, ...] = setting(doc="apt packages", pattern=PACKAGE)
    cuda_home: str = setting(doc="an absolute path", pattern=ABSOLUTE)
    container_toolkit: ContainerToolkit = setting(doc="the container toolkit")
    # A new driver needs a reboot. False: the run ends saying "REBOOT REQUIRED" instead.
    reboot_allowed: bool = setting(False, doc="whether the deploy may reboot")


@dataclass(frozen=True)
class Stack:
    gpu: Gpu = setting(doc="the GPU")
    scenarios: Mapping[str, Scenario] = setting(key="vram_scenarios", doc="the VRAM scenarios")
    services: Mapping[str, Service] = setting(doc="the services")
    network: Network = setting(doc="the network")
    user: User = setting(User(), doc="the operator's account")
    paths: Mapping[str, str | tuple[str, ...]] = setting({}, doc="the roots and named paths")
    directories: tuple[Directory, ...] = setting((), doc="the directory tree")
    models_filesystem: ModelsFilesystem = setting(ModelsFilesystem(), doc="where /models lives")
    venvs: Mapping[str, Venv] = setting({}, doc="the Python environments")
    base_packages: tuple[str, ...] = setting((), doc="OS packages", pattern=r"[a-z0-9][a-z0-9.+-]*")
    os_profiles: Mapping[str, Mapping[str, Any]] = setting({}, doc="what differs per OS")
    models: Mapping[str, Model] = setting({}, doc="the models")
    firewall: Firewall = setting(Firewall(), doc="the firewall")
    llama_cpp: LlamaCpp | None = setting(None, doc="the llama.cpp build")
    artifacts: Mapping[str, Artifact] = setting({}, doc="registry files")
    secrets: Mapping[str, Secret] = setting({}, doc="the generated secrets")
    vllm: Vllm | None = setting(None, doc="vLLM and its plugin")
    nvidia: Nvidia | None = setting(None, doc="the NVIDIA layer")
    systemd_hardening: Mapping[str, str] = setting({}, doc="the units' baseline")
    # key (a kind, "gpu", "auth-proxy") -> setting -> [value, why].
    systemd_relaxations: Mapping[str, Mapping[str, tuple[str, ...]]] = setting({}, doc="relaxations, each with why")
    # Test host: model name -> its real small stand-in, placed at the production path.
    model_standins: Mapping[str, Standin] = setting({}, doc="the test host's stand-in models")
    # Group-level llama-server settings laid over every service's (the test host runs on the CPU):
    # each key is checked as the llama_server setting of the same name.
    llama_server_overrides: Mapping[str, Any] = setting({}, derived=True)
    # Docker engine, Open WebUI and Dify settings, read by their task modules.
    docker: Mapping[str, Any] = setting({}, doc="the Docker engine")
    openwebui: Mapping[str, Any] = setting({}, doc="Open WebUI")
    dify: Mapping[str, Any] = setting({}, doc="Dify")
    backup: Backup | None = setting(None, derived=True)
    # The port the deploy's SSH connection uses (the inventory's ssh_port; pyinfra's default is 22).
    connection_port: int = setting(22, derived=True)
    # One identity per service unit (and for the authenticating proxy), by service name.
    service_users: Mapping[str, ServiceUser] = setting({}, doc="one identity per unit")
    # uid -> what carries it in a container's volume: no host account may take one.
    container_uids: Mapping[int, str] = setting({}, doc="uids containers' files carry")
    auth_proxy: AuthProxy | None = setting(None, doc="the authenticating proxy")

    # --- derived views: computed, never stored twice -------------------------------------------------

    def service_vram_gb(self, service: Service) -> float:
        """What a service takes on the GPU. vLLM reserves a fraction of the whole card up front."""
        utilisation = getattr(service.settings, "gpu_memory_utilization", None)
        if utilisation is not None:
            return round(utilisation * self.gpu.vram_total_gb, 2)
        return service.vram_gb

    def scenario_vram_gb(self, scenario: Scenario) -> float:
        return round(sum(self.service_vram_gb(self.services[s]) for s in scenario.services), 2)

    def scenario_headroom_gb(self, scenario: Scenario) -> float:
        return round(self.gpu.vram_usable_gb - self.scenario_vram_gb(scenario), 2)

    def large_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.gpu == "large"]

    def systemd_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.is_systemd]

    def llm_backends(self) -> list[Service]:
        """Every LLM back end Open WebUI lists (kinds.KINDS: llm_backend), in the data's order."""
        return [s for s in self.services.values() if s.kind in KINDS and KINDS[s.kind].llm_backend and s.ports]

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
        return (service.kind in KINDS and KINDS[service.kind].gpu_only) or (service.uses_gpu and self.gpu.present)

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
            for name, (value, why) in self.systemd_relaxations.get(key, {}).items():
                reasons[name] = (value, why)
        return [
            (key, reasons[key][0] if key in reasons else value, reasons[key][1] if key in reasons else "")
            for key, value in self.systemd_hardening.items()
        ]

    def user_of(self, service: Service) -> ServiceUser:
        return self.service_users[service.name]

    def proxied_services(self) -> list[Service]:
        """Services whose port is the authenticating proxy's: the service itself listens on its
        `backend` address and port (loopback)."""
        return [s for s in self.systemd_services() if s.backend]

    def listen_address(self, service: Service) -> tuple[str, int | None]:
        """Where the service's own process listens: its backend for a proxied one, else its port."""
        backend = service.backend
        if backend:
            return backend.bind, backend.port
        return service.bind, service.port

    def llama_server_settings(self, service: Service) -> LlamaServer:
        """The service's llama-server flags with the group's overrides laid over them."""
        return replace(service.settings.llama_server, **self.llama_server_overrides)

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
