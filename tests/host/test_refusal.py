"""A broken stack stops the real deploy before its first operation, naming the field, and the host
is untouched: the check runs in deploy.py before anything is queued."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kca_stack.data import group_data

ROOT = Path(__file__).resolve().parents[2]


def broken_services(group: str) -> dict:
    services = copy.deepcopy(group_data(group)["services"])
    services["exaone"]["ports"][0]["port"] = services["gpt-oss"]["ports"][0]["port"]
    return services


def test_broken_stack_stops_the_deploy_before_any_operation(host, kca_group, tmp_path):
    if kca_group != "testhost":
        pytest.skip("runs pyinfra against the test host only")
    (tmp_path / f"{kca_group}.py").write_text(f"services = {broken_services(kca_group)!r}\n")
    watched = "/etc/kca/gpu-scenarios.json"
    before = host.file(watched).mtime
    run = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--group-data", str(tmp_path), "inventory.py", "deploy.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "KCA_TARGET": "testhost"},
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "services.exaone.ports: host port 8080 is already taken by services.gpt-oss" in output
    assert "Nothing on the host was changed" in output
    assert "Starting operation" not in output
    assert host.file(watched).mtime == before
