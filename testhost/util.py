"""Small helpers shared by the backends: logging with the time, commands that fail loudly, host packages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class TesthostError(Exception):
    """A failure the command reports in one line (plus context) and exits 1 on."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: Sequence[object], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit raises TesthostError with the command and its stderr tail."""
    kwargs.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run([str(a) for a in args], **kwargs)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-2000:] if isinstance(done.stderr, bytes) else ""
        raise TesthostError(f"{' '.join(str(a) for a in args)} exited {done.returncode}\n{detail}".rstrip())
    return done


def quiet(args: Sequence[object]) -> bool:
    """Run a probe command; True when it exits 0."""
    return subprocess.run([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def pid_alive(pid: int | None) -> bool:
    """Alive unless gone or a zombie (this host's PID 1 may not reap re-parented children)."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def missing_packages(packages: Sequence[str]) -> list[str]:
    def installed(package: str) -> bool:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True
        ).stdout
        return status == "ii "

    return [p for p in packages if not installed(p)]


def ensure_host_packages(packages: Sequence[str], state_dir: Path) -> None:
    """Install what is missing, with the host's current lists first; refresh them only if that fails."""
    missing = missing_packages(packages)
    if not missing:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    apt_log = state_dir / "host-packages.log"
    log(f"installing host packages: {' '.join(missing)} (log: {apt_log})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    with apt_log.open("w") as out:
        if subprocess.run(install, stdout=out, stderr=out, env=env).returncode == 0:
            return
        if (
            subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=out).returncode == 0
            and subprocess.run(install, stdout=out, stderr=out, env=env).returncode == 0
        ):
            return
    tail = "\n".join(apt_log.read_text(errors="replace").splitlines()[-20:])
    raise TesthostError(f"could not install host packages: {' '.join(missing)}\n{tail}")
