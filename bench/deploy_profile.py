"""Where a deploy spends its time: run pyinfra as `pyinfra -y inventory.py deploy.py` would, and count
every command it sends to the host (facts and operation commands) and the time each takes, by the
operation that sent it ("planning" for facts read while the deploy file is loaded).

    python bench/deploy_profile.py [--top 25] [--json out.json] [--group-data DIR] [deploy.py]

A no-change deploy's cost is mostly round trips: this tells which operations make them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deploy", nargs="?", default="deploy.py")
    parser.add_argument("--top", type=int, default=25, help="how many operations to list")
    parser.add_argument("--json", help="write every command's record to this file")
    parser.add_argument("--group-data", help="a folder of group files laid over the data")
    args = parser.parse_args()

    from pyinfra import context
    from pyinfra.api.host import Host
    from pyinfra_cli.main import main as pyinfra_main

    records: list[dict] = []
    marks: dict[str, float] = {"start": time.monotonic()}

    def label(host) -> str:
        op_hash = host.current_op_hash
        if op_hash is None:
            return "planning"
        return " | ".join(context.state.get_op_meta(op_hash).names) or op_hash

    def wrap(method_name: str, kind: str):
        original = getattr(Host, method_name)

        def timed(self, *a, **kw):
            started = time.monotonic()
            try:
                return original(self, *a, **kw)
            finally:
                command = a[0] if a else kw.get("command", "")
                records.append(
                    {
                        "op": label(self),
                        "kind": kind,
                        "stage": "execute" if context.state.is_executing else "prepare",
                        "command": str(getattr(command, "get_masked_value", lambda: command)())[:200],
                        "seconds": time.monotonic() - started,
                    }
                )

        setattr(Host, method_name, timed)

    wrap("run_shell_command", "command")
    wrap("put_file", "upload")

    extra = ["--group-data", args.group_data] if args.group_data else []
    sys.argv = ["pyinfra", "-y", *extra, "inventory.py", args.deploy]
    try:
        pyinfra_main()
    except SystemExit as done:
        code = done.code or 0
    else:
        code = 0
    wall = time.monotonic() - marks["start"]

    per_op: dict[str, list[float]] = defaultdict(list)
    for r in records:
        per_op[r["op"]].append(r["seconds"])
    spent = sum(r["seconds"] for r in records)
    prepare = [r for r in records if r["stage"] == "prepare"]
    ops = [op for op in per_op if op != "planning"]
    out = sys.stderr
    print(file=out)
    print(f"wall {wall:.1f} s; {len(records)} commands on the host taking {spent:.1f} s", file=out)
    print(f"  while planning: {len(prepare)} commands, {sum(r['seconds'] for r in prepare):.1f} s", file=out)
    print(f"  operations that sent a command: {len(ops)}", file=out)
    print(f"{'operation':90} {'cmds':>5} {'seconds':>8}", file=out)
    for op, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))[: args.top]:
        print(f"{op[:90]:90} {len(times):5} {sum(times):8.2f}", file=out)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
