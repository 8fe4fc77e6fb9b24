"""kca-backup, the host's backup and restore program, run for real: Debian's restic against a local
repository in a temporary folder, SQLite databases written while they are captured, and every refusal
of the bad-input table (wrong password, corrupted pack, snapshot missing a service's state, a host that
already holds state, older version pins, a backup killed mid-run).

The "host" is a folder tree under a temporary directory: the state entries point into it, as the
deploy's config points into /etc/kca and the Docker volumes. Entries captured through Docker
(pg_dumpall, stop-copy-start) need the containers: they are exercised on the test host (tests/host).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "files/usr/local/sbin/kca-backup"
RESTIC = shutil.which("restic")
needs_restic = pytest.mark.skipif(RESTIC is None, reason="restic is not installed here (apt-get install restic)")


def load_script():
    loader = importlib.machinery.SourceFileLoader("kca_backup", str(SCRIPT))
    spec = importlib.util.spec_from_loader("kca_backup", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


kca_backup = load_script()


# --- the pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("older", "newer", "order"),
    [
        ("v0.12.4", "v0.12.4", 0),
        ("v0.12.4", "v0.12.10", -1),
        ("v0.13.0", "v0.12.10", 1),
        ("1.13.3", "1.14.0", -1),
        ("1.14", "1.14.0", 0),
        ("1.14.0", "1.14.0-rc1", None),
        ("main", "1.14.0", None),
    ],
)
def test_version_order(older, newer, order):
    assert kca_backup.compare_versions(older, newer) == order


def test_a_snapshot_from_newer_pins_is_refused_with_the_reason():
    entries = [{"name": "dify-db", "pin": "dify.tag"}, {"name": "dify-api", "pin": "dify.tag"}]
    reasons = kca_backup.pin_refusals({"dify.tag": "1.14.0"}, {"dify.tag": "1.13.3"}, entries)
    assert reasons == [
        "dify-db, dify-api: the snapshot was written by dify.tag = 1.14.0, this host is pinned to 1.13.3; a "
        "database migrated forward does not go back. Fix: set dify.tag to 1.14.0 (or newer) and restore again"
    ]
    # Onto newer pins the restore goes ahead (the deploy snapshots again before the migration).
    assert kca_backup.pin_refusals({"dify.tag": "1.13.3"}, {"dify.tag": "1.14.0"}, entries) == []


def test_the_overwrite_refusal_names_what_would_be_overwritten():
    text = kca_backup.overwrite_refusal({"secrets": ["/etc/kca/secrets/llm-api-key"]})
    assert "secrets: /etc/kca/secrets/llm-api-key" in text
    assert "Nothing was changed" in text and "--force" in text


def test_restic_command_line_and_environment():
    config = {"repository": "sftp:backup@nas:/srv/kca", "password_file": "/etc/kca/backup/restic-password"}
    config["work_dir"] = "/var/lib/kca-backup"
    assert kca_backup.restic_command(config, "check") == ["restic", "--repo", "sftp:backup@nas:/srv/kca", "check"]
    env = kca_backup.restic_environment(config, {"RESTIC_PASSWORD": "from-the-shell"})
    assert env["RESTIC_PASSWORD_FILE"] == "/etc/kca/backup/restic-password"
    assert "RESTIC_PASSWORD" not in env, "only the installed password file may open the repository"
    assert kca_backup.retention_args({"keep_daily": 7, "keep_weekly": 5}) == [
        "--keep-daily",
        "7",
        "--keep-weekly",
        "5",
    ]


def test_live_sqlite_files_are_left_to_the_consistent_copy():
    entry = {"paths": ["/data"], "databases": ["webui.db"], "exclude": ["cache"]}
    assert kca_backup.excluded_patterns(entry) == [
        "/data/cache",
        "/data/webui.db",
        "/data/webui.db-wal",
        "/data/webui.db-shm",
        "/data/webui.db-journal",
    ]


# --- the real thing -----------------------------------------------------------------------------------


class Host:
    """A host's state under a temporary folder, a repository beside it, and kca-backup's config."""

    def __init__(self, root: Path, password: str = "correct horse battery staple"):
        self.root = root
        self.secrets = root / "host/etc/kca/secrets"
        self.webui = root / "host/home/kca/openwebui/data"
        self.storage = root / "host/opt/dify/volumes/app/storage"
        self.models = root / "host/models"
        self.password_file = root / "operator/restic-password"
        self.password_file.parent.mkdir(parents=True)
        self.password_file.write_text(password + "\n")
        self.repository = root / "repository"
        self.config_file = root / "config.json"
        self.pins = {"dify.tag": "1.13.3", "openwebui.tag": "v0.12.4"}
        self.entries = [
            {
                "name": "open-webui",
                "kind": "sqlite",
                "capture": "sqlite-backup",
                "paths": [str(self.webui)],
                "databases": ["webui.db"],
                "exclude": ["cache"],
                "pin": "openwebui.tag",
            },
            {"name": "dify-api", "kind": "files", "capture": "copy", "paths": [str(self.storage)], "pin": "dify.tag"},
            {"name": "secrets", "kind": "secrets", "capture": "copy", "paths": [str(self.secrets)]},
            {
                "name": "model-records",
                "kind": "files",
                "capture": "copy",
                "paths": [str(self.models)],
                "only": ["*.sha256", ".snapshot-complete"],
                "restore_to": str(root / "host/var/lib/kca-backup/model-records"),
            },
        ]
        self.write_config()

    def write_config(self):
        config = {
            "repository": str(self.repository),
            "password_file": str(self.password_file),
            "work_dir": str(self.root / "host/var/lib/kca-backup"),
            "secrets_dir": str(self.secrets),
            "retention": {"keep_daily": 7},
            # Every pack, so that a damaged one is always found (the data reads a random share weekly).
            "check_read_data_subset": "100%",
            "pins": self.pins,
            "state": self.entries,
        }
        self.config_file.write_text(json.dumps(config))

    def run(self, *args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--config", str(self.config_file), *args],
            capture_output=True,
            text=True,
        )
        if check_rc is not None:
            assert run.returncode == check_rc, run.stdout + run.stderr
        return run

    def make_state(self):
        self.secrets.mkdir(parents=True)
        os.chmod(self.secrets, 0o700)
        for name in ("llm-api-key", "dify-db-password"):
            (self.secrets / name).write_bytes(os.urandom(32).hex().encode())
            os.chmod(self.secrets / name, 0o600)
        self.webui.mkdir(parents=True)
        (self.webui / "uploads").mkdir()
        (self.webui / "uploads/notes.txt").write_text("the knowledge base's source\n")
        (self.webui / "cache").mkdir()
        (self.webui / "cache/embedding-model.bin").write_bytes(b"\0" * 1024)
        db = sqlite3.connect(self.webui / "webui.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE chat (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO chat (body) VALUES (?)", [(f"message {i}",) for i in range(1000)])
        db.commit()
        db.close()
        self.storage.mkdir(parents=True)
        (self.storage / "privkeys").mkdir()
        (self.storage / "privkeys/tenant.pem").write_bytes(os.urandom(512))
        weights = self.models / "gpt-oss"
        weights.mkdir(parents=True)
        (weights / "model.gguf").write_bytes(os.urandom(4096))
        (weights / "model.gguf.sha256").write_text("abc  model.gguf\n")

    def files(self) -> dict[str, bytes]:
        """Every file of the state (not the live database, compared by its rows)."""
        found = {}
        for base in (self.secrets, self.webui, self.storage):
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.name.startswith("webui.db"):
                    found[str(path)] = path.read_bytes()
        return found

    def chat_rows(self) -> int:
        return sqlite3.connect(self.webui / "webui.db").execute("SELECT count(*) FROM chat").fetchone()[0]

    def destroy(self):
        """The disk dies: everything of the host goes, the repository and the operator's password stay."""
        shutil.rmtree(self.root / "host")


@pytest.fixture
def server(tmp_path):
    if RESTIC is None:
        pytest.skip("restic is not installed here (apt-get install restic)")
    host = Host(tmp_path)
    host.make_state()
    host.run("init")
    return host


@needs_restic
def test_backup_then_restore_onto_a_fresh_host(server):
    # The application keeps writing while the online backup API copies the database.
    stop = threading.Event()

    def write():
        db = sqlite3.connect(server.webui / "webui.db")
        while not stop.is_set():
            db.execute("INSERT INTO chat (body) VALUES ('written during the backup')")
            db.commit()
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        server.run("backup", "--reason", "test")
    finally:
        stop.set()
        writer.join()
    before = server.files()
    modes = {p: os.stat(p).st_mode & 0o777 for p in before}
    record = json.loads((server.root / "host/var/lib/kca-backup/last-backup.json").read_text())

    server.destroy()
    restored = server.run("restore", "latest")
    assert "open-webui: restored" in restored.stdout

    after = server.files()
    assert after == {p: b for p, b in before.items() if "/cache/" not in p}, (
        "every state file comes back byte-identical"
    )
    assert not (server.webui / "cache").exists(), "recreatable caches are left out"
    assert {p: os.stat(p).st_mode & 0o777 for p in after} == {p: m for p, m in modes.items() if p in after}
    db = sqlite3.connect(server.webui / "webui.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert server.chat_rows() >= 1000
    # Verification records come back beside the live tree, never as records of weights that are gone.
    assert not (server.models / "gpt-oss/model.gguf.sha256").exists()
    parked = server.root / f"host/var/lib/kca-backup/model-records{server.models}/gpt-oss/model.gguf.sha256"
    assert parked.read_text() == "abc  model.gguf\n"
    assert not (server.root / f"host/var/lib/kca-backup/model-records{server.models}/gpt-oss/model.gguf").exists()
    pins = json.loads((server.root / "host/var/lib/kca-backup/pins.json").read_text())
    assert pins == server.pins, "the restore records the pins the state was written with"
    print(f"\nfirst backup: {record['seconds']} s, {record['data_added']} bytes added")


@needs_restic
def test_a_wrong_password_is_a_clear_error_and_touches_nothing(server):
    server.run("backup")
    server.destroy()
    server.password_file.write_text("not the password\n")
    run = server.run("restore", "latest", check_rc=2)
    assert "the repository password is wrong" in run.stdout
    assert "Nothing on this host was touched" in run.stdout
    assert not (server.root / "host/etc").exists() and not (server.root / "host/home").exists()


def pack_holding(host: Host, blob_type: str) -> Path:
    """A pack file of the repository that holds blobs of `blob_type` (tree or data), from its index."""
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(host.password_file)}
    restic = [RESTIC, "--repo", str(host.repository), "--no-cache"]
    for index in subprocess.run([*restic, "list", "index"], env=env, capture_output=True, text=True).stdout.split():
        packs = json.loads(subprocess.run([*restic, "cat", "index", index], env=env, capture_output=True).stdout)
        for pack in packs["packs"]:
            if {blob["type"] for blob in pack["blobs"]} == {blob_type}:
                return next((host.repository / "data").rglob(pack["id"]))
    raise AssertionError(f"no pack of {blob_type} blobs")


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(100, 116):
        data[offset] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


@needs_restic
@pytest.mark.parametrize(
    ("blob_type", "refusal"),
    [
        # Trees are read by every check: the restore's own check refuses.
        ("tree", "the repository does not check clean"),
        # Data is read by the weekly check's subset and by the restore, which verifies every blob.
        ("data", "restic restore failed"),
    ],
)
def test_a_corrupted_pack_fails_the_check_and_the_restore_refuses(server, blob_type, refusal):
    server.run("backup")
    flip_bytes(pack_holding(server, blob_type))

    check = server.run("check", check_rc=1)
    assert "restic check failed" in check.stdout and "repository contains errors" in check.stdout
    record = json.loads((server.root / "host/var/lib/kca-backup/last-check.json").read_text())
    assert record["ok"] is False, "the health table reads this record"

    server.destroy()
    run = server.run("restore", "latest", check_rc=3)
    assert refusal in run.stdout and "ciphertext verification failed" in run.stdout
    assert "Nothing was changed" in run.stdout
    assert not (server.root / "host/etc").exists() and not (server.root / "host/home").exists()


@needs_restic
def test_a_snapshot_missing_a_services_state_names_it_and_restores_nothing_for_it(server):
    server.run("backup")
    server.destroy()
    # The host now declares a service the snapshot never held.
    plugin = server.root / "host/opt/dify/volumes/plugin_daemon"
    server.entries.append({"name": "dify-plugin-daemon", "kind": "files", "capture": "copy", "paths": [str(plugin)]})
    server.write_config()
    run = server.run("restore", "latest", check_rc=4)
    assert "dify-plugin-daemon: the snapshot holds no state for it; nothing restored for it" in run.stdout
    assert not plugin.exists()
    assert server.chat_rows() == 1000, "the other services are restored"


@needs_restic
def test_a_host_that_holds_state_is_refused_unless_forced(server):
    server.run("backup")
    (server.secrets / "llm-api-key").write_text("a secret generated after the backup")
    run = server.run("restore", "latest", check_rc=3)
    assert "this host already holds state that the restore would overwrite" in run.stdout
    assert f"secrets: {server.secrets}/" in run.stdout
    assert (server.secrets / "llm-api-key").read_text() == "a secret generated after the backup", "nothing changed"

    server.run("restore", "latest", "--force")
    assert (server.secrets / "llm-api-key").read_text() != "a secret generated after the backup"
    assert not list(server.secrets.parent.glob("*.kca-re*")), "no half-swapped folders are left"


@needs_restic
def test_version_pins_older_refused_newer_restored(server):
    server.run("backup")
    server.destroy()
    server.pins = {"dify.tag": "1.12.0", "openwebui.tag": "v0.12.4"}
    server.write_config()
    run = server.run("restore", "latest", check_rc=3)
    assert "refusing to restore onto older versions" in run.stdout
    assert "dify-api: the snapshot was written by dify.tag = 1.13.3, this host is pinned to 1.12.0" in run.stdout
    assert not (server.root / "host/etc").exists()

    server.pins = {"dify.tag": "1.14.0", "openwebui.tag": "v0.12.4"}
    server.write_config()
    server.run("restore", "latest")
    assert server.chat_rows() == 1000
    # The host's pins differ from the restored state's: before-start snapshots it before the migration.
    started = server.run("before-start")
    assert "snapshot" in started.stdout
    record = json.loads((server.root / "host/var/lib/kca-backup/last-backup.json").read_text())
    assert record["reason"] == "before dify.tag 1.13.3 -> 1.14.0"
    assert record["pins"]["dify.tag"] == "1.13.3", "the snapshot records the version that wrote the state"
    assert "have not changed" in server.run("before-start").stdout


@needs_restic
def test_a_backup_killed_mid_run_is_completed_by_the_next_one(server):
    big = server.storage / "upload.bin"
    big.write_bytes(os.urandom(160 * 1024 * 1024))
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(server.config_file), "backup"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Killed once restic is writing packs, as a power cut or an OOM kill would.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((server.repository / "data").rglob("*[0-9a-f]")):
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (server.root / "host/var/lib/kca-backup/last-backup.json").exists(), "the kill came mid-run"

    started = time.monotonic()
    server.run("backup")
    print(f"\nbackup after the kill: {time.monotonic() - started:.1f} s")
    server.run("check")
    assert json.loads((server.root / "host/var/lib/kca-backup/last-check.json").read_text())["ok"] is True


@needs_restic
def test_the_health_table_reads_the_age_and_turns_red_on_a_failed_check(server):
    sys.path.insert(0, str(SCRIPT.parents[4]))
    from tools.health_check import backup_health

    def row(units: str = "inactive\ninactive", timer_age_s: int = 60):
        status = server.run("status").stdout
        return backup_health(f"{status}@@\n{units}\n@@\n{timer_age_s}\n", max_age_hours=36)

    assert row() == ("active", "no snapshot yet", False)
    assert row(timer_age_s=40 * 3600)[2] is True, "a timer that never produced a snapshot in 36 h is red"
    server.run("backup")
    state, health, problem = row()
    assert (state, health, problem) == ("active", "0.0 h old", False)
    assert row(units="failed\ninactive") == ("failed", "see journalctl -u kca-backup", True)
    flip_bytes(pack_holding(server, "data"))
    server.run("check", check_rc=1)
    state, _health, problem = row()
    assert (state, problem) == ("check failed", True)


POSTGRES_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


@pytest.mark.skipif(POSTGRES_BIN is None, reason="PostgreSQL's server binaries are not installed here")
def test_a_pg_dumpall_loads_into_a_fresh_cluster_with_errors_stopping_it():
    """What the restore does with Dify's database, with a real PostgreSQL: pg_dumpall of a cluster
    holding dify and dify_plugin, loaded into a freshly initialised one (the image's first start) under
    ON_ERROR_STOP. Unfiltered, the dump's CREATE ROLE of the superuser stops the load."""
    # PostgreSQL refuses to run as root: as root, the clusters belong to nobody, in a folder it can reach.
    runner = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    tmp_path = Path(tempfile.mkdtemp(prefix="kca-pg-"))
    os.chmod(tmp_path, 0o777)

    def pg(*argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*runner, *argv], capture_output=True, text=True, cwd=tmp_path, **kwargs)

    def cluster(name: str, port: int) -> list[str]:
        data = tmp_path / name
        init = pg(str(POSTGRES_BIN / "initdb"), "-U", "postgres", "-A", "trust", "-D", str(data))
        assert init.returncode == 0, init.stderr
        options = f"-k {tmp_path} -p {port} -c listen_addresses=''"
        started = pg(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(data) + ".log", "start"
        )
        assert started.returncode == 0, started.stderr
        return [str(POSTGRES_BIN / "psql"), "-h", str(tmp_path), "-p", str(port), "-U", "postgres", "-q"]

    source, fresh = cluster("source", 55431), cluster("fresh", 55432)
    try:
        for database in ("dify", "dify_plugin"):
            assert pg(*source, "-c", f"CREATE DATABASE {database}").returncode == 0
        assert (
            pg(
                *source,
                "-d",
                "dify",
                "-c",
                "CREATE TABLE apps (id serial, name text); "
                "INSERT INTO apps (name) SELECT 'app ' || g FROM generate_series(1, 500) g",
            ).returncode
            == 0
        )
        dump_file = tmp_path / "dumpall.sql"
        dumped = pg(str(POSTGRES_BIN / "pg_dumpall"), "-h", str(tmp_path), "-p", "55431", "-U", "postgres")
        assert dumped.returncode == 0, dumped.stderr
        dump_file.write_text(dumped.stdout)

        load = [*fresh, "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
        # Unfiltered, the first statement stops the load, before anything else is created.
        unfiltered = pg(*load, input=dumped.stdout)
        assert unfiltered.returncode != 0 and 'role "postgres" already exists' in unfiltered.stderr
        loaded = pg(*load, input=kca_backup.filtered_dump(str(dump_file), "postgres"))
        assert loaded.returncode == 0, loaded.stderr
        rows = pg(*fresh, "-d", "dify", "-At", "-c", "SELECT count(*) FROM apps")
        assert rows.stdout.strip() == "500"
        assert "dify_plugin" in pg(*fresh, "-At", "-c", "SELECT datname FROM pg_database").stdout
    finally:
        for name in ("source", "fresh"):
            pg(str(POSTGRES_BIN / "pg_ctl"), "-D", str(tmp_path / name), "-m", "immediate", "stop")
        shutil.rmtree(tmp_path, ignore_errors=True)
