"""Backups and restore: restic (Debian's package), the repository password from the operator, the
state declared in data rendered into kca-backup's configuration, a daily backup and a weekly check as
systemd timers, and a restore when one is asked for (backup.restore, or KCA_RESTORE for one run).

Two steps, because state comes back in two stages on a freshly built host:
- `deploy_backup`, before the secret generator: restic, the password, kca-backup, the timers, and a
  requested restore of every file (secrets, TLS, SQLite, uploads), so that no secret is generated anew;
- `before_services_start`, after the Docker engine and before Open WebUI and Dify: a restored database
  dump is loaded into its empty volume, and when a version pin changed (the Open WebUI tag, the Dify tag)
  the state that follows it is snapshotted before the new version migrates it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.operations import systemd

from kca_stack import Stack
from kca_stack.model import StateItem

from . import ops
from .images import image_ref

SOURCE = "tasks/backup.py"
SCRIPT = "/usr/local/sbin/kca-backup"
SCRIPT_SOURCE = "files/usr/local/sbin/kca-backup"
SERVICE_TEMPLATE = "templates/etc/systemd/system/kca-backup.service.j2"
TIMER_TEMPLATE = "templates/etc/systemd/system/kca-backup.timer.j2"
# The environment variables of a one-run restore (./kca restore sets them).
RESTORE_ENV = "KCA_RESTORE"
RESTORE_FORCE_ENV = "KCA_RESTORE_FORCE"


def config_path(stack: Stack) -> str:
    return f"{stack.backup.config_dir}/config.json"


def environment_path(stack: Stack) -> str:
    return f"{stack.backup.config_dir}/restic.env"


def state_entry(stack: Stack, item: StateItem) -> dict:
    """One state entry as kca-backup reads it: the data, plus where its container is for captures
    that go through Docker."""
    entry = {
        "name": item.name,
        "kind": item.kind,
        "capture": item.capture,
        "paths": list(item.paths),
        "databases": list(item.databases),
        "only": list(item.only),
        "exclude": list(item.exclude),
        "pin": item.pin,
        "restore_to": item.restore_to,
    }
    if item.owner and stack.services[item.owner].kind == "docker":
        service = stack.services[item.owner]
        entry["compose_project"] = service.compose_project
        entry["compose_service"] = service.settings.compose_service
    if item.kind == "postgresql":
        entry["postgresql"] = asdict(item.postgresql)
        # Where images cannot be pulled, the restore loads the dump with the image built on the host.
        image, _, tag = item.postgresql.image.partition(":")
        entry["postgresql"]["image"] = image_ref(stack, image, tag or "latest")
    return entry


def backup_config(stack: Stack) -> dict:
    """kca-backup's configuration: everything it needs, from the data (no secret in it)."""
    b = stack.backup
    return {
        "repository": b.repository,
        "password_file": b.password_file,
        "environment_file": environment_path(stack),
        "work_dir": b.work_dir,
        "secrets_dir": stack.paths["secrets"],
        "retention": dict(b.retention),
        "check_read_data_subset": b.check_read_data_subset,
        "pins": stack.pins(),
        "state": [state_entry(stack, item) for item in b.backed_up()],
    }


def command(stack: Stack, *args: str) -> str:
    """A kca-backup command line with this deploy's configuration."""
    return " ".join(shlex.quote(a) for a in (SCRIPT, "--config", config_path(stack), *args))


def restore_request(stack: Stack) -> tuple[str | None, bool]:
    """(snapshot or 'latest', forced) when a restore is asked for, from the environment or the data."""
    wanted = os.environ.get(RESTORE_ENV) or stack.backup.restore
    return wanted, os.environ.get(RESTORE_FORCE_ENV, "") not in ("", "0")


def units(stack: Stack) -> list[dict]:
    """The backup and the check: a oneshot service and a timer each."""
    b = stack.backup
    return [
        {
            "name": "kca-backup",
            "description": "kca backup of the server's state to the restic repository",
            "exec_start": command(stack, "backup", "--reason", "scheduled"),
            "schedule": b.schedule,
            "timeout_start": "6h",
            "randomized_delay": "30min",
        },
        {
            "name": "kca-backup-check",
            "description": "kca check of the restic repository",
            "exec_start": command(stack, "check"),
            "schedule": b.check_schedule,
            "timeout_start": "12h",
            "randomized_delay": "1h",
        },
    ]


def operator_value(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(
            f"{host.name}: {what} is not set. Fix: put {name}=... in production.env beside inventory.py "
            "(or export it); nothing was changed by this step."
        )
    return value


@deploy("Backups and restore (files)")
def deploy_backup(stack: Stack) -> None:
    b = stack.backup
    if b is None or not b.enabled:
        logger.info(f"{host.name}: backups are disabled (backup.enabled)")
        return

    ops.packages(name="Install restic", packages=["restic"])
    ops.directories(
        name=f"Create {b.config_dir} and {b.work_dir}",
        dirs=[ops.HostDirectory(path, "root", "root", "0700") for path in (b.config_dir, b.work_dir)],
    )
    # From the operator, never generated here: a server that dies must not take the only copy along.
    password = operator_value(b.password_env, "the backup repository password")
    credentials = "".join(f"{n}={operator_value(f'KCA_BACKUP_{n}', n)}\n" for n in b.credentials_env)
    ops.install_files(
        name="Install kca-backup, its configuration and the repository's password and credentials (from the operator)",
        files=[
            ops.HostFile(b.password_file, text=password + "\n", mode="0600"),
            ops.HostFile(environment_path(stack), text=credentials, mode="0600"),
            # The state entries of the data.
            ops.json_file(backup_config(stack), config_path(stack), mode="0600"),
            ops.HostFile(SCRIPT, src=SCRIPT_SOURCE, mode="0755"),
        ],
    )

    # The repository: created once. kca-backup refuses a wrong password rather than create a second one.
    ops.stamped(
        name="Open the backup repository (created when missing)",
        stamp=f"{b.work_dir}/repository",
        wanted=b.repository,
        commands=[command(stack, "init")],
        stream=True,
    )

    wanted, forced = restore_request(stack)
    if wanted:
        restore_files(
            name=f"Restore the state of snapshot {wanted} (files; databases load once Docker runs)",
            stack=stack,
            wanted=wanted,
            forced=forced,
        )

    unit_files = []
    for unit in units(stack):
        # The unit's name is its file's name, not a value of the template.
        context = {"source": SOURCE, **{k: v for k, v in unit.items() if k != "name"}}
        for suffix, template in ((".service", SERVICE_TEMPLATE), (".timer", TIMER_TEMPLATE)):
            unit_files.append(ops.template(template, f"{stack.paths['units']}/{unit['name']}{suffix}", **context))
    changed = ops.install_files(name="Install the backup units and timers", files=unit_files)
    systemd.daemon_reload(name="Reload systemd units (backup units changed)", _if=changed.did_change)
    ops.units_running(
        name="Enable and start the backup timers",
        units=[(f"{unit['name']}.timer", True, True) for unit in units(stack)],
    )


@operation()
def restore_files(stack: Stack, wanted: str, forced: bool):
    """Put back every file of the snapshot, before the secret generator and before any service starts.
    A request already carried out (restored.json names its snapshot) is not carried out again."""
    restored = (host.get_fact(ops.JsonFile, path=f"{stack.backup.work_dir}/restored.json") or {}).get("snapshot", "")
    if restored and (wanted == "latest" or restored.startswith(wanted)):
        logger.info(
            f"{host.name}: already restored from snapshot {restored[:8]}; remove backup.restore / {RESTORE_ENV} "
            "to stop asking"
        )
        host.noop(f"restored from snapshot {restored[:8]}")
        return
    yield from ops.shell_commands(
        [command(stack, "restore", wanted, "--phase", "files", *(["--force"] if forced else []))], stream=True
    )


@deploy("Backups and restore (before the applications start)")
def before_services_start(stack: Stack) -> None:
    b = stack.backup
    if b is None or not b.enabled:
        return
    # Guarded on the host: a dump restored by this very run is found when this runs.
    ops.shell_unless(
        name="Load restored database dumps into their empty volumes",
        done=f'[ -z "$(ls {b.work_dir}/pending 2>/dev/null)" ]',
        commands=[command(stack, "restore", "--phase", "databases")],
        stream=True,
    )
    snapshot_before_start(
        name="Snapshot the state whose version pin changed, before the new version starts", stack=stack
    )


@operation()
def snapshot_before_start(stack: Stack):
    """When the pins the running versions recorded differ from the data's: snapshot first."""
    if host.get_fact(ops.JsonFile, path=f"{stack.backup.work_dir}/pins.json") == stack.pins():
        host.noop("the version pins have not changed")
        return
    yield from ops.shell_commands([command(stack, "before-start")], stream=True)
