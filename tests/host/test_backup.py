"""Backups on the deployed target: restic and the operator's password in place, the timers armed, and a
real backup, check and restore through the installed units and kca-backup. Nothing here overwrites the
host's state: the restore that would is refused (that is one of the tests), and the secrets' round trip
is read back into a scratch folder."""

from __future__ import annotations

import json

import pytest

from tasks.backup import backup_config, config_path, units

SCRIPT = "/usr/local/sbin/kca-backup"


@pytest.fixture(scope="module", autouse=True)
def backups_enabled(stack):
    if stack.backup is None or not stack.backup.enabled:
        pytest.skip("backups are disabled in this group's data (backup.enabled)")


def kca_backup(host, stack, *args: str):
    return host.run(" ".join([SCRIPT, "--config", config_path(stack), *args]))


def test_restic_and_the_operators_password_are_in_place(host, stack):
    assert host.package("restic").is_installed
    for path in (stack.backup.password_file, config_path(stack)):
        found = host.file(path)
        assert (found.user, found.group, found.mode) == ("root", "root", 0o600), path
    assert host.file(SCRIPT).mode == 0o755


def test_the_hosts_configuration_is_the_datas(host, stack):
    assert json.loads(host.file(config_path(stack)).content_string) == backup_config(stack)


@pytest.mark.parametrize("unit", ["kca-backup", "kca-backup-check"])
def test_timers_are_armed_on_the_datas_schedule(host, stack, unit):
    timer = host.service(f"{unit}.timer")
    assert timer.is_enabled and timer.is_running
    wanted = next(u for u in units(stack) if u["name"] == unit)["schedule"]
    assert f"OnCalendar={wanted}" in host.file(f"{stack.paths['units']}/{unit}.timer").content_string
    assert host.run(f"systemctl show -p NextElapseUSecRealtime --value {unit}.timer").stdout.strip()


def test_the_backup_unit_takes_a_snapshot_that_holds_every_secret(host, stack):
    run = host.run("systemctl start kca-backup.service")
    assert run.rc == 0, host.run("journalctl -u kca-backup.service -n 30 --no-pager").stdout
    assert host.run("systemctl show -p Result --value kca-backup.service").stdout.strip() == "success"
    status = json.loads(kca_backup(host, stack, "status").stdout)
    assert status["age_hours"] < 1
    # Read back into a scratch folder with restic itself: byte-identical to the live secrets.
    secrets = stack.paths["secrets"]
    env = f"RESTIC_PASSWORD_FILE={stack.backup.password_file} RESTIC_REPOSITORY={stack.backup.repository}"
    scratch = host.run("mktemp -d").stdout.strip()
    try:
        restored = host.run(f"{env} restic restore latest --tag kca --target {scratch} --include {secrets}")
        assert restored.rc == 0, restored.stderr
        same = host.run(f"diff -r {secrets} {scratch}{secrets}")
        assert same.rc == 0, "a restored secret differs from the live one"
        # Every declared secret is in the snapshot (files derived from them, such as the proxy's key
        # map, come along: diff -r above compared the whole folder).
        restored_names = set(host.run(f"ls {scratch}{secrets}").stdout.split())
        assert set(stack.secrets) <= restored_names, set(stack.secrets) - restored_names
    finally:
        host.run(f"rm -rf {scratch}")


def test_difys_database_is_dumped_through_its_container(host, stack):
    """pg_dumpall through the running db_postgres container (Dify's, or the PostgreSQL server that stands
    in for it where Dify's images cannot be pulled): the snapshot holds the dump of its databases."""
    entry = next((e for e in backup_config(stack)["state"] if e["kind"] == "postgresql"), None)
    running = host.run(
        f"docker ps -q --filter label=com.docker.compose.project={entry['compose_project']} "
        f"--filter label=com.docker.compose.service={entry['compose_service']}"
    ).stdout.strip()
    if not running:
        pytest.skip(f"{entry['compose_project']}/{entry['compose_service']} does not run on this host")
    env = f"RESTIC_PASSWORD_FILE={stack.backup.password_file} RESTIC_REPOSITORY={stack.backup.repository}"
    dump = f"{stack.backup.work_dir}/staging/{entry['name']}/dumpall.sql"
    listed = host.run(f"{env} restic ls latest --tag kca")
    assert dump in listed.stdout.split(), f"{dump} is not in the latest snapshot"
    database = stack.dify["environment"]["DB_DATABASE"]
    # Read as a stream and searched on the host: the dump is never printed here.
    found = host.run(f"{env} restic dump latest {dump} | grep -c '^CREATE DATABASE {database} '")
    assert found.stdout.strip() == "1", f"the dump holds no CREATE DATABASE {database}"


def test_the_check_unit_passes_and_is_recorded(host, stack):
    run = host.run("systemctl start kca-backup-check.service")
    assert run.rc == 0, host.run("journalctl -u kca-backup-check.service -n 30 --no-pager").stdout
    assert json.loads(kca_backup(host, stack, "status").stdout)["last_check"]["ok"] is True


def test_a_restore_onto_a_host_that_holds_state_is_refused_and_changes_nothing(host, stack):
    digest = f"cat {stack.paths['secrets']}/* | sha256sum"
    before = host.run(digest).stdout
    run = kca_backup(host, stack, "restore", "latest")
    assert run.rc == 3, run.stdout + run.stderr
    assert "this host already holds state that the restore would overwrite" in run.stdout
    assert f"secrets: {stack.paths['secrets']}/" in run.stdout
    assert host.run(digest).stdout == before


def test_a_wrong_password_is_a_clear_error(host, stack):
    config = backup_config(stack)
    scratch = host.run("mktemp -d").stdout.strip()
    try:
        config["password_file"] = f"{scratch}/wrong-password"
        config["work_dir"] = f"{scratch}/work"
        host.run(f"echo not-the-password > {scratch}/wrong-password")
        host.run(f"cat > {scratch}/config.json << 'EOF'\n{json.dumps(config)}\nEOF")
        run = host.run(f"{SCRIPT} --config {scratch}/config.json restore latest")
        assert run.rc == 2
        assert "the repository password is wrong" in run.stdout
    finally:
        host.run(f"rm -rf {scratch}")
