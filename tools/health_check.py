"""Post-deploy check: a table of every service's health, from this machine, with requests.

    python tools/health_check.py [--group testhost|production] [--target user@address]

Without arguments it checks the target inventory.py selects (the test host unless production is set).

External services are asked directly at the target's address, internal ones through an SSH tunnel to
the host's loopback. Each row: the unit's state on the host (active, inactive, skipped: condition
unmet) or the compose project, GET /health (a compose service without a health path: whether the host
listens on its port), the answer time. Then one row per LLM back end of Open WebUI: whether the key
Open WebUI holds for it is accepted (a wrong key silently drops that back end's models from its list).
Exit 1 when a service that should run does not answer, or Open WebUI's key for a running back end is
rejected. Secrets are read on the host into memory and never printed.

The last row is the backups': the age of the last snapshot, red (and exit 1) when the backup or the
weekly check failed, or when the last snapshot is older than backup.max_age_hours.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from tasks.base import mounts_needed_by  # noqa: E402
from testhost import contract  # noqa: E402
from tools.reach import Tunnels, ssh_args  # noqa: E402


def host_state(ssh_target: list[str], units: list[str], mountpoint: str) -> tuple[dict[str, str], set[int], bool]:
    """Each unit's active state, the TCP ports something listens on, and whether `mountpoint` is missing
    (the host's fstab names a filesystem for it and none is mounted there), in one ssh round trip."""
    where = shlex.quote(mountpoint)
    script = "; ".join(f"echo unit {u} $(systemctl is-active {u})" for u in units)
    script += f"; awk -v m={where} '$2 == m {{ f = 1 }} END {{ exit !f }}' /etc/fstab"
    script += f" && ! findmnt -n {where} >/dev/null && echo missing; ss -Htln"
    out = subprocess.run(["ssh", *ssh_target, script], capture_output=True, text=True, check=True).stdout
    states, listening, missing = {}, set(), False
    for line in out.splitlines():
        fields = line.split()
        if fields[:1] == ["unit"]:
            states[fields[1]] = fields[2] if len(fields) > 2 else "unknown"
        elif fields == ["missing"]:
            missing = True
        elif len(fields) >= 4:
            listening.add(int(fields[3].rsplit(":", 1)[1]))
    return states, listening, missing


def env_value(ssh_target: list[str], path: str, key: str) -> str:
    """One KEY=value of a root-only env file on the host (kept in memory, never printed)."""
    command = f"sed -n {shlex.quote('s/^' + key + '=//p')} {shlex.quote(path)}"
    done = subprocess.run(["ssh", *ssh_target, command], capture_output=True, text=True)
    return done.stdout.strip()


def backup_row(ssh_target: list[str], stack) -> tuple[str, str, bool]:
    """(state, health, problem) of the backups, from the host's own records: no repository access."""
    b = stack.backup
    script = (
        f"/usr/local/sbin/kca-backup --config {b.config_dir}/config.json status; echo '@@'; "
        "systemctl is-active kca-backup.service kca-backup-check.service; echo '@@'; "
        "since=$(systemctl show -p ActiveEnterTimestamp --value kca-backup.timer); "
        'echo $(( $(date +%s) - $(date -d "$since" +%s 2>/dev/null || date +%s) ))'
    )
    out = subprocess.run(["ssh", *ssh_target, script], capture_output=True, text=True).stdout
    return backup_health(out, b.max_age_hours)


def backup_health(out: str, max_age_hours: float) -> tuple[str, str, bool]:
    """Read `kca-backup status`, the two units' states and the timer's age (seconds), split by '@@'."""
    parts = out.split("@@")
    if len(parts) != 3:
        return "not installed", "-", True
    try:
        report = json.loads(parts[0])
    except json.JSONDecodeError:
        return "not installed", "-", True
    failed = "failed" in parts[1].split()
    timer_age_hours = int(parts[2].strip() or 0) / 3600
    if report.get("last_check") and not report["last_check"].get("ok"):
        return "check failed", report["last_check"].get("message", "")[:40], True
    if failed:
        return "failed", "see journalctl -u kca-backup", True
    if report.get("age_hours") is None:
        # A new host has no snapshot until the timer's first run.
        return "active", "no snapshot yet", timer_age_hours > max_age_hours
    age = report["age_hours"]
    return "active", f"{age:.1f} h old", age > max_age_hours


def probe_http(address: str, port: int, path: str = "/health", key: str | None = None) -> tuple[str, float]:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    try:
        status = requests.get(f"http://{address}:{port}{path}", headers=headers, timeout=5).status_code
        answer = {200: "HTTP 200", 401: "key rejected"}.get(status, f"HTTP {status}")
    except requests.RequestException:
        answer = "no answer"
    return answer, time.monotonic() - started


def compose_project_runs(stack, project: str) -> bool:
    """Whether this host starts the compose project: its images can be pulled or built here."""
    if project == stack.services[stack.openwebui["service"]].compose_project:
        return stack.docker["pull_images"] or bool(stack.openwebui.get("local_build"))
    return stack.docker["pull_images"] and stack.dify.get("source") != "unavailable"


def standin_of(stack) -> str | None:
    """The service a stand-in runs for where its own images cannot be pulled (dify.database_standin)."""
    standin = stack.dify.get("database_standin")
    return standin["service"] if standin and not stack.docker["pull_images"] else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", help="whose data describes the target (default: the inventory's target)")
    parser.add_argument("--target", help="user@address (default: the inventory's target)")
    args = parser.parse_args()
    if args.group is None or args.target is None:
        import inventory

        group, user, address = inventory.target()
        args.group = args.group or group
        args.target = args.target or f"{user}@{address}"
    stack = build_stack(group_data(args.group))
    target = ssh_args(args.target, contract.instance())
    address = args.target.split("@")[-1]
    services = [s for s in stack.services.values() if s.port]
    fs = stack.models_filesystem
    states, listening, models_missing = host_state(target, [s.unit for s in services if s.unit], fs.mountpoint)
    # A models disk that is dead or missing (the host's fstab names it, nothing is mounted): the units that
    # read from it fail on RequiresMountsFor=, and the table says so rather than leave it to the journal.
    if models_missing:
        print(f"{fs.mountpoint} is not mounted, though /etc/fstab names a filesystem for it: the services that")
        print("read from it cannot start; check the disk (lsblk, journalctl -b), then reboot")
    tunnels = Tunnels(target)

    def reach(service, path="/health", key=None):
        if service.exposure == "external":
            return probe_http(address, service.port, path, key)
        return probe_http("127.0.0.1", tunnels.local_port(service.port), path, key)

    problems = 0
    print(f"{'service':20} {'unit / project':34} {'port':>5} {'exposure':9} {'state':17} {'health':12} {'ms':>6}")
    try:
        for s in services:
            gpu_missing = not stack.runnable_here(s)
            health_path = getattr(s.settings, "health_path", None)
            if not s.is_systemd and standin_of(stack) == s.name:
                # A real server stands in for it (no HTTP health of its own): it must listen.
                state, should_answer = f"stand-in {s.compose_project}", False
                problems += s.port not in listening
            elif not s.is_systemd:
                runs = compose_project_runs(stack, s.compose_project)
                state = f"compose {s.compose_project}" if runs else "not started here"
                should_answer = runs and bool(health_path)
            else:
                state = "skipped (no GPU)" if gpu_missing else states.get(s.unit, "unknown")
                if state != "active" and models_missing and mounts_needed_by(stack, s):
                    state = f"{state} (no {fs.mountpoint})"
                should_answer = stack.starts_at_boot(s) and not gpu_missing
            if not s.is_systemd and not (should_answer and s.port in listening):
                # No HTTP health of their own: whether the host listens on the port says enough.
                answer, seconds = ("listening" if s.port in listening else "not listening"), 0.0
            elif s.is_systemd and state != "active":
                answer, seconds = "-", 0.0
            else:
                answer, seconds = reach(s, health_path or "/health")
            if should_answer and answer != "HTTP 200":
                problems += 1
            print(
                f"{s.name:20} {(s.unit or s.compose_project):34} {s.port:>5} {s.exposure:9} {state:17} "
                f"{answer:12} {seconds * 1000:6.0f}"
            )
        problems += openwebui_keys(stack, target, states, reach)
    finally:
        tunnels.close()
    if stack.backup is not None and stack.backup.enabled:
        state, health, problem = backup_row(target, stack)
        problems += problem
        row = f"{'backup':20} {'kca-backup.timer':34} {'-':>5} {'-':9} {state:17} {health:12} {'':>6}"
        # Red where a terminal shows it; FAILED in the text for logs.
        if problem:
            row = f"\033[31m{row} FAILED\033[0m" if sys.stdout.isatty() else f"{row} FAILED"
        print(row)
    print(f"{problems} problem(s): see the rows above" if problems else "every service that should answer does")
    return 1 if problems else 0


def openwebui_keys(stack, target, states, reach) -> int:
    """Open WebUI's key for each running LLM back end, asked of that back end (GET /v1/models)."""
    webui = stack.services[stack.openwebui["service"]]
    if not compose_project_runs(stack, webui.compose_project):
        return 0
    keys = env_value(target, stack.openwebui["env_file"], "OPENAI_API_KEYS").split(";")
    backends = stack.llm_backends()
    problems = 0
    for backend, key in zip(backends, keys, strict=False):
        if states.get(backend.unit) != "active":
            continue
        answer, seconds = reach(backend, "/v1/models", key)
        verdict = "key ok" if answer == "HTTP 200" else answer
        if answer != "HTTP 200":
            problems += 1
        label = f"open-webui -> {backend.name}"
        print(f"{label:55} {backend.port:>5} {'':9} {'back end':17} {verdict:12} {seconds * 1000:6.0f}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
