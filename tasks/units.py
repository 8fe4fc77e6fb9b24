"""systemd units for the host services, from one template; activation driven by change results."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyinfra.operations import server, systemd

from kca_stack import Service, Stack

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


def credentials_of(stack: Stack, service: Service) -> list[str]:
    secret = service.settings.get("api_key_secret")
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
    if not stack.firewall.get("enabled", False) or ipaddress.ip_address(bind).is_loopback:
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


def unit_file(stack: Stack, service: Service, spec: UnitSpec, source: str) -> ops.HostFile:
    """The service's unit file, rendered from the one template."""
    return ops.template(
        UNIT_TEMPLATE, f"{stack.paths['units']}/{service.unit}", **unit_context(stack, service, spec, source)
    )


def install_unit(stack: Stack, service: Service, spec: UnitSpec, source: str, extra: list[ops.HostFile] = ()):
    """Install the unit file (and `extra`, the files only this service reads: its code); returns the
    operation, whose change restarts the service."""
    what = "its unit" if not extra else f"its unit and {', '.join(f.dest.rsplit('/', 1)[-1] for f in extra)}"
    return ops.install_files(
        name=f"Install {service.unit} ({what})", files=[unit_file(stack, service, spec, source), *extra]
    )


def restart_triggers(service: Service, own: list, model_ops: dict[str, list]) -> list:
    """What restarts a service: its own operations (unit, binary, venv) and those that changed one of
    its own models."""
    return own + [op for model in service.models for op in model_ops.get(model, [])]


def activate(stack: Stack, services: list[Service], changed_ops: dict[str, list]) -> None:
    """Enable what starts at boot, start it, and restart a running service whose unit, binary or
    model changed. Services outside the boot scenario are left as the operator (or kca-gpu-switch)
    set them: the deploy never fights the GPU switch."""
    every_op = [op for ops_ in changed_ops.values() for op in ops_ if op is not None]
    systemd.daemon_reload(name="Reload systemd units", _if=lambda: ops.changed(every_op))
    wanted = []
    for service in services:
        at_boot = stack.starts_at_boot(service) and stack.runnable_here(service)
        wanted.append((service.unit, at_boot, True if at_boot else None))
    ops.units_running(
        name=f"Enable and start the boot scenario's units ({', '.join(s.name for s in services)})", units=wanted
    )
    for service in services:
        own = [op for op in changed_ops.get(service.name, []) if op is not None]
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
