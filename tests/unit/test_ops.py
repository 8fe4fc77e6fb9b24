"""The facts and shell tests the deploy's operations read the host with (tasks/ops.py), run here in a
real shell on real files: what each command prints and what the operation makes of it. The secret
generator never replaces a secret."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from tasks import ops
from tasks.util import all_owned_by_test, owned_by_test


def sh(command: str) -> list[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def passes(test: str) -> bool:
    return ops.ShellTest().process(sh(ops.ShellTest().command(test)))


def me() -> tuple[str, str]:
    line = sh("id -un; id -gn")
    return line[0], line[1]


def test_file_states_read_mode_owner_and_sha256_and_skip_what_is_not_a_file(tmp_path):
    regular = tmp_path / "a file"
    regular.write_bytes(b"hello\n")
    regular.chmod(0o640)
    (tmp_path / "link").symlink_to(regular)
    (tmp_path / "dir").mkdir()
    paths = [str(regular), str(tmp_path / "missing"), str(tmp_path / "link"), str(tmp_path / "dir")]
    fact = ops.FileStates()
    found = fact.process(sh(fact.command(paths)))
    user, group = me()
    mtime = str(int(regular.stat().st_mtime))
    assert found == [("640", user, group, "6", mtime, hashlib.sha256(b"hello\n").hexdigest()), None, None, None]
    # A large file is compared by size and mtime: no sha256 read on the host.
    assert fact.process(sh(fact.command(paths[:1], quick=paths[:1]))) == [("640", user, group, "6", mtime, "-")]


def test_a_host_file_compares_content_and_a_large_one_size_and_mtime(tmp_path):
    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    spec = ops.HostFile("/dest", src=small)
    assert not spec.quick
    assert spec.same_as(("644", "root", "root", "10", "1", hashlib.sha256(b"x" * 10).hexdigest()))
    assert not spec.same_as(("644", "root", "root", "10", "1", hashlib.sha256(b"y").hexdigest()))
    large = tmp_path / "large"
    large.write_bytes(b"\0" * ops.QUICK_CHECK_BYTES)
    spec = ops.HostFile("/dest", src=large)
    size, mtime = str(ops.QUICK_CHECK_BYTES), str(int(large.stat().st_mtime))
    assert spec.quick
    assert spec.same_as(("644", "root", "root", size, mtime, "-"))
    assert not spec.same_as(("644", "root", "root", size, str(int(mtime) - 1), "-"))
    assert not spec.same_as(("644", "root", "root", "1", mtime, "-"))


def test_directory_states_name_the_type_of_what_is_there(tmp_path):
    (tmp_path / "d").mkdir(mode=0o750)
    (tmp_path / "f").write_text("x")
    fact = ops.DirectoryStates()
    found = fact.process(sh(fact.command([str(tmp_path / "d"), str(tmp_path / "f"), str(tmp_path / "none")])))
    user, group = me()
    assert found[0] == ("directory", "750", user, group)
    assert found[1][0] == "regular-file"
    assert found[2] is None


def test_stat_test_wants_every_file_there_with_that_mode_and_owner(tmp_path):
    user, group = me()
    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        path.write_text("s")
        path.chmod(0o600)
    assert passes(ops.stat_test([str(a), str(b)], f"600 {user} {group}"))
    b.chmod(0o644)
    assert not passes(ops.stat_test([str(a), str(b)], f"600 {user} {group}"))
    assert not passes(ops.stat_test([str(a), str(tmp_path / "missing")], f"600 {user} {group}"))


def test_owned_by_test_finds_a_file_of_another_owner(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("x")
    assert passes(owned_by_test(str(tmp_path), "nobody-here", os.getuid()))
    assert not passes(owned_by_test(str(tmp_path), "nobody-here", os.getuid() + 4242))
    (tmp_path / "other").mkdir()
    trees = [str(tmp_path / "sub"), str(tmp_path / "other")]
    assert passes(all_owned_by_test(trees, "nobody-here", os.getuid()))
    assert not passes(all_owned_by_test(trees, "nobody-here", os.getuid() + 4242))


@pytest.mark.parametrize(
    "output, wanted",
    [
        (["ii  nginx 1.22.1-9", "rc  restic 0.14.0-1", "ii  jq 1.6-2.1"], {"nginx": "1.22.1-9", "jq": "1.6-2.1"}),
        ([], {}),
    ],
)
def test_package_versions_count_only_installed_packages(output, wanted):
    assert ops.PackageVersions().process(output) == wanted


def test_unit_states_read_enabled_and_running_per_unit():
    output = [
        "Id=docker.service",
        "UnitFileState=enabled",
        "SubState=running",
        "",
        "Id=kca-backup.timer",
        "UnitFileState=disabled",
        "SubState=waiting",
        "",
        "Id=nope.service",
        "UnitFileState=",
        "SubState=dead",
    ]
    assert ops.UnitStates().process(output) == {
        "docker.service": (True, True),
        "kca-backup.timer": (False, True),
        "nope.service": (False, False),
    }


def test_account_states_read_the_user_and_its_group_or_none():
    output = ["kca:x:2000:2000::/home/kca:/bin/bash", "kca:x:2000:", "kca-docling:-", "kca-docling:-"]
    assert ops.AccountStates().process(output) == {
        "kca": ({"uid": 2000, "gid": 2000, "home": "/home/kca", "shell": "/bin/bash"}, 2000),
        "kca-docling": (None, None),
    }


def test_account_states_command_prints_two_lines_per_name():
    lines = sh(ops.AccountStates().command(["root", "no-such-account-here"]))
    found = ops.AccountStates().process(lines)
    assert found["root"][0]["uid"] == 0
    assert found["no-such-account-here"] == (None, None)


def test_facts_that_read_nothing_give_an_empty_answer_not_none():
    # pyinfra gives a fact's default when its command prints nothing (no package of the list installed).
    assert ops.PackageVersions().default() == {}
    assert ops.UnitStates().default() == {}
