"""Deploy timings, printed in one run (./kca bench):

- test host boot (a fresh `testhost down` + `up` from the cached root filesystem),
- the first deploy onto that fresh host, and the no-change re-run right after it,
- a baseline: pyinfra connecting and gathering facts with no operations (bench/baseline_deploy.py),
- the ratio no-change / baseline: what checking the whole stack costs over merely connecting.

Figures, not asserts: the machine's load decides them. Pass --keep-host to skip the fresh boot and
first deploy (then only the no-change run and the baseline are measured).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTHOST = ROOT / "testhost" / "testhost"
PYINFRA = [sys.executable, "-m", "pyinfra", "-y"]


def timed(command: list[str], label: str, capture_json: bool = False) -> tuple[float, dict | None]:
    print(f"--> {label}: {' '.join(str(c) for c in command)}", flush=True)
    started = time.monotonic()
    if capture_json:
        with tempfile.TemporaryFile() as out:
            subprocess.run(command, cwd=ROOT, check=True, stdout=out)
            out.seek(0)
            results = json.load(out)
    else:
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        results = None
    return time.monotonic() - started, results


def changed(results: dict | None) -> str:
    if not results or not results.get("results"):
        return "-"
    return str(results["results"]["totals"]["success"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-host", action="store_true", help="reuse the running, deployed test host")
    args = parser.parse_args()

    rows = []
    if not args.keep_host:
        subprocess.run([TESTHOST, "down"], check=True, stdout=subprocess.DEVNULL)
        boot, _ = timed([str(TESTHOST), "up"], "test host boot")
        rows.append(("test host boot (from the cached rootfs)", boot, "-"))
        first, results = timed([*PYINFRA, "--json", "inventory.py", "deploy.py"], "first deploy", True)
        rows.append(("first deploy", first, changed(results)))
    no_change, results = timed([*PYINFRA, "--json", "inventory.py", "deploy.py"], "no-change deploy", True)
    rows.append(("no-change deploy", no_change, changed(results)))
    baseline, results = timed(
        [*PYINFRA, "--json", "inventory.py", "bench/baseline_deploy.py"], "baseline (connect + facts)", True
    )
    rows.append(("baseline: connect and gather facts, no operations", baseline, changed(results)))

    print()
    print(f"{'step':55} {'seconds':>9} {'changed':>8}")
    for label, seconds, count in rows:
        print(f"{label:55} {seconds:9.1f} {count:>8}")
    print(f"{'ratio no-change / baseline':55} {no_change / baseline:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
