"""pip installs into the venvs under /models, done once: a stamp with the sha256 of what was asked
decides, because `pip install` cannot tell pyinfra whether it changed anything.

pip runs as root (its cache is root's, which the test host keeps across boots) in venvs that are root's
too (tasks/base.py): root never runs code that another user could have written there.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from kca_stack import Stack

from . import ops

# pip's own progress bars flood a log; these lines say what it is doing.
PIP_PROGRESS = (
    "awk '/^(Collecting|Installing collected|Successfully|ERROR|WARNING: Retrying)/ "
    "{ print substr($0, 1, 160); fflush() }'"
)


def _install(venv: str, pip_args: str, digest: str, stamp: str, label: str, uploads=()):
    # /tmp may be a small tmpfs: CUDA wheels (~1 GB each) are unpacked on disk instead. The whole log
    # stays on the host; the run shows its progress lines, and the log's tail when pip fails.
    log = f"{venv}/.kca-pip.log"
    pip = (
        f"TMPDIR=/var/tmp {venv}/bin/pip install --progress-bar off {pip_args} 2>&1 | tee {log} | {PIP_PROGRESS}"
        f" || {{ tail -n 30 {log}; exit 1; }}"
    )
    return ops.stamped(
        name=f"Install {label} into {venv} (pinned)",
        stamp=stamp,
        wanted=digest,
        uploads=uploads,
        commands=[f"bash -o pipefail -c {shlex.quote(pip)}"],
        stream=True,
    )


def ensure_requirements(stack: Stack, venv_name: str, requirements: str, label: str):
    """Install a pinned requirements file of this repository (uploaded beside the venv) once per
    version of the file; returns the operation. A venv with a hashed lock (venvs.NAME.lock, compiled
    from `requirements`) installs the lock instead, with --require-hashes: every file pip fetches,
    dependencies included, must have a hash the lock lists."""
    venv_data = stack.venvs[venv_name]
    venv = venv_data.path
    local = Path(venv_data.lock or requirements)
    remote = f"{venv}/{local.name}"
    pip_args = f"--require-hashes -r {remote}" if venv_data.lock else f"-r {remote}"
    upload = ops.HostFile(remote, src=local, mode="0644")
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    return _install(venv, pip_args, digest, f"{venv}/.kca-{local.stem}.sha256", label, uploads=[upload])


def ensure_packages(stack: Stack, venv_name: str, packages: list[str], label: str):
    """Install pinned package specs (e.g. vllm==0.10.2) once; from the venv's hashed lock (compiled
    from those specs) when it has one."""
    if stack.venvs[venv_name].lock:
        return ensure_requirements(stack, venv_name, stack.venvs[venv_name].lock, label)
    venv = stack.venvs[venv_name].path
    digest = hashlib.sha256("\n".join(sorted(packages)).encode()).hexdigest()
    args = " ".join(shlex.quote(p) for p in packages)
    return _install(venv, args, digest, f"{venv}/.kca-packages.sha256", label)
