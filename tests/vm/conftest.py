"""The VM host tests: one QEMU virtual machine (testhost --backend vm) with a disk for each /models case,
driven by the real deploy (`pyinfra inventory.py deploy.py`, layers chosen by group_data/testvm.py).

They run when KVM works, or when KCA_VM_TCG=1 (`./kca test-vm`) accepts emulation's slowness; otherwise
they are skipped with one line that says why. The VM is this run's own test host instance
(KCA_TESTHOST_INSTANCE, see testhost/contract.py), stopped at the end unless KCA_KEEP_TESTHOST=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import runpy
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kca_stack.data import GROUP_DATA, group_data
from testhost import contract
from testhost.vm import expected_accel

ROOT = Path(__file__).resolve().parents[2]
TESTHOST = [str(ROOT / "testhost" / "testhost"), "--backend", "vm"]
VM_DATA = runpy.run_path(str(GROUP_DATA / "testvm.py"))
CACHE_DIR = Path(os.environ.get("KCA_CACHE_DIR") or "/var/cache/kca-ai-infra")


# What the VM stage last took under each acceleration on this machine, written at its end and read by
# the next ./kca test to decide whether the stage fits its time budget. Before the first run: an estimate.
STAGE_SECONDS = CACHE_DIR / "vm" / "stage-seconds.json"
STAGE_ESTIMATE_S = {"kvm": 600, "tcg": 1500}


def stage_seconds(accel: str) -> tuple[float, str]:
    try:
        return float(json.loads(STAGE_SECONDS.read_text())[accel]), "last run"
    except (OSError, ValueError, KeyError):
        return STAGE_ESTIMATE_S[accel], "estimate"


def why_not() -> str | None:
    """The reason the VM tests cannot run here, or None. Under KVM they always run; under TCG emulation
    when ./kca test-vm asks for them (KCA_VM_TCG=1), or when they fit what is left of ./kca test's time
    budget (KCA_TEST_BUDGET_S from KCA_TEST_STARTED: the cold suite must finish within CI's share)."""
    if os.geteuid() != 0:
        return "VM tests skipped: they need root (QEMU, tap device, nft)"
    if not shutil.which("qemu-system-x86_64"):
        return "VM tests skipped: no qemu-system-x86_64 (apt-get install qemu-system-x86, or ./kca test-vm)"
    accel, why = expected_accel(CACHE_DIR)
    if accel == "kvm" or os.environ.get("KCA_VM_TCG") == "1":
        return None
    started, budget = os.environ.get("KCA_TEST_STARTED"), os.environ.get("KCA_TEST_BUDGET_S")
    needed, basis = stage_seconds("tcg")
    if started and budget:
        left = float(budget) - (time.time() - float(started))
        if needed <= left:
            print(f"\nVM tests under TCG emulation ({why}): about {needed:.0f} s needed ({basis}), {left:.0f} s left")
            return None
        return (
            f"VM tests skipped: no KVM ({why}); under TCG emulation they need about {needed:.0f} s ({basis}) and "
            f"{max(left, 0):.0f} s of this run's {float(budget):.0f} s budget is left; run ./kca test-vm"
        )
    return f"VM tests skipped: no KVM ({why}) and no time budget given for TCG emulation; run ./kca test-vm"


# The VM stage's duration by acceleration, kept for the next run's budget only when every test passed:
# a run cut short by a failure says nothing about how long the stage takes.
FINISHED: dict[str, float] = {}


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        for accel, seconds in FINISHED.items():
            record_stage_seconds(accel, seconds)


def record_stage_seconds(accel: str, seconds: float) -> None:
    try:
        known = json.loads(STAGE_SECONDS.read_text())
    except (OSError, ValueError):
        known = {}
    STAGE_SECONDS.parent.mkdir(parents=True, exist_ok=True)
    STAGE_SECONDS.write_text(json.dumps({**known, accel: round(seconds)}) + "\n")


def pytest_collection_modifyitems(config, items):
    reason = why_not()
    if reason:
        for item in items:
            if "tests/vm/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# The files the "files" disk holds before the deploy sees it: path -> content (the same at every run).
DISK_FILES = {
    "huggingface/existing-model/weights.bin": random.Random(12).randbytes(3 << 20),
    "huggingface/existing-model/config.json": b'{"kept": true}\n',
}


def make_disks(folder: Path) -> dict[str, Path]:
    """One raw image per case, made with this machine's own tools."""
    size = VM_DATA["models_disk_size"]
    disks = {case: folder / f"{case}.img" for case in VM_DATA["models_disk_serials"]}
    for path in disks.values():
        path.unlink(missing_ok=True)
        subprocess.run(["truncate", "-s", size, path], check=True)
    content = folder / "files-content"
    shutil.rmtree(content, ignore_errors=True)
    for relative, data in DISK_FILES.items():
        (content / relative).parent.mkdir(parents=True, exist_ok=True)
        (content / relative).write_bytes(data)
    fstype = group_data("testhost")["models_filesystem"]["fstype"]
    subprocess.run(["mke2fs", "-q", "-t", fstype, "-L", "models", "-d", content, disks["files"]], check=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext3", disks["other_fs"]], check=True)
    subprocess.run(["sfdisk", "-q", disks["partitioned"]], input=b"label: gpt\n,,L\n", check=True)
    return disks


@dataclass
class Deploy:
    returncode: int
    output: str  # stdout and stderr
    stdout: str
    seconds: float


@dataclass
class VM:
    instance: contract.Instance
    disks: dict[str, Path]
    accel: str
    data_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def device(self, case: str) -> str:
        return f"/dev/disk/by-id/virtio-{VM_DATA['models_disk_serials'][case]}"

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(
            ["ssh", "-F", str(self.instance.ssh_config), "-o", "BatchMode=yes", self.instance.machine, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{command!r} failed in the VM: {done.stderr[-1000:]}")
        return done.stdout

    def environment(self) -> dict[str, str]:
        """The environment of a command that reaches this VM as the deploy does (inventory.py's target)."""
        return {**os.environ, "KCA_TARGET": "testhost"}

    def deploy_layers(self) -> list[str]:
        return VM_DATA["deploy_layers_by_accel"][self.accel]

    def deploy(self, case: str | None, format_empty: bool = False, json: bool = False) -> Deploy:
        """The real deploy of the layers testvm.py names for this acceleration, with /models on the
        disk of `case` (None: a device that does not exist)."""
        filesystem = dict(group_data("testhost")["models_filesystem"])
        filesystem["device"] = self.device(case) if case else "/dev/disk/by-id/virtio-no-such-disk"
        filesystem["format_empty"] = format_empty
        # The container's /models is a plain directory (testhost.py says so); the VM's is a disk.
        filesystem["plain_directory"] = False
        layers = self.deploy_layers()
        self.data_dir.mkdir(exist_ok=True)
        (self.data_dir / "testhost.py").write_text(f"deploy_layers = {layers!r}\nmodels_filesystem = {filesystem!r}\n")
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinfra",
                "-y",
                *(["--json"] if json else []),
                "--group-data",
                str(self.data_dir),
                "inventory.py",
                "deploy.py",
            ],  # fmt: skip
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=self.environment(),
        )
        return Deploy(done.returncode, done.stdout + done.stderr, done.stdout, time.monotonic() - started)


def running_with(instance: contract.Instance, disks: dict[str, Path]) -> bool:
    """A VM of this instance already runs with exactly these case disks (KCA_KEEP_TESTHOST=1 left it)."""
    recorded = instance.state_dir / "qemu.json"
    if subprocess.run([*TESTHOST, "status"], capture_output=True).returncode != 0 or not recorded.exists():
        return False
    wanted = {VM_DATA["models_disk_serials"][case]: str(path.resolve()) for case, path in disks.items()}
    return json.loads(recorded.read_text()).get("extra_disks") == wanted


@pytest.fixture(scope="session")
def vm(tmp_path_factory):
    instance = contract.instance()
    folder = instance.state_dir / "disk-cases"
    disks = {case: folder / f"{case}.img" for case in VM_DATA["models_disk_serials"]}
    started = time.monotonic()
    if os.environ.get("KCA_KEEP_TESTHOST") and running_with(instance, disks):
        print("\nreusing the running VM and its case disks (KCA_KEEP_TESTHOST=1)")
    else:
        subprocess.run([*TESTHOST, "build"], check=True)  # also installs the host tools make_disks uses
        folder.mkdir(parents=True, exist_ok=True)
        disks = make_disks(folder)
        up = [*TESTHOST, "up", "--models-disk", "none"]
        for case, path in disks.items():
            up += ["--disk", f"{VM_DATA['models_disk_serials'][case]}={path}"]
        subprocess.run(up, check=True)
    accel = subprocess.run([*TESTHOST, "status"], capture_output=True, text=True).stdout
    machine = VM(instance, disks, "kvm" if ", kvm," in accel else "tcg", tmp_path_factory.mktemp("group_data"))
    machine.timings["boot (testhost up)"] = time.monotonic() - started
    yield machine
    FINISHED[machine.accel] = time.monotonic() - started
    print("\nVM timings (" + machine.accel.upper() + "):")
    for what, seconds in machine.timings.items():
        print(f"  {what:45} {seconds:7.1f} s")
    if not os.environ.get("KCA_KEEP_TESTHOST"):
        subprocess.run([*TESTHOST, "down"], check=False)
