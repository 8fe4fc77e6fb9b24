"""State as data: what the committed data declares, the refusals for a broken backup section (each naming
the field and the fix), the state table in docs/server.md, and kca-backup's configuration as the deploy
renders it."""

from __future__ import annotations

import copy
import json

import pytest
from refusals import assert_refused

from kca_stack import StackError, build_stack
from kca_stack.data import group_data
from kca_stack.docs import DOC_PATH
from tasks import backup


def data(group: str = "production") -> dict:
    return copy.deepcopy(group_data(group))


def test_every_service_state_and_the_host_state_are_declared():
    stack = build_stack(data())
    kinds = {item.name: item.kind for item in stack.backup.state}
    assert kinds["open-webui"] == "sqlite"
    assert kinds["dify-db"] == "postgresql"
    assert kinds["secrets"] == "secrets"
    assert kinds["dify-nginx"] == "secrets", "the TLS material is state"
    captured = {item.name for item in stack.backup.backed_up()}
    assert {"open-webui", "dify-db", "dify-api", "dify-plugin-daemon", "dify-weaviate", "secrets"} <= captured
    assert "model-records" in captured, "the verification records are kept"
    assert "model-weights" not in captured, "weights are fetched again, so left out by default"
    assert stack.pins() == {"dify.tag": stack.dify["tag"], "openwebui.tag": stack.openwebui["tag"]}


def test_the_state_table_in_the_docs_has_a_row_for_every_entry():
    stack = build_stack(data())
    text = DOC_PATH.read_text().split("## State and backups", 1)[1].split("\n## ", 1)[0]
    for item in stack.backup.state:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{item.name}` |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == item.kind
        assert cells[5:7] == ["yes" if item.recreatable else "no", "yes" if item.backed_up else "no"]
        for path in item.paths:
            assert path in cells[3]


BAD_STATE = [
    # (id, mutation, field the message must name, words it must contain)
    (
        "sqlite copied as plain files",
        lambda d: d["services"]["open-webui"]["state"].update(capture="copy"),
        "services.open-webui.state.capture",
        "does not give a consistent copy of sqlite state",
    ),
    (
        "sqlite without databases",
        lambda d: d["services"]["open-webui"]["state"].update(databases=[]),
        "services.open-webui.state.databases",
        "names no database",
    ),
    (
        "postgresql without its container settings",
        lambda d: d["services"]["dify-db"]["state"]["postgresql"].pop("image"),
        "services.dify-db.state.postgresql.image",
        "is missing",
    ),
    (
        "unknown kind",
        lambda d: d["services"]["dify-redis"]["state"].update(kind="mysql"),
        "services.dify-redis.state.kind",
        "unknown kind 'mysql'",
    ),
    (
        "pin naming nothing",
        lambda d: d["services"]["dify-api"]["state"].update(pin="dify.version"),
        "services.dify-api.state.pin",
        "'dify.version' names no value of the data",
    ),
    (
        "state outside the roots",
        lambda d: d["services"]["dify-api"]["state"].update(paths=["/srv/storage"]),
        "services.dify-api.state.paths",
        "'/srv/storage' lies outside",
    ),
    (
        "host state stopped like a container",
        lambda d: d["backup"]["host_state"]["secrets"].update(capture="stop-copy-start"),
        "backup.host_state.secrets.capture",
        "only a service's container can be stopped",
    ),
    (
        "secrets not declared as state",
        lambda d: d["backup"]["host_state"].pop("secrets"),
        "backup.host_state",
        "no secrets state holds /etc/kca/secrets",
    ),
    (
        "repository in no known syntax",
        lambda d: d["backup"].update(repository="ftp://nas/kca"),
        "backup.repository",
        "neither an absolute path nor sftp:...",
    ),
    (
        "retention option restic does not know",
        lambda d: d["backup"]["retention"].update(keep_forever=1),
        "backup.retention.keep_forever",
        "is not a restic retention option",
    ),
    (
        "restore of something that is no snapshot ID",
        lambda d: d["backup"].update(restore="yesterday"),
        "backup.restore",
        "'yesterday' is not a snapshot ID",
    ),
]


@pytest.mark.parametrize(("mutate", "field", "words"), [c[1:] for c in BAD_STATE], ids=[c[0] for c in BAD_STATE])
def test_a_broken_backup_section_is_refused_naming_the_field(mutate, field, words):
    broken = data()
    mutate(broken)
    assert_refused(broken, field, words)


def test_backups_on_and_no_password_stop_the_deploy_naming_where_to_put_it():
    # What inventory.py supplies for a production host whose operator gave no password.
    deploying = {**data(), "backup_password_given": False}
    deploying["backup"] = {**deploying["backup"], "repository": "sftp:backup@nas:/srv/kca"}
    with pytest.raises(StackError) as refused:
        build_stack(deploying)
    (problem,) = refused.value.problems
    assert problem.field == "backup.password"
    assert "KCA_BACKUP_PASSWORD is unset" in problem.message
    assert "production.env beside inventory.py" in problem.fix
    # With a password, or with backups off, the same data deploys.
    build_stack({**deploying, "backup_password_given": True})
    off = {**deploying, "backup": {**deploying["backup"], "enabled": False}}
    build_stack(off)


def test_backups_on_and_no_repository_name_the_variable():
    deploying = {**data(), "backup_password_given": True}
    deploying["backup"] = {**deploying["backup"], "repository": None}
    with pytest.raises(StackError) as refused:
        build_stack(deploying)
    assert [p.field for p in refused.value.problems] == ["backup.repository"]
    assert "KCA_BACKUP_REPOSITORY" in refused.value.problems[0].fix


def test_kca_backup_config_carries_the_data_and_no_secret(monkeypatch):
    monkeypatch.setenv("KCA_BACKUP_PASSWORD", "the-operators-password")
    stack = build_stack(data("testhost"))
    config = backup.backup_config(stack)
    text = json.dumps(config)
    assert "the-operators-password" not in text
    assert config["password_file"] == "/etc/kca/backup/restic-password"
    assert config["pins"] == stack.pins()
    assert [e["name"] for e in config["state"]] == [i.name for i in stack.backup.backed_up()]
    db = next(e for e in config["state"] if e["name"] == "dify-db")
    assert (db["compose_project"], db["compose_service"]) == ("dify", "db_postgres")
    assert db["postgresql"]["password_secret"] == "dify-db-password"


def test_a_restore_is_asked_for_in_data_or_for_one_run(monkeypatch):
    stack = build_stack(data("testhost"))
    monkeypatch.delenv("KCA_RESTORE", raising=False)
    monkeypatch.delenv("KCA_RESTORE_FORCE", raising=False)
    assert backup.restore_request(stack) == (None, False)
    monkeypatch.setenv("KCA_RESTORE", "latest")
    monkeypatch.setenv("KCA_RESTORE_FORCE", "1")
    assert backup.restore_request(stack) == ("latest", True)


def test_units_run_kca_backup_with_the_deploys_configuration():
    stack = build_stack(data("testhost"))
    (backup_unit, check_unit) = backup.units(stack)
    assert backup_unit["exec_start"] == (
        "/usr/local/sbin/kca-backup --config /etc/kca/backup/config.json backup --reason scheduled"
    )
    assert (backup_unit["schedule"], check_unit["schedule"]) == ("daily", "weekly")
