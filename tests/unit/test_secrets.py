"""The secret generator's host-side command, run here with the real shell: a secret is made once, 0600,
and one that is there when the command runs is never replaced, whatever the planning saw. On a freshly
built host the restore puts the secrets back after pyinfra planned the generator (the files were missing
then) and before it runs: without the check on the host, every restored secret was replaced, and
PostgreSQL's password, kept in its restored cluster, no longer matched its secret."""

from __future__ import annotations

import subprocess

from tasks.secrets import generate_command


def run(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True)


def test_a_missing_secret_is_made_root_only_and_not_empty(tmp_path):
    path = tmp_path / "dify-db-password"
    run(generate_command(str(path), 32))
    value = path.read_text()
    assert len(value) >= 32 and value.isalnum()
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "dify-db-password.tmp").exists()


def test_a_secret_that_is_there_when_the_command_runs_is_kept_byte_identical(tmp_path):
    path = tmp_path / "dify-db-password"
    path.write_bytes(b"restored-from-the-snapshot\n")
    run(generate_command(str(path), 32))
    assert path.read_bytes() == b"restored-from-the-snapshot\n"


def test_an_empty_file_is_no_secret_and_is_made(tmp_path):
    path = tmp_path / "llm-api-key"
    path.write_bytes(b"")
    run(generate_command(str(path), 16))
    assert len(path.read_text()) >= 16
