"""systemd units for the host services, from one template; activation driven by change results."""

from __future__ import annotations

import importlib
import ipaddress
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from kca_stack import Service, Stack
from kca_stack.kinds import KINDS, Kind, kinds_of_layer

from . import ops
from .base import mounts_needed_by
from .firewall import UNIT as FIREWALL_UNIT

UNIT_TEMPLATE = "templates/etc/systemd/system/kca-service.service.j2"


@dataclass
class UnitSpec:
    """What differs between the units of the kinds: built in Python, rendered by one template."""

    exec_start: str
    environment: list[tuple[str, str]] = field(default_factory=list)
    extra_directives: list[str] = field(default_factory=list)
    restart_sec: int = 5
    timeout_start: int = 600


def task(name: str) -> Callable:
    """A task function named "module:function" by the kind registry (kca_stack.kinds)."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def unit_spec(stack: Stack, service: Service) -> UnitSpec:
    """The spec of the service's unit, from the function its kind names."""
    return task(KINDS[service.kind].unit_spec)(stack, service)


def source_of(kind: Kind) -> str:
    """The module that builds the kind's unit, named in the unit's header."""
    return kind.unit_spec.partition(":")[0].replace(".", "/") + ".py"


def credentials_of(stack: Stack, service: Service) -> list[str]:
    secret = service.api_key_secret
    return [f"{secret}:{stack.paths['secrets']}/{secret}"] if secret else []


def conditions_of(stack: Stack, service: Service) -> list[str]:
    conditions = []
    if stack.unit_needs_gpu(service):
        # No GPU, no start: systemd skips the unit cleanly instead of crash-looping.
        conditions.append(f"ConditionPathExists={stack.gpu.device_node}")
    return conditions


def firewall_unit_of(stack: Stack, service: Service) -> str | None:
    """The firewall's unit, for a service that listens beyond loopback while the firewall is on."""
    bind, _ = stack.listen_address(service)
    if not stack.firewall.enabled or ipaddress.ip_address(bind).is_loopback:
        return None
    return FIREWALL_UNIT


def unit_context(stack: Stack, service: Service, spec: UnitSpec, source: str) -> dict:
    """Everything the unit template needs: the data of one service, computed here, not in Jinja."""
    return {
        "source": source,
        "title": service.title,
        "kind": service.kind,
        "port": service.port,
        "exposure": service.exposure,
        "description": f"kca {service.title} ({service.kind}, port {service.port})",
        "conditions": conditions_of(stack, service),
        # The models disk, when the service reads from it: without the disk, the unit fails cleanly.
        "requires_mounts_for": mounts_needed_by(stack, service),
        "listen": "{}:{}".format(*stack.listen_address(service)),
        "firewall_unit": firewall_unit_of(stack, service),
        "conflicts": [other.unit for other in stack.conflicts_of(service)],
        # Not `user`: ops.template takes that as the file's owner.
        "service_user": stack.user_of(service).name,
        "environment": spec.environment,
        "credentials": credentials_of(stack, service),
        "exec_start": spec.exec_start,
        "restart_sec": spec.restart_sec,
        "timeout_start": spec.timeout_start,
        "extra_directives": spec.extra_directives,
        "hardening": stack.hardening_of(service),
    }


def install_unit(stack: Stack, service: Service, spec: UnitSpec, source: str):
    """Render the unit file; returns the operation (its change restarts the service)."""
    return ops.install_files(
        name=f"Install {service.unit}",
        files=[
            ops.template(
                UNIT_TEMPLATE, f"{stack.paths['units']}/{service.unit}", **unit_context(stack, service, spec, source)
            )
        ],
    )


class Restarts:
    """What restarts each service: every operation registered for it, by whichever task made it (its
    unit, its binary or venv, its code, its models). One tracker for the whole deploy; `activate`
    restarts a running service when one of its operations changed something."""

    def __init__(self) -> None:
        self.ops: dict[str, list] = defaultdict(list)

    def add(self, service: str, *ops) -> None:
        self.ops[service].extend(op for op in ops if op is not None)

    def add_models(self, stack: Stack, model_ops: dict[str, list]) -> None:
        """Operations by model name: each restarts the services that serve that model."""
        for service in stack.services.values():
            for model in service.models:
                self.add(service.name, *model_ops.get(model, []))

    def of(self, service: str) -> list:
        return self.ops.get(service, [])


def _as_list(result) -> list:
    if result is None:
        return []
    return list(result) if isinstance(result, (list, tuple)) else [result]


# How the operations of a layer's services are titled in pyinfra's output.
LAYER_TITLES = {"llm": "LLM services", "support": "Support services"}


def deploy_services(stack: Stack, layer: str, restarts: Restarts) -> list[Service]:
    """Every systemd service of the layer's kinds, kind by kind as the registry names them: what the
    kind needs once (`prepare`), what each service needs (`install`), and its unit. Returns the
    services installed; their restart triggers go to `restarts`."""

    @deploy(LAYER_TITLES.get(layer, f"{layer} services"))
    def install(stack: Stack) -> list[Service]:
        installed = []
        for kind in kinds_of_layer(layer):
            services = stack.services_of_kind(kind.name)
            if not kind.systemd or not services:
                continue
            shared = _as_list(task(kind.prepare)(stack=stack)) if kind.prepare else []
            for service in services:
                restarts.add(service.name, *shared)
                if kind.install:
                    restarts.add(service.name, *_as_list(task(kind.install)(stack, service)))
                spec = task(kind.unit_spec)(stack, service)
                restarts.add(service.name, install_unit(stack, service, spec, source_of(kind)))
            installed += services
        return installed

    return install(stack=stack)


def layer_kinds(layer: str) -> tuple[str, ...]:
    return tuple(kind.name for kind in kinds_of_layer(layer))


def activate(stack: Stack, services: list[Service], restarts: Restarts) -> None:
    """Enable what starts at boot, start it, and restart a running service whose unit, binary or
    model changed. Services outside the boot scenario are left as the operator (or kca-gpu-switch)
    set them: the deploy never fights the GPU switch."""
    if not services:
        return
    every_op = [op for service in services for op in restarts.of(service.name)]
    systemd.daemon_reload(name="Reload systemd units", _if=lambda: ops.changed(every_op))
    wanted = []
    for service in services:
        at_boot = stack.starts_at_boot(service) and stack.runnable_here(service)
        wanted.append((service.unit, at_boot, True if at_boot else None))
    ops.units_running(
        name=f"Enable and start the boot scenario's units ({', '.join(s.name for s in services)})", units=wanted
    )
    for service in services:
        own = restarts.of(service.name)
        if own:
            # try-restart decides on the host, at that moment: a stopped unit stays stopped (a plain
            # restart would start it, and its Conflicts= would stop what shares the GPU).
            server.shell(
                name=f"Restart {service.unit} if running (its unit, binary or model changed)",
                commands=[f"systemctl try-restart {service.unit}"],
                _if=_any_changed(own),
            )


def _any_changed(ops_: list):
    return lambda: ops.changed(ops_)
