"""Summarise pyinfra's `--json` results: how many operations changed the host, and which.

    pyinfra -y --json inventory.py deploy.py > results.json
    python tools/pyinfra_results.py results.json --expect-no-change

Exit 1 when --expect-no-change is given and anything changed or failed (a converged host must stay
quiet), or when the results are missing (the run stopped before executing).
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", help="file holding pyinfra's --json output")
    parser.add_argument("--expect-no-change", action="store_true")
    args = parser.parse_args()
    with open(args.results) as f:
        payload = json.load(f)
    results = payload.get("results")
    if not results:
        print("pyinfra produced no results: the run did not execute", file=sys.stderr)
        return 1
    totals = results["totals"]
    changed = [op["name"] for op in results["operations"] if op["success"]]
    failed = [op["name"] for op in results["operations"] if op["error"]]
    print(
        f"operations: {len(results['operations'])}, changed: {totals['success']}, "
        f"unchanged: {totals['no_change']}, failed: {totals['error']}"
    )
    for name in changed:
        print(f"  changed: {name}")
    for name in failed:
        print(f"  FAILED: {name}")
    if failed or (args.expect_no_change and changed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
