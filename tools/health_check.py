"""Post-deploy check: a table of every service's health, from this machine, with requests.

    python tools/health_check.py [--group testhost|production] [--target user@address]

External services are asked directly at the target's address, internal ones through an SSH tunnel to
the host's loopback. Each row: the unit's state on the host (active, inactive, skipped: condition
unmet), GET /health (or a TCP connect for services without HTTP health), and the answer time.
Exit 1 when a service that should run at boot does not answer.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from kca_stack.reach import TESTHOST_ADDRESS, Tunnels, ssh_args  # noqa: E402

TESTHOST_KEY = Path(os.environ.get("KCA_STATE_DIR", "/var/lib/kca-testhost")) / "ssh" / "id_ed25519"


def unit_states(ssh_target: list[str], units: list[str]) -> dict[str, str]:
    """active / inactive / skipped (condition unmet) for each unit, in one ssh round trip."""
    script = "; ".join(
        f"echo {u} $(systemctl is-active {u}) $(systemctl show -p ConditionResult --value {u})" for u in units
    )
    out = subprocess.run(["ssh", *ssh_target, script], capture_output=True, text=True, check=True).stdout
    states = {}
    for line in out.splitlines():
        unit, active, condition = (line.split() + ["", ""])[:3]
        states[unit] = "skipped (no GPU)" if active != "active" and condition == "no" else active
    return states


def probe(address: str, port: int, http: bool) -> tuple[str, float]:
    started = time.monotonic()
    try:
        if http:
            response = requests.get(f"http://{address}:{port}/health", timeout=5)
            answer = f"HTTP {response.status_code}"
        else:
            with socket.create_connection((address, port), timeout=3):
                answer = "TCP open"
    except (requests.RequestException, OSError):
        answer = "no answer"
    return answer, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", default="testhost")
    parser.add_argument("--target", default=f"root@{TESTHOST_ADDRESS}")
    args = parser.parse_args()
    stack = build_stack(group_data(args.group))
    target = ssh_args(args.target, TESTHOST_KEY)
    address = args.target.split("@")[-1]
    services = [s for s in stack.services.values() if s.port]
    states = unit_states(target, [s.unit for s in services if s.unit])
    tunnels = Tunnels(target)
    problems = 0
    print(f"{'service':20} {'unit / project':34} {'port':>5} {'exposure':9} {'state':17} {'health':12} {'ms':>6}")
    try:
        for s in services:
            state = states.get(s.unit, "-") if s.unit else f"compose {s.compose_project}"
            should_answer = s.is_systemd and stack.starts_at_boot(s) and not state.startswith("skipped")
            if s.is_systemd and state != "active":
                answer, seconds = "-", 0.0
            elif s.exposure == "external":
                answer, seconds = probe(address, s.port, s.is_systemd)
            else:
                answer, seconds = probe("127.0.0.1", tunnels.local_port(s.port), s.is_systemd)
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
