"""Post-deploy check: a table of every service's health, from this machine, with requests.

    python tools/health_check.py [--group testhost|production] [--target user@address]

Without arguments it checks the target inventory.py selects (the test host unless production is set).

External services are asked directly at the target's address, internal ones through an SSH tunnel to
the host's loopback. Each row: the unit's state on the host (active, inactive, skipped: condition
unmet), GET /health (for a compose service: whether the host listens on its port), the answer time.
Exit 1 when a service that should run at boot does not answer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from testhost import contract  # noqa: E402
from tools.reach import Tunnels, ssh_args  # noqa: E402


def host_state(ssh_target: list[str], units: list[str]) -> tuple[dict[str, str], set[int]]:
    """Each unit's active state and the TCP ports something listens on, in one ssh round trip."""
    script = "; ".join(f"echo unit {u} $(systemctl is-active {u})" for u in units) + "; ss -Htln"
    out = subprocess.run(["ssh", *ssh_target, script], capture_output=True, text=True, check=True).stdout
    states, listening = {}, set()
    for line in out.splitlines():
        fields = line.split()
        if fields[:1] == ["unit"]:
            states[fields[1]] = fields[2] if len(fields) > 2 else "unknown"
        elif len(fields) >= 4:
            listening.add(int(fields[3].rsplit(":", 1)[1]))
    return states, listening


def probe_http(address: str, port: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        answer = f"HTTP {requests.get(f'http://{address}:{port}/health', timeout=5).status_code}"
    except requests.RequestException:
        answer = "no answer"
    return answer, time.monotonic() - started


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
    states, listening = host_state(target, [s.unit for s in services if s.unit])
    tunnels = Tunnels(target)
    problems = 0
    print(f"{'service':20} {'unit / project':34} {'port':>5} {'exposure':9} {'state':17} {'health':12} {'ms':>6}")
    try:
        for s in services:
            gpu_missing = not stack.runnable_here(s)
            if not s.is_systemd:
                state = f"compose {s.compose_project}"
            else:
                state = "skipped (no GPU)" if gpu_missing else states.get(s.unit, "unknown")
            should_answer = s.is_systemd and stack.starts_at_boot(s) and not gpu_missing
            if not s.is_systemd:
                # No HTTP health of their own here: whether the host listens on the port says enough.
                answer, seconds = ("listening" if s.port in listening else "not listening"), 0.0
            elif state != "active":
                answer, seconds = "-", 0.0
            elif s.exposure == "external":
                answer, seconds = probe_http(address, s.port)
            else:
                answer, seconds = probe_http("127.0.0.1", tunnels.local_port(s.port))
            if should_answer and answer != "HTTP 200":
                problems += 1
            print(
                f"{s.name:20} {(s.unit or s.compose_project):34} {s.port:>5} {s.exposure:9} {state:17} "
                f"{answer:12} {seconds * 1000:6.0f}"
            )
    finally:
        tunnels.close()
    print(f"{problems} service(s) that should answer did not" if problems else "every boot service answers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
