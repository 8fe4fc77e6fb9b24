"""The disaster-recovery drill on the test host: build state, back it up, let the disk die, rebuild with
restore, check that everything came back, and print the figures.

    python tools/drill.py            (./kca drill)

1. A fresh test host, deployed.
2. State: files in Dify's volumes (uploads and plugin storage) and a database with rows where Open
   WebUI keeps its own (webui.db, written through SQLite), beside the secrets the deploy generated.
3. Backups: the first, then an incremental one after more state, each through kca-backup.service.
4. The disk dies: `testhost down` removes the root filesystem; the repository (a folder of this
   machine bound into the guest) and the password (kept on this machine) survive, as off-site ones do.
5. Rebuild: a new test host and a deploy with KCA_RESTORE=latest, then the health table.
6. Checks: every secret byte-identical, every file identical, the rows in the database.
7. Figures: RTO (empty host to all healthy), RPO (the snapshot's age when the restore began), the
   repository's size, and the times of the first and the incremental backup.

Open WebUI's own users, chats and knowledge bases, and Dify's PostgreSQL, join the drill where their
images run on the test host; until then the drill says so and stops at the files they keep.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402

TESTHOST = str(ROOT / "testhost" / "testhost")
STATE_DIR = Path(os.environ.get("KCA_STATE_DIR", "/var/lib/kca-testhost"))


def step(message: str) -> None:
    print(f"\n==> [{time.strftime('%H:%M:%S')}] drill: {message}", flush=True)


def run(argv: list[str], **env: str) -> None:
    subprocess.run(argv, cwd=ROOT, check=True, env={**os.environ, "KCA_TARGET": "testhost", **env})


def on_host(command: str) -> str:
    done = subprocess.run([TESTHOST, "ssh", command], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def deploy(**env: str) -> None:
    run([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], **env)


def timed_backup() -> float:
    started = time.monotonic()
    on_host("systemctl start kca-backup.service")
    return time.monotonic() - started


def digests(paths: list[str]) -> dict[str, str]:
    """sha256 of every file under `paths` on the host (compared, never printed)."""
    quoted = " ".join(paths)
    out = on_host(f"find {quoted} -type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum")
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


def chat_rows(database: str) -> str:
    query = "SELECT count(*) FROM chat"
    return on_host(
        f"python3 -c \"import sqlite3; print(sqlite3.connect('{database}').execute('{query}').fetchone()[0])\""
    )


def main() -> int:
    stack = build_stack(group_data("testhost"))
    dify = stack.paths["dify"]
    webui_db = f"{stack.paths['openwebui']}/data/webui.db"
    checked = [stack.paths["secrets"], f"{dify}/volumes/app/storage", f"{dify}/volumes/plugin_daemon"]

    step("a fresh test host, deployed")
    run([TESTHOST, "down"])
    run([TESTHOST, "up"])
    deploy()

    step("state: uploads, plugin storage, a database with rows")
    on_host(
        f"mkdir -p {dify}/volumes/app/storage/upload_files {dify}/volumes/app/storage/privkeys "
        f"{dify}/volumes/plugin_daemon/plugin && "
        f"head -c 5000000 /dev/urandom > {dify}/volumes/app/storage/upload_files/report.pdf && "
        f"head -c 2048 /dev/urandom > {dify}/volumes/app/storage/privkeys/tenant.pem && "
        f"head -c 1000000 /dev/urandom > {dify}/volumes/plugin_daemon/plugin/openai_api_compatible.difypkg && "
        f"python3 -c \"import sqlite3; db = sqlite3.connect('{webui_db}'); "
        "db.execute('CREATE TABLE IF NOT EXISTS chat (id INTEGER PRIMARY KEY, body TEXT)'); "
        "db.executemany('INSERT INTO chat (body) VALUES (?)', [('drill message %d' % i,) for i in range(5000)]); "
        'db.commit()"'
    )

    step("backups: the first, then an incremental one")
    first = timed_backup()
    on_host(f"head -c 1000000 /dev/urandom > {dify}/volumes/app/storage/upload_files/second.pdf")
    incremental = timed_backup()
    status = json.loads(on_host(f"/usr/local/sbin/kca-backup --config {stack.backup.config_dir}/config.json status"))
    snapshot_time = status["last_backup"]["time"]
    before = digests(checked)
    rows_before = chat_rows(webui_db)
    size = subprocess.run(["du", "-sb", str(STATE_DIR / "backup-repository")], capture_output=True, text=True)

    step("the disk dies: the test host's root filesystem is removed")
    run([TESTHOST, "down"])

    step("rebuild: a new test host, a deploy with restore, the health table")
    started = time.monotonic()
    restore_began = time.time()
    run([TESTHOST, "up"])
    deploy(KCA_RESTORE="latest")
    run([sys.executable, "tools/health_check.py"])
    rto = time.monotonic() - started

    step("checks")
    after = digests(checked)
    problems = []
    secrets_dir = stack.paths["secrets"] + "/"
    secret_files = [p for p in before if p.startswith(secrets_dir)]
    if len(secret_files) != len(stack.secrets):
        problems.append(f"{len(secret_files)} secret files before the backup, the data declares {len(stack.secrets)}")
    changed = sorted(p for p in before if after.get(p) != before[p])
    problems += [f"{p} differs after the restore" for p in changed]
    rows_after = chat_rows(webui_db)
    if rows_after != rows_before:
        problems.append(f"the database holds {rows_after} rows, {rows_before} before")

    taken = datetime.datetime.fromisoformat(snapshot_time).timestamp()
    print("\nfigure                          value")
    print(f"RTO (empty host to healthy)     {rto:8.0f} s")
    print(f"RPO (snapshot age at restore)   {restore_began - taken:8.0f} s")
    print(f"repository size                 {int(size.stdout.split()[0]) / 1e6:8.1f} MB")
    print(f"first backup                    {first:8.1f} s")
    print(f"incremental backup              {incremental:8.1f} s")
    identical_secrets = len([p for p in secret_files if p not in changed])
    print(f"secrets byte-identical          {identical_secrets:8d} of {len(secret_files)}")
    print(f"files identical                 {len(before) - len(changed):8d} of {len(before)}")
    print(f"database rows                   {rows_after:>8} of {rows_before}")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
