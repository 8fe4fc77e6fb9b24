"""The disaster-recovery drill on the test host: build state, back it up, let the disk die, rebuild with
restore, check that everything came back, and print the figures.

    python tools/drill.py                 (./kca drill)  a fresh test host, deployed first
    python tools/drill.py --deployed      (a stage of ./kca test)  the test host just deployed and tested

1. A deployed test host (a fresh one, or the one ./kca test just deployed and tested).
2. State, through each application's own interface:
   - Open WebUI (its HTTP API): the admin account (the first sign-up; on a tested host, the account
     the host tests signed up), a chat with a question and the model's answer, and a knowledge base
     with an uploaded document, asked a question;
   - Dify's database: rows written into the PostgreSQL server that stands in for db_postgres
     (dify.database_standin), in its `dify` database;
   - files in Dify's volumes (uploads, a tenant's private key, plugin storage), beside the secrets the
     deploy generated.
3. Backups: the first, then more state (a second chat, more rows, another upload) and an incremental
   one, each through kca-backup.service, timed.
4. The disk dies: `testhost down` removes the root filesystem; the repository (a folder of this
   machine bound into the guest) and the password (kept on this machine) survive, as off-site ones do.
5. Rebuild: a new test host and a deploy with KCA_RESTORE=latest, then the health table.
6. Checks: the admin signs in with the same password, both chats are there with their messages,
   retrieval answers from the knowledge base with the right passage, the rows are in PostgreSQL (read
   with the restored password, as Dify's api would), every secret and file is byte-identical, and the
   health table is green.
7. Figures: RTO (empty host to all healthy), RPO (the snapshot's age when the rebuild began), the
   repository's size, and the times of the first and the incremental backup.

Exit 1 when a check fails (each failure is named); the figures are printed either way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "host"))

# The journeys' own helpers: the drill meets Open WebUI exactly as the host tests do.
import test_openwebui as journeys  # noqa: E402

from kca_stack import build_stack  # noqa: E402
from kca_stack.data import group_data  # noqa: E402
from tasks.backup import config_path  # noqa: E402
from tasks.dify import standin_context, standin_state  # noqa: E402
from testhost import contract  # noqa: E402
from tools.reach import Tunnels, ssh_args  # noqa: E402

TESTHOST = str(ROOT / "testhost" / "testhost")
INSTANCE = contract.instance()
QUESTION = "How are backups encrypted and where are they kept?"


def step(message: str) -> None:
    print(f"\n==> [{time.strftime('%H:%M:%S')}] drill: {message}", flush=True)


def run(argv: list[str], **env: str) -> None:
    subprocess.run(argv, cwd=ROOT, check=True, env={**os.environ, "KCA_TARGET": "testhost", **env})


def on_host(command: str) -> str:
    done = subprocess.run([TESTHOST, "ssh", command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"on the test host: {command[:120]}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def deploy(**env: str) -> None:
    run([sys.executable, "-m", "pyinfra", "-y", "inventory.py", "deploy.py"], **env)


def timed_backup() -> float:
    started = time.monotonic()
    on_host("systemctl start kca-backup.service")
    return time.monotonic() - started


def digests(paths: list[str]) -> dict[str, str]:
    """sha256 of every file under `paths` on the host (compared, never printed)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    out = on_host(f"find {quoted} -type f -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum")
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


class Database:
    """Dify's database in the stand-in, through its container (found as kca-backup finds it)."""

    def __init__(self, stack):
        self.context = standin_context(stack)
        secret = standin_state(stack).postgresql.password_secret
        self.password_file = f"{stack.paths['secrets']}/{secret}"

    def container(self) -> str:
        c = self.context
        return on_host(
            f"docker ps -q --filter label=com.docker.compose.project={c['project']} "
            f"--filter label=com.docker.compose.service={c['service']}"
        )

    def sql(self, statement: str, over_tcp: bool = False) -> str:
        """psql in the container: over the local socket, or over TCP with the password from the host's
        secret (scram-sha-256, as Dify's api connects; the password stays on the host)."""
        c = self.context
        tcp = f'-e PGPASSWORD="$(cat {self.password_file})" ' if over_tcp else ""
        host = "-h 127.0.0.1 " if over_tcp else ""
        return on_host(
            f"docker exec {tcp}{self.container()} psql -v ON_ERROR_STOP=1 -At {host}"
            f"-U {c['superuser']} -d {c['database']} -c {shlex.quote(statement)}"
        )

    def write_rows(self, first: int, count: int) -> None:
        # A new table on the first write: a drill run again on a kept host starts from no rows.
        fresh = "DROP TABLE IF EXISTS drill_rows; " if first == 1 else ""
        self.sql(
            f"{fresh}CREATE TABLE IF NOT EXISTS drill_rows (id integer PRIMARY KEY, body text NOT NULL); "
            f"INSERT INTO drill_rows SELECT i, md5(i::text) FROM generate_series({first}, {first + count - 1}) i"
        )

    def rows(self, over_tcp: bool = False) -> str:
        """count:md5 of every row in order: equal only when every row came back."""
        return self.sql(
            "SELECT count(*) || ':' || md5(coalesce(string_agg(id || '=' || body, ',' ORDER BY id), '')) "
            "FROM drill_rows",
            over_tcp,
        )


class WebUI:
    """Open WebUI through an SSH tunnel to the host's loopback (its port is internal)."""

    def __init__(self, stack):
        self.stack = stack
        self.tunnels = Tunnels(ssh_args(f"root@{INSTANCE.guest_address}", INSTANCE))
        self.url = f"http://127.0.0.1:{self.tunnels.local_port(stack.services[stack.openwebui['service']].port)}"

    def close(self) -> None:
        self.tunnels.close()

    def ready(self) -> None:
        if not journeys.wait_until_ready(self.url):
            raise RuntimeError("Open WebUI did not answer /health")

    def save_chat(self, admin: dict, model: str, question: str) -> tuple[str, list[dict]]:
        """A question, the model's real answer, saved as a chat the way the UI saves one: (id, messages)."""
        messages = [{"role": "user", "content": question}]
        messages.append({"role": "assistant", "content": journeys.complete(self.url, admin, model, messages)})
        history, parent = {}, None
        for message in messages:
            key = str(uuid.uuid4())
            history[key] = {**message, "id": key, "parentId": parent, "childrenIds": [], "model": model}
            if parent:
                history[parent]["childrenIds"].append(key)
            parent = key
        chat = {
            "title": f"drill: {question[:40]}",
            "models": [model],
            "messages": list(history.values()),
            "history": {"messages": history, "currentId": parent},
        }
        answer = requests.post(
            f"{self.url}/api/v1/chats/new", headers=admin["headers"], json={"chat": chat}, timeout=60
        )
        answer.raise_for_status()
        return answer.json()["id"], messages

    def chat_messages(self, admin: dict, chat_id: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/chats/{chat_id}", headers=admin["headers"], timeout=60)
        answer.raise_for_status()
        chat = answer.json()["chat"]
        listed = chat.get("messages") or list(chat.get("history", {}).get("messages", {}).values())
        return [{"role": m["role"], "content": m["content"]} for m in listed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployed", action="store_true", help="use the deployed test host (./kca test's stage)")
    args = parser.parse_args()
    stack = build_stack(group_data("testhost"))
    dify = stack.paths["dify"]
    checked = [stack.paths["secrets"], f"{dify}/volumes/app/storage", f"{dify}/volumes/plugin_daemon"]
    database = Database(stack)
    problems: list[str] = []
    figures: dict[str, str] = {}

    if not args.deployed:
        step("a fresh test host, deployed")
        run([TESTHOST, "down"])
        run([TESTHOST, "up"])
        deploy()

    step("state: Open WebUI's admin, a chat and a knowledge base; rows in Dify's database; uploads")
    webui = WebUI(stack)
    try:
        webui.ready()
        admin, how = journeys.sign_up_or_in(webui.url)
        print(f"Open WebUI: {how}")
        model = sorted(journeys.listed_models(webui.url, admin))[0]
        chats = [webui.save_chat(admin, model, "What does a restic repository keep?")]
        knowledge_id = journeys.create_knowledge_base(webui.url, admin, "drill: kca server notes")
        found = journeys.retrieve(webui.url, admin, knowledge_id, QUESTION)
        if not (found and "restic" in found[0]):
            problems.append("retrieval did not answer with the backup passage before the backup")
    finally:
        webui.close()
    database.write_rows(1, 5000)
    on_host(
        f"mkdir -p {dify}/volumes/app/storage/upload_files {dify}/volumes/app/storage/privkeys "
        f"{dify}/volumes/plugin_daemon/plugin && "
        f"head -c 5000000 /dev/urandom > {dify}/volumes/app/storage/upload_files/report.pdf && "
        f"head -c 2048 /dev/urandom > {dify}/volumes/app/storage/privkeys/tenant.pem && "
        f"head -c 1000000 /dev/urandom > {dify}/volumes/plugin_daemon/plugin/openai_api_compatible.difypkg"
    )

    step("backups: the first, then more state and an incremental one")
    first = timed_backup()
    webui = WebUI(stack)
    try:
        admin = journeys.signed_in(admin, journeys.sign_in(webui.url, admin))
        chats.append(webui.save_chat(admin, model, "Where does the repository password live?"))
    finally:
        webui.close()
    database.write_rows(5001, 1000)
    on_host(f"head -c 1000000 /dev/urandom > {dify}/volumes/app/storage/upload_files/second.pdf")
    incremental = timed_backup()
    status = json.loads(on_host(f"/usr/local/sbin/kca-backup --config {config_path(stack)} status"))
    snapshot_time = status["last_backup"]["time"]
    before = digests(checked)
    rows_before = database.rows()
    repository = INSTANCE.state_dir / "backup-repository"
    size = subprocess.run(["du", "-sb", str(repository)], capture_output=True, text=True, check=True)

    step("the disk dies: the test host's root filesystem is removed")
    run([TESTHOST, "down"])

    step("rebuild: a new test host, a deploy with restore, the health table")
    started = time.monotonic()
    rebuild_began = time.time()
    run([TESTHOST, "up"])
    host_up = time.monotonic() - started
    deploy(KCA_RESTORE="latest")
    deployed = time.monotonic() - started
    health = subprocess.run([sys.executable, "tools/health_check.py"], cwd=ROOT)
    rto = time.monotonic() - started
    if health.returncode != 0:
        problems.append("the health table is not green after the rebuild")

    step("checks")
    webui = WebUI(stack)
    try:
        webui.ready()
        answer = journeys.sign_in(webui.url, admin)
        if answer.status_code != 200:
            problems.append(f"the admin cannot sign in with the same password: HTTP {answer.status_code}")
        else:
            admin = journeys.signed_in(admin, answer)
            for chat_id, messages in chats:
                if webui.chat_messages(admin, chat_id) != messages:
                    problems.append(f"chat {chat_id} did not come back with its {len(messages)} messages")
            found = journeys.retrieve(webui.url, admin, knowledge_id, QUESTION)
            if not (found and "restic" in found[0]):
                problems.append(f"retrieval from the knowledge base did not answer with the passage: {found[:1]}")
    finally:
        webui.close()
    try:
        rows_after = database.rows(over_tcp=True)
    except RuntimeError as error:
        rows_after = "0:"
        problems.append(f"Dify's database cannot be read with its password as Dify's api reads it: {error}")
    if rows_after != rows_before:
        held, wanted = rows_after.split(":")[0], rows_before.split(":")[0]
        problems.append(f"Dify's database holds {held} rows (or other ones), {wanted} before the disk died")
    after = digests(checked)
    secrets_dir = stack.paths["secrets"] + "/"
    secret_files = [p for p in before if p.startswith(secrets_dir)]
    if len(secret_files) < len(stack.secrets):
        problems.append(f"{len(secret_files)} secret files before the backup, the data declares {len(stack.secrets)}")
    changed = sorted(p for p in before if after.get(p) != before[p])
    problems += [f"{p} differs after the restore" for p in changed]

    taken = datetime.datetime.fromisoformat(snapshot_time).timestamp()
    figures = {
        "RTO (empty host to all healthy)": f"{rto:8.0f} s",
        "  test host up": f"{host_up:8.0f} s",
        "  deploy with restore": f"{deployed - host_up:8.0f} s",
        "  health table": f"{rto - deployed:8.0f} s",
        "RPO (snapshot age at the rebuild)": f"{rebuild_began - taken:8.0f} s",
        "repository size": f"{int(size.stdout.split()[0]) / 1e6:8.1f} MB",
        "first backup": f"{first:8.1f} s",
        "incremental backup": f"{incremental:8.1f} s",
        "secrets byte-identical": f"{len([p for p in secret_files if p not in changed]):8d} of {len(secret_files)}",
        "files byte-identical": f"{len(before) - len(changed):8d} of {len(before)}",
        "chats with their messages": f"{len(chats):8d}",
        "rows in Dify's database": f"{rows_after.split(':')[0]:>8} of {rows_before.split(':')[0]}",
    }
    print(f"\n{'drill figure':36} value")
    for name, value in figures.items():
        print(f"{name:36} {value}")
    for problem in problems:
        print(f"FAILED: {problem}")
    print("the drill passed" if not problems else f"the drill failed: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
