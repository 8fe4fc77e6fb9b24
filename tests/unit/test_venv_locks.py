"""The hashed lock files the venvs are installed from: complete (every line pinned and hashed, so that
pip's --require-hashes accepts them) and in step with the requirements they were compiled from (a pin
changed there and not recompiled fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s\\;]+)")


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalised as pip does)."""
    found = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1).split("[")[0]).lower()
            found[name] = match.group(2)
    return found


def locked_venvs() -> list[tuple[str, str, str, list[str]]]:
    """(group, venv, lock, the requirements files of the services that run from that venv)."""
    cases = []
    for group in ("testhost", "production"):
        stack = build_stack(group_data(group))
        for venv in stack.venvs.values():
            if venv.lock:
                sources = sorted(
                    {
                        s.settings.requirements
                        for s in stack.services.values()
                        if getattr(s.settings, "venv", None) == venv.name
                    }
                )
                if stack.vllm.venv == venv.name:
                    sources.append("vllm.packages")
                cases.append((group, venv.name, venv.lock, sources))
    return cases


CASES = locked_venvs()


def test_the_main_venv_has_a_lock_on_both_targets():
    assert {(group, venv) for group, venv, _, _ in CASES} >= {("testhost", "main"), ("production", "main")}


@pytest.mark.parametrize(("group", "venv_name", "lock", "sources"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_locked_requirement_is_pinned_and_hashed(group, venv_name, lock, sources):
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    requirements = [e for e in entries if PIN.match(e.strip())]
    assert requirements, f"{lock} pins nothing"
    for entry in requirements:
        assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]} has no hash"


@pytest.mark.parametrize(("group", "venv_name", "lock", "sources"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_lock_holds_every_pin_of_its_requirements(group, venv_name, lock, sources):
    locked = pins((ROOT / lock).read_text())
    stack = build_stack(group_data(group))
    for source in sources:
        text = "\n".join(stack.vllm.packages) if source == "vllm.packages" else (ROOT / source).read_text()
        for name, version in pins(text).items():
            # A local label (torch 2.13.0+cpu) is the same release for another accelerator.
            assert locked.get(name, "").split("+")[0] == version, (
                f"{source} pins {name}=={version}, {lock} has {locked.get(name)}: recompile {lock} "
                "(the command is at its top)"
            )
