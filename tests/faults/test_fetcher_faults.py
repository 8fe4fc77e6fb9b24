"""Fault rows of the model fetcher: the real kca-fetch-model against the local hub of
tests/unit/test_fetch_model.py (serving slowly here, so that a download can be cut in the middle), and
a real small filesystem loop-mounted on this machine as the models disk that fills up.

The test host places stand-in models with the deploy's own upload (it has no hub), so the fetcher's
faults are shown here, on the control machine, where a hub can be served and a disk can be filled."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_UNIT = Path(__file__).resolve().parents[1] / "unit" / "test_fetch_model.py"
_spec = importlib.util.spec_from_file_location("kca_fetch_model_hub", _UNIT)
hubmod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = hubmod  # its dataclasses look themselves up there
_spec.loader.exec_module(hubmod)

Hub, PAYLOAD, DIGEST, FETCHER = hubmod.Hub, hubmod.PAYLOAD, hubmod.DIGEST, hubmod.FETCHER
hub = hubmod.hub  # the fixture
fetch, record_of = hubmod.fetch, hubmod.record_of
NO_SPACE = 5


def start_fetch(hub_url: str, dest: Path) -> subprocess.Popen:
    """The fetcher in its own session, so that the kill takes it whole, as a power cut would."""
    return subprocess.Popen(
        [sys.executable, str(FETCHER), "--repo", "org/model", "--revision", "abc", "--file", "m.gguf"]
        + ["--dest", str(dest), "--retry-delay", "0"],
        env={**os.environ, "HF_ENDPOINT": hub_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_growing_part(part: Path, process: subprocess.Popen, timeout: float = 30) -> int:
    """The trigger: the .part holds some bytes, not all of them. Returns its size when seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = part.stat().st_size if part.exists() else 0
        if 0 < size < len(PAYLOAD):
            return size
        assert process.poll() is None, "the fetch ended before the trigger"
        time.sleep(0.02)
    raise AssertionError(f"{part} never grew")


def test_killed_mid_download_resumes_and_verifies(hub, tmp_path, row):
    """Row: mid model download. SIGKILL while the .part grows; the next run resumes it from where it
    stopped (a Range request), verifies and records it; one more run fetches nothing."""
    row(
        "mid model download",
        "the real kca-fetch-model against a local hub serving slowly, SIGKILLed with its session while the .part grows",
        "at the cut no file and no record, the .part a prefix; the re-run resumes it with a Range request, "
        "verifies the sha256 and records it; one more run asks the hub nothing",
    )
    dest = tmp_path / "gpt-oss" / "m.gguf"
    part = Path(f"{dest}.part")
    Hub.state.pace = 0.01
    fetcher = start_fetch(hub, dest)
    wait_for_growing_part(part, fetcher)
    os.killpg(fetcher.pid, signal.SIGKILL)
    fetcher.communicate()
    kept = part.read_bytes()
    assert 0 < len(kept) < len(PAYLOAD)
    assert PAYLOAD.startswith(kept), "the .part is not a prefix of the file"
    assert not dest.exists() and record_of(dest) is None, "an interrupted download was taken as done"

    Hub.state.pace = 0.0
    Hub.state.requests.clear()
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert any(f"bytes={len(kept)}-" in r for r in Hub.state.requests), Hub.state.requests
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST and not part.exists()

    Hub.state.requests.clear()
    again = fetch(hub, dest)
    assert again.returncode == 0 and "present, verified" in again.stdout
    assert Hub.state.requests == []


@pytest.fixture
def small_models_disk(tmp_path):
    """A real 8 MiB ext4 filesystem, loop-mounted: the models disk, small enough to fill."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a loop-mounted filesystem needs root and mkfs.ext4")
    image, mountpoint = tmp_path / "models.img", tmp_path / "models"
    mountpoint.mkdir()
    with image.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no loop device here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """Take the filesystem's free space down to about `leave` bytes with a filler file."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    take = stat.f_bavail * stat.f_frsize - leave
    with filler.open("wb") as f:
        f.write(b"\0" * max(take, 0))
        f.flush()
        os.fsync(f.fileno())
    return filler


def fill_completely(folder: Path) -> None:
    """Write until the filesystem says it is full."""
    with (folder / "filler-rest").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass


def test_a_models_disk_too_small_is_refused_before_the_first_byte(hub, small_models_disk, row):
    """Row: full /models (before). The hub states the size; the free space is less: a clear error,
    exit 5, nothing written (no .part, no file, no record)."""
    row(
        "full /models, before the download",
        "a loop-mounted 8 MiB ext4 as the models folder, filled to 1 MiB free; a 3 MiB file to fetch",
        "exit 5 with NO SPACE and the fix in one line, no traceback; no file, no record, no bytes written",
    )
    fill(small_models_disk, leave=1 << 20)
    dest = small_models_disk / "gpt-oss" / "m.gguf"
    run = fetch(hub, dest)
    assert run.returncode == NO_SPACE, (run.returncode, run.stderr)
    assert "NO SPACE" in run.stderr and "free space on the models disk" in run.stderr
    assert "Traceback" not in run.stderr
    assert not dest.exists() and record_of(dest) is None
    assert not Path(f"{dest}.part").exists() or Path(f"{dest}.part").stat().st_size == 0


def test_a_models_disk_that_fills_mid_download_keeps_a_prefix_and_resumes(hub, small_models_disk, row):
    """Row: full /models (during). The disk fills while the file arrives (another writer took the
    space): a clear error at once (no resume attempts against a full disk), the .part a prefix of the
    file, no file, no record; once space is freed the next run resumes and verifies it."""
    row(
        "full /models, during the download",
        "the same filesystem, filled to the last block by another writer while the .part grows",
        "exit 5 with NO SPACE at once (no resume attempts), the .part a prefix of the file, no file, no "
        "record; with the space freed the re-run resumes, verifies and records it",
    )
    dest = small_models_disk / "gpt-oss" / "m.gguf"
    part = Path(f"{dest}.part")
    Hub.state.pace = 0.02
    fetcher = start_fetch(hub, dest)
    wait_for_growing_part(part, fetcher)
    fill_completely(small_models_disk)
    out, err = fetcher.communicate(timeout=60)
    assert fetcher.returncode == NO_SPACE, (fetcher.returncode, err)
    assert "NO SPACE" in err and "resumes" in err and "Traceback" not in err
    assert "resuming from byte" not in out, "a full disk was retried"
    kept = part.read_bytes()
    assert len(kept) < len(PAYLOAD) and PAYLOAD.startswith(kept), "the .part is not a prefix of the file"
    assert not dest.exists() and record_of(dest) is None

    (small_models_disk / "filler-rest").unlink()
    Hub.state.pace = 0.0
    run = fetch(hub, dest)
    assert run.returncode == 0, run.stderr
    assert dest.read_bytes() == PAYLOAD and record_of(dest) == DIGEST and not part.exists()
