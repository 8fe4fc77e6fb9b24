"""What a deploy needs of its target, refused by the real deploy before its first operation, with the
field and the fix named, and the host untouched: a firewall SSH port that is not the port the deploy
connects on, and a /models with neither a device nor an explicit plain_directory."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kca_stack.data import group_data

ROOT = Path(__file__).resolve().parents[2]


def deploy_with(tmp_path: Path, group: str, overrides: str) -> str:
    (tmp_path / f"{group}.py").write_text(overrides)
    run = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--group-data", str(tmp_path), "inventory.py", "deploy.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "KCA_TARGET": "testhost"},
    )
    assert run.returncode != 0
    return run.stdout + run.stderr


@pytest.fixture
def testhost_only(kca_group):
    if kca_group != "testhost":
        pytest.skip("runs pyinfra against the test host only")


def test_an_ssh_port_the_deploy_does_not_connect_on_is_refused(host, testhost_only, tmp_path):
    network = copy.deepcopy(group_data("testhost")["network"])
    network["ssh_port"] = 2222
    before = host.file("/etc/kca/firewall.nft").mtime if host.file("/etc/kca/firewall.nft").exists else None
    output = deploy_with(tmp_path, "testhost", f"network = {network!r}\n")
    assert "network.ssh_port: is 2222, but the deploy connects on port 22" in output
    assert "Nothing on the host was changed" in output and "Starting operation" not in output
    if before is not None:
        assert host.file("/etc/kca/firewall.nft").mtime == before


def test_models_without_a_device_or_an_explicit_plain_directory_is_refused(host, testhost_only, tmp_path):
    output = deploy_with(tmp_path, "testhost", 'models_filesystem = {"plain_directory": False}\n')
    assert "models_filesystem.device: no device is configured for /models" in output
    assert "Nothing on the host was changed" in output and "Starting operation" not in output
