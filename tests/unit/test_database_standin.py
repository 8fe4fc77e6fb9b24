"""The PostgreSQL server that stands in for Dify's db_postgres where Dify's images cannot be pulled
(dify.database_standin, the test host): kca-backup finds it where it looks for Dify's database, it keeps
its data where upstream's compose file does, with the password Dify's api is given, its image is built
from Debian's package like Open WebUI's from PyPI's, and its entrypoint starts a cluster as the official
image's does (run here with a real PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from kca_stack import build_stack
from kca_stack.data import group_data
from tasks import dify, images
from tasks.backup import backup_config
from tasks.docker import secret_placeholder
from tasks.render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "files/opt/ai-platform/images/dify-db/docker-entrypoint.sh"


@pytest.fixture(scope="module")
def stack():
    return build_stack(group_data("testhost"))


def render(template: str, context: dict) -> str:
    """The template as the deploy renders it (one Jinja environment, tasks/render.py)."""
    return render_template(template, **context)


def database_entry(stack) -> dict:
    return next(e for e in backup_config(stack)["state"] if e["kind"] == "postgresql")


def test_kca_backup_finds_the_standin_where_it_looks_for_difys_database(stack):
    entry = database_entry(stack)
    context = dify.standin_context(stack)
    compose = yaml.safe_load(render(dify.STANDIN_COMPOSE_TEMPLATE, context))
    # kca-backup's container filter: the compose project (`-p`) and service labels.
    assert (context["project"], list(compose["services"])) == (entry["compose_project"], [entry["compose_service"]])
    service = compose["services"][entry["compose_service"]]
    # Upstream's volume, superuser and PGDATA; the image the restore loads a dump with.
    assert service["volumes"] == [f"{entry['paths'][0]}:{entry['postgresql']['mount']}"]
    assert service["environment"]["POSTGRES_USER"] == entry["postgresql"]["user"]
    assert service["environment"]["PGDATA"] == entry["postgresql"]["pgdata"]
    assert service["environment"]["POSTGRES_DB"] == stack.dify["environment"]["DB_DATABASE"]
    assert service["image"] == entry["postgresql"]["image"] == "kca-local/postgres:15-alpine"
    assert service["ports"] == ["127.0.0.1:5432:5432"]


def test_the_standin_holds_the_password_dify_gives_its_api(stack):
    entry = database_entry(stack)
    assert entry["postgresql"]["password_secret"] == stack.dify["secrets"]["DB_PASSWORD"]
    env = render(
        dify.STANDIN_ENV_TEMPLATE,
        {"source": "t", "env_file": "/e", "password": secret_placeholder(entry["postgresql"]["password_secret"])},
    )
    assert "POSTGRES_PASSWORD=@@secret:dify-db-password@@" in env.splitlines()


def test_production_restores_with_upstreams_image_and_starts_no_standin():
    production = build_stack(group_data("production"))
    assert production.dify["database_standin"] is None
    assert database_entry(production)["postgresql"]["image"] == "postgres:15-alpine"


def test_the_image_is_debians_package_installed_offline_and_its_recipe_covers_the_entrypoint(stack, tmp_path):
    build = stack.dify["database_standin"]["local_build"]
    context = images.dockerfile_context(stack, "PostgreSQL", build, "/unused/venv", 5432)
    dockerfile = images.render_dockerfile(context)
    assert "COPY venv" not in dockerfile and "COPY debs /tmp/kca-debs" in dockerfile
    assert "apt-get install -y -q --no-install-recommends" in dockerfile and "apt-get update" not in dockerfile
    assert "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in dockerfile
    assert 'ENTRYPOINT ["docker-entrypoint.sh"]' in dockerfile and "STOPSIGNAL SIGINT" in dockerfile
    args = images.build_args("ref", "recipe", "/ctx", "", build)
    assert args[5:] == ["--apt", "postgresql-15"]
    # Another entrypoint is another image.
    changed = tmp_path / "docker-entrypoint.sh"
    changed.write_text(ENTRYPOINT.read_text() + "# changed\n")
    other = {**build, "files": {"/usr/local/bin/docker-entrypoint.sh": str(changed)}}
    assert images.recipe_of(dockerfile, build) != images.recipe_of(dockerfile, other)


def test_open_webuis_image_is_still_its_venv_on_the_base(stack):
    build = stack.openwebui["local_build"]
    dockerfile = images.render_dockerfile(images.dockerfile_context(stack, "Open WebUI", build, "/v/venv", 8080))
    assert "COPY venv /v/venv" in dockerfile and "RUN " not in dockerfile and "ENTRYPOINT" not in dockerfile


POSTGRES_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(POSTGRES_BIN is None, reason="PostgreSQL's server binaries are not installed here")
def test_the_entrypoint_creates_a_cluster_like_the_official_image_and_keeps_one_it_finds():
    """An empty PGDATA: a cluster whose superuser has POSTGRES_PASSWORD over TCP (a wrong one refused)
    and POSTGRES_DB. A PGDATA that holds a cluster (a restored one) is started as it is: another
    POSTGRES_PASSWORD changes nothing."""
    # PostgreSQL refuses to run as root; the entrypoint drops to `postgres` only as root inside the
    # image, so here it runs as nobody from the start.
    runner = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="kca-standin-"))
    os.chmod(tmp, 0o777)
    port = free_port()
    env = {
        "PATH": f"{POSTGRES_BIN}:/usr/bin:/bin",
        "PGDATA": str(tmp / "data" / "pgdata"),
        "POSTGRES_DB": "dify",
    }
    server_args = ["postgres", "-c", f"port={port}", "-c", f"unix_socket_directories={tmp}"]

    def start(password: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *runner,
                "env",
                *(f"{k}={v}" for k, v in {**env, "POSTGRES_PASSWORD": password}.items()),
                str(ENTRYPOINT),
                *server_args,
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def query(password: str) -> subprocess.CompletedProcess:
        argv = [str(POSTGRES_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "dify"]
        return subprocess.run(
            [*argv, "-At", "-c", "SELECT current_database()"],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "3"},
        )

    def wait_ready(server: subprocess.Popen) -> None:
        ready = [str(POSTGRES_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        for _ in range(60):
            if subprocess.run(ready, capture_output=True).returncode == 0:
                return
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.5)
        pytest.fail("the server did not become ready")

    (tmp / "data").mkdir()
    os.chmod(tmp / "data", 0o777)
    server = start("first-password")
    try:
        wait_ready(server)
        assert query("first-password").stdout.strip() == "dify"
        assert "password authentication failed" in query("wrong").stderr
    finally:
        server.terminate()
        server.wait(30)
    server = start("another-password")
    try:
        wait_ready(server)
        assert query("first-password").stdout.strip() == "dify"
        assert "password authentication failed" in query("another-password").stderr
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
