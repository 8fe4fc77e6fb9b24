"""LLM layer timings on the (deployed) test host, printed in one run:

- the deploy's llama.cpp build (build id removed, then `pyinfra` re-run: fetch, configure, build,
  install, restarts) against a plain `cmake` build of the same tree with the same flags and the same
  compiler cache; the ratio is the deploy's overhead;
- the no-change re-run right after it;
- a GPU switch between the first two large models that can run on the host (on the test host, those
  whose units do not need the GPU), as kca-gpu-switch reports it.

Figures, not asserts. Needs a deployed test host (./kca deploy).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from tasks.llama_cpp import layout  # noqa: E402

SSH = [str(ROOT / "testhost" / "testhost"), "ssh"]


def on_host(command: str) -> str:
    return subprocess.run([*SSH, command], check=True, capture_output=True, text=True).stdout


def timed(label: str, command: list[str]) -> float:
    print(f"--> {label}", flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    stack = build_stack(group_data("testhost"))
    where = layout(stack)
    flags = " ".join(shlex.quote(f) for f in stack.llama_cmake_flags())
    targets = " ".join(f"-t {t}" for t in stack.llama_cpp.targets)
    pyinfra = [sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"]

    plain = (
        "export CCACHE_DIR=/var/cache/ccache; rm -rf /tmp/plain-build && "
        f"cmake -S {where['src']} -B /tmp/plain-build {flags} >/dev/null && "
        f"cmake --build /tmp/plain-build -j $(nproc) {targets} >/dev/null && rm -rf /tmp/plain-build"
    )
    plain_s = timed("plain cmake build of the same tree and flags", [*SSH, plain])
    on_host(f"rm -f {where['build_id']}")
    deploy_s = timed("deploy with a rebuild (build id removed)", pyinfra)
    no_change_s = timed("no-change deploy", pyinfra)

    large = [s.name for s in stack.large_services() if not stack.unit_needs_gpu(s)][:2]
    on_host(f"kca-gpu-switch {large[0]}")
    out = subprocess.run([*SSH, f"kca-gpu-switch {large[1]}"], capture_output=True, text=True).stdout
    match = re.search(r"switched to .* in ([0-9.]+) s", out)
    on_host(f"kca-gpu-switch {stack.gpu.boot_scenario}")

    print()
    print(f"{'measure':58} {'seconds':>9}")
    print(f"{'plain cmake build (configure + build)':58} {plain_s:9.1f}")
    print(f"{'deploy with a llama.cpp rebuild (whole pyinfra run)':58} {deploy_s:9.1f}")
    print(f"{'ratio deploy / plain':58} {deploy_s / plain_s:9.2f}")
    print(f"{'no-change deploy':58} {no_change_s:9.1f}")
    switch = f"switch {large[0]} -> {large[1]} (stop, start, /health)"
    print(f"{switch:58} {float(match.group(1)) if match else float('nan'):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
