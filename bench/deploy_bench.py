"""Deploy timings, printed in one run (./kca bench):

- test host boot (a fresh `testhost down` + `up` from the cached root filesystem),
- the first deploy onto that fresh host, and the no-change re-run right after it,
- a baseline: pyinfra connecting and gathering facts with no operations (bench/baseline_deploy.py),
- the ratio no-change / baseline: what checking the whole stack costs over merely connecting.

Figures, not asserts: the machine's load decides them. Pass --keep-host to skip the fresh boot and
first deploy (then only the no-change run and the baseline are measured).

`--compare OTHER_CHECKOUT` measures instead the no-change deploy of another checkout of this
repository (an older commit: `git worktree add --detach /tmp/before main`) against this one, on the
same converged host, in turns (other, this, other, this, ...; --runs of each), and prints each run's
time, operation count and changes, then the medians. Both must report 0 changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTHOST = ROOT / "testhost" / "testhost"
PYINFRA = [sys.executable, "-m", "pyinfra", "-y"]


def timed(command: list[str], label: str, capture_json: bool = False, cwd: Path = ROOT) -> tuple[float, dict | None]:
    print(f"--> {label}: {' '.join(str(c) for c in command)}", flush=True)
    started = time.monotonic()
    if capture_json:
        with tempfile.TemporaryFile() as out:
            subprocess.run(command, cwd=cwd, check=True, stdout=out)
            out.seek(0)
            results = json.load(out)
    else:
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        results = None
    return time.monotonic() - started, results


def changed(results: dict | None) -> str:
    if not results or not results.get("results"):
        return "-"
    return str(results["results"]["totals"]["success"])


def operations(results: dict | None) -> str:
    if not results or not results.get("results"):
        return "-"
    return str(len(results["results"]["operations"]))


def compare(other: Path, runs: int, group_data: Path | None = None) -> int:
    """The no-change deploy of `other` and of this checkout, in turns, on the same host. `group_data`:
    a folder of group files laid over both checkouts' data (`deploy_layers = ["base", "llm"]`, say)."""
    extra = ["--group-data", str(group_data)] if group_data else []
    checkouts = [(f"{other.name} ({git_head(other)})", other), (f"this ({git_head(ROOT)})", ROOT)]
    rows = []
    for run in range(1, runs + 1):
        for label, checkout in checkouts:
            seconds, results = timed(
                [*PYINFRA, *extra, "--json", "inventory.py", "deploy.py"], f"{label}, run {run}", True, cwd=checkout
            )
            rows.append((label, run, seconds, operations(results), changed(results)))
    print()
    print(f"{'checkout':40} {'run':>4} {'seconds':>8} {'operations':>11} {'changed':>8}")
    for label, run, seconds, ops, count in rows:
        print(f"{label:40} {run:4} {seconds:8.1f} {ops:>11} {count:>8}")
    for label, _ in checkouts:
        times = [seconds for row_label, _, seconds, _, _ in rows if row_label == label]
        print(f"{label:40} {'median':>4} {statistics.median(times):8.1f}")
    return 1 if any(count != "0" for *_, count in rows) else 0


def git_head(checkout: Path) -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return found.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-host", action="store_true", help="reuse the running, deployed test host")
    parser.add_argument("--compare", type=Path, help="another checkout whose no-change deploy to measure beside")
    parser.add_argument("--runs", type=int, default=3, help="with --compare: runs of each")
    parser.add_argument("--group-data", type=Path, help="with --compare: group files laid over the data")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare.resolve(), args.runs, args.group_data.resolve() if args.group_data else None)

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
