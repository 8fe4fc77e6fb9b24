"""The fault-injection table's machinery: cut the real deploy at a named point, re-run it, prove the
host converged, and the table itself (fault, how it was injected, what converged means, result, time).

A cut is what a power cut or a dropped link leaves: the local pyinfra is SIGKILLed with its whole
process group, and on the target every process the deploy's SSH sessions started is SIGKILLed at
once (tests/faults/cut.py, which also waits on the target for the point to be reached, so the cut
lands within ~50 ms of it). Daemons keep what they were doing, as they would after a dropped link."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUT_SCRIPT = (Path(__file__).parent / "cut.py").read_text()
LOGS = Path(os.environ.get("KCA_CACHE_DIR", "/var/cache/kca-ai-infra")) / "logs" / "faults"


@dataclass
class Row:
    fault: str
    injected: str
    converged: str
    result: str = "not run"
    seconds: float = 0.0
    # What the cut found on the host (which state a container was in, say).
    seen: str = ""


# Filled by the tests (the row fixture), in the order they run; printed at the end.
TABLE: dict[str, Row] = {}

# Rows of the table proved by tests that run in another stage of the suite: named, not run twice.
ELSEWHERE = [
    (
        "truncated download (a clean close mid-file, a reset, a complete .part answered with 416)",
        "tests/unit/test_fetch_model.py: test_a_body_that_stops_short_on_a_clean_close_is_resumed_not_renamed, "
        "test_a_hub_that_keeps_stopping_short_leaves_a_part_the_next_run_resumes, "
        "test_a_reset_connection_is_resumed_in_the_same_run, test_416_on_a_complete_part_is_verified_and_done, "
        "test_a_truncated_file_with_only_a_size_is_never_recorded (unit tests)",
    ),
    (
        "ruleset missing (or refused by nft) at boot",
        "tests/host/test_firewall_boot.py::test_nothing_listens_beyond_loopback_without_the_ruleset[missing] "
        "and [broken] (host tests): the firewall unit fails, no guarded unit starts, nothing listens beyond "
        "loopback; restored, everything runs again",
    ),
]

# --- the target -------------------------------------------------------------------------------------


class Target:
    """The deployed test host: commands over SSH, deploys from this checkout."""

    def __init__(self, instance):
        self.ssh = ["ssh", "-F", str(instance.ssh_config), instance.machine]
        # One folder per test host: several may run the table side by side on one machine.
        self.logs = LOGS / instance.machine
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, command: str, check: bool = True) -> str:
        done = subprocess.run([*self.ssh, command], capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            raise AssertionError(f"on the target: {command!r} failed ({done.returncode}): {done.stderr[-1500:]}")
        return done.stdout.strip()

    def digest(self, paths: str) -> str:
        """One sha256 per file of `paths` (a shell glob), compared and never printed."""
        return self.run(f"sha256sum {paths} 2>/dev/null | sort -k2 || true", check=False)

    def cut_deploy(self, name: str, check: str, timeout: float = 900) -> str:
        """Deploy until `check` (run on the target every 50 ms) succeeds and prints something, then cut.
        Returns what the check printed. Fails when the deploy ends before the point is reached."""
        log = self.logs / f"{name}-cut.log"
        watcher = subprocess.Popen(
            [*self.ssh, "python3", "-", _quote(check), str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watcher.stdin.write(CUT_SCRIPT)
        watcher.stdin.close()
        time.sleep(0.5)  # the watcher is connected before the deploy starts
        with log.open("w") as out:
            deploy = subprocess.Popen(
                ["pyinfra", "-y", "inventory.py", "deploy.py"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                while watcher.poll() is None:
                    if deploy.poll() is not None:
                        raise AssertionError(
                            f"the deploy ended ({deploy.returncode}) before the point {check!r} was reached; see {log}"
                        )
                    time.sleep(0.02)
            finally:
                # The local side of the cut: pyinfra and its SSH connection, at once.
                if deploy.poll() is None:
                    os.killpg(deploy.pid, signal.SIGKILL)
                deploy.wait()
                if watcher.poll() is None:
                    watcher.kill()
        said = watcher.stdout.read()
        (self.logs / f"{name}-cut.txt").write_text(said + watcher.stderr.read())
        first = said.splitlines()[0] if said else ""
        assert first.startswith("CUT "), f"the cut did not happen: {said or 'no output'}; see {log}"
        return first[4:]

    def deploy(self, name: str) -> dict:
        """A whole deploy; returns pyinfra's --json results. It must succeed."""
        log, results = self.logs / f"{name}.log", self.logs / f"{name}.json"
        with log.open("w") as err, results.open("w") as out:
            done = subprocess.run(
                ["pyinfra", "-y", "--json", "inventory.py", "deploy.py"], cwd=ROOT, stdout=out, stderr=err
            )
        assert done.returncode == 0, f"the deploy failed ({done.returncode}): {log.read_text()[-3000:]}"
        return json.loads(results.read_text())["results"]

    def deploy_expecting_no_change(self, name: str) -> None:
        """A further deploy changes nothing (tools/pyinfra_results.py --expect-no-change)."""
        self.deploy(name)
        check = subprocess.run(
            [sys.executable, "tools/pyinfra_results.py", str(self.logs / f"{name}.json"), "--expect-no-change"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, f"the deploy after the recovery changed the host:\n{check.stdout}"


def changed(results: dict) -> list[str]:
    return [op["name"] for op in results["operations"] if op["success"]]


def _quote(text: str) -> str:
    """One argument for the remote shell."""
    return "'" + text.replace("'", "'\\''") + "'"
