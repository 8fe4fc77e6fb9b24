"""The compose files rendered from the committed data: Open WebUI's lists every LLM back end with a key
each, Dify's override publishes exactly the stack's ports on the stack's addresses (Weaviate nothing),
the .env replaces every secret upstream ships a default for, and a real compose parser accepts them.

Dify's own compose file is never copied into this repository: a minimal one with upstream's service
names and upstream's own port lines (nginx, plugin_daemon) stands in for it here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import yaml

from kca_stack import build_stack
from kca_stack.data import group_data
from tasks import dify, openwebui
from tasks.docker import published_lines
from tasks.images import image_ref
from tasks.render import render as render_template
from tasks.util import local_artifact

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str, path: Path):
    """The host-side scripts have no .py suffix: load them as modules to test their functions."""
    loader = SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


render_secrets = load_script("kca_render_secrets", ROOT / "files/usr/local/sbin/kca-render-secrets")
compose_ports = load_script("kca_compose_ports", ROOT / "files/usr/local/sbin/kca-compose-ports")

# What Dify's docker-compose.yaml (1.13.x) ships a default for, and must never run with.
UPSTREAM_DEFAULT_SECRETS = [
    "SECRET_KEY",
    "DB_PASSWORD",
    "REDIS_PASSWORD",
    "CELERY_BROKER_URL",
    "SANDBOX_API_KEY",
    "PLUGIN_DAEMON_KEY",
    "PLUGIN_DIFY_INNER_API_KEY",
    "WEAVIATE_API_KEY",
    "WEAVIATE_AUTHENTICATION_APIKEY_ALLOWED_KEYS",
    "INIT_PASSWORD",
    "CODE_EXECUTION_API_KEY",
]

# Upstream's service names, its port lines (nginx, plugin_daemon) and every variable through which a
# secret reaches a service, with upstream's own defaults (docker/docker-compose.yaml at the pinned
# tag): what the .env must replace, and what the services must agree on.
UPSTREAM_STANDIN = """
x-shared-env: &shared
  SECRET_KEY: ${SECRET_KEY:-sk-9f73s3ljTXVcMT3Blb3ljTqtsKiGHXVcMT3BlbkFJLK7U}
  DB_PASSWORD: ${DB_PASSWORD:-difyai123456}
  REDIS_PASSWORD: ${REDIS_PASSWORD:-difyai123456}
  CELERY_BROKER_URL: ${CELERY_BROKER_URL:-redis://:difyai123456@redis:6379/1}
  WEAVIATE_API_KEY: ${WEAVIATE_API_KEY:-WVF5YThaHlkYwhGUSmCRgsX3tD5ngdN8pkih}
  QDRANT_API_KEY: ${QDRANT_API_KEY:-difyai123456}
  PGVECTOR_PASSWORD: ${PGVECTOR_PASSWORD:-difyai123456}
  PGVECTO_RS_PASSWORD: ${PGVECTO_RS_PASSWORD:-difyai123456}
  OCEANBASE_VECTOR_PASSWORD: ${OCEANBASE_VECTOR_PASSWORD:-difyai123456}
  RELYT_PASSWORD: ${RELYT_PASSWORD:-difyai123456}
  ALIBABACLOUD_MYSQL_PASSWORD: ${ALIBABACLOUD_MYSQL_PASSWORD:-difyai123456}
  CODE_EXECUTION_API_KEY: ${CODE_EXECUTION_API_KEY:-dify-sandbox}
  PLUGIN_DAEMON_KEY: ${PLUGIN_DAEMON_KEY:-lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi}
  CONSOLE_API_URL: ${CONSOLE_API_URL:-}
  APP_API_URL: ${APP_API_URL:-}
services:
  api:
    image: langgenius/dify-api
    networks: [ssrf_proxy_network, default]
    environment:
      <<: *shared
      PLUGIN_REMOTE_INSTALL_PORT: ${EXPOSE_PLUGIN_DEBUGGING_PORT:-5003}
      INNER_API_KEY_FOR_PLUGIN: ${PLUGIN_DIFY_INNER_API_KEY:-QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1}
  worker:
    image: langgenius/dify-api
    networks: [ssrf_proxy_network, default]
    environment:
      <<: *shared
      INNER_API_KEY_FOR_PLUGIN: ${PLUGIN_DIFY_INNER_API_KEY:-QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1}
  worker_beat: {image: langgenius/dify-api, environment: {<<: *shared}}
  web:
    image: langgenius/dify-web
    environment: {CONSOLE_API_URL: "${CONSOLE_API_URL:-}", APP_API_URL: "${APP_API_URL:-}"}
  db_postgres:
    image: "postgres:15-alpine"
    profiles: [postgresql]
    environment: {POSTGRES_PASSWORD: "${DB_PASSWORD:-difyai123456}"}
  redis:
    image: "redis:6-alpine"
    environment: {REDISCLI_AUTH: "${REDIS_PASSWORD:-difyai123456}"}
    command: redis-server --requirepass ${REDIS_PASSWORD:-difyai123456}
  sandbox:
    image: langgenius/dify-sandbox
    environment: {API_KEY: "${SANDBOX_API_KEY:-dify-sandbox}"}
  plugin_daemon:
    image: langgenius/dify-plugin-daemon
    environment:
      <<: *shared
      SERVER_KEY: ${PLUGIN_DAEMON_KEY:-lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi}
      DIFY_INNER_API_KEY: ${PLUGIN_DIFY_INNER_API_KEY:-QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1}
    ports: ["${EXPOSE_PLUGIN_DEBUGGING_PORT:-5003}:${PLUGIN_DEBUGGING_PORT:-5003}"]
  ssrf_proxy: {image: ubuntu/squid}
  nginx:
    image: nginx
    ports:
      - "${EXPOSE_NGINX_PORT:-80}:${NGINX_PORT:-80}"
      - "${EXPOSE_NGINX_SSL_PORT:-443}:${NGINX_SSL_PORT:-443}"
  weaviate:
    image: semitechnologies/weaviate
    profiles: [weaviate]
    environment:
      AUTHENTICATION_APIKEY_ALLOWED_KEYS: >-
        ${WEAVIATE_AUTHENTICATION_APIKEY_ALLOWED_KEYS:-WVF5YThaHlkYwhGUSmCRgsX3tD5ngdN8pkih}
networks:
  ssrf_proxy_network: {driver: bridge, internal: true}
  default: {driver: bridge}
"""


@pytest.fixture(scope="module")
def stack():
    return build_stack(group_data("testhost"))


def render(template: str, context: dict) -> str:
    return render_template(template, **context)


@pytest.fixture
def secrets_dir(tmp_path, stack):
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name in stack.secrets:
        (folder / name).write_text(f"fake{name.replace('-', '')}\n")
    return folder


def fill(text: str, secrets_dir: Path) -> str:
    return render_secrets.render(text, str(secrets_dir))


def compose_cli() -> list[str]:
    """Docker Compose v2, the production version: the binary of artifacts.docker-compose."""
    return [str(local_artifact(build_stack(group_data("testhost")).artifacts["docker-compose"]))]


def compose_config(folder: Path, project: str, *files: str) -> dict:
    args = [*compose_cli(), "-p", project, "--project-directory", str(folder)]
    for f in files:
        args += ["-f", str(folder / f)]
    args += ["config", "--format", "json"]
    # Parsing needs no engine; keep compose away from any daemon all the same.
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- Open WebUI ------------------------------------------------------------------------------------


def test_openwebui_lists_every_llm_backend_in_order(stack):
    backends = [s for s in stack.services.values() if s.kind in ("llama.cpp", "vllm")]
    env = dict(openwebui.environment(stack))
    urls = env["OPENAI_API_BASE_URLS"].split(";")
    assert urls == [f"http://host.docker.internal:{s.port}/v1" for s in backends]
    assert [int(u.split(":")[2].split("/")[0]) for u in urls] == [8080, 8081, 8082, 8084]
    keys = render(openwebui.ENV_TEMPLATE, openwebui.env_context(stack))
    line = next(x for x in keys.splitlines() if x.startswith("OPENAI_API_KEYS="))
    assert line.split("=", 1)[1].split(";") == [f"@@secret:{s.api_key_secret}@@" for s in backends]


def test_openwebui_rag_and_docling_point_at_the_host_services(stack):
    env = dict(openwebui.environment(stack))
    assert env["ENABLE_PERSISTENT_CONFIG"] == "False"
    # Open WebUI 0.12 asks the external reranker only with hybrid search on.
    assert env["ENABLE_RAG_HYBRID_SEARCH"] == "True"
    assert env["RAG_EMBEDDING_ENGINE"] == "openai"
    assert env["RAG_OPENAI_API_BASE_URL"] == "http://host.docker.internal:8083/v1"
    assert env["RAG_RERANKING_ENGINE"] == "external"
    assert env["RAG_EXTERNAL_RERANKER_URL"] == "http://host.docker.internal:8006/v1/rerank"
    assert env["CONTENT_EXTRACTION_ENGINE"] == "docling"
    assert env["DOCLING_SERVER_URL"] == "http://host.docker.internal:8007"
    secret_env = render(openwebui.ENV_TEMPLATE, openwebui.env_context(stack))
    assert "WEBUI_SECRET_KEY=@@secret:openwebui-secret-key@@" in secret_env
    assert "DOCLING_API_KEY=@@secret:docling-api-key@@" in secret_env


def test_openwebui_compose_is_valid_and_publishes_the_port_map(stack, secrets_dir, tmp_path):
    env_file = tmp_path / "openwebui.env"
    env_file.write_text(fill(render(openwebui.ENV_TEMPLATE, openwebui.env_context(stack)), secrets_dir))
    context = {**openwebui.compose_context(stack), "env_file": str(env_file)}
    (tmp_path / "docker-compose.yml").write_text(render(openwebui.COMPOSE_TEMPLATE, context))

    raw = yaml.safe_load((tmp_path / "docker-compose.yml").read_text())
    svc = raw["services"]["open-webui"]
    assert svc["image"] == image_ref(stack, stack.openwebui["image"], stack.openwebui["tag"])
    assert svc["ports"] == ["127.0.0.1:3000:8080"]
    assert "host.docker.internal:host-gateway" in svc["extra_hosts"]
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert raw["networks"][stack.network.docker_network]["external"] is True
    # No secret in the compose file itself.
    assert "fake" not in (tmp_path / "docker-compose.yml").read_text()

    config = compose_config(tmp_path, "openwebui", "docker-compose.yml")
    assert compose_ports.published_ports(config) == [("open-webui", "127.0.0.1", "3000", "8080", "tcp")]
    environment = config["services"]["open-webui"]["environment"]
    assert len(environment["OPENAI_API_KEYS"].split(";")) == len(environment["OPENAI_API_BASE_URLS"].split(";")) == 4
    assert environment["WEBUI_SECRET_KEY"] == "fakeopenwebuisecretkey"


# --- Dify ------------------------------------------------------------------------------------------


def dify_env(stack) -> str:
    return render(dify.ENV_TEMPLATE, dify.env_context(stack))


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_dify_env_replaces_every_upstream_default_secret(stack):
    env = env_lines(dify_env(stack))
    for key in UPSTREAM_DEFAULT_SECRETS:
        assert "@@secret:" in env.get(key, ""), f"{key} keeps upstream's default"
    assert env["WEAVIATE_API_KEY"] == env["WEAVIATE_AUTHENTICATION_APIKEY_ALLOWED_KEYS"]
    # The broker URL embeds the very placeholder REDIS_PASSWORD has.
    assert env["CELERY_BROKER_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/1"
    # Distinct secrets where upstream's are distinct.
    distinct = [env[k] for k in ("SECRET_KEY", "DB_PASSWORD", "REDIS_PASSWORD", "SANDBOX_API_KEY", "PLUGIN_DAEMON_KEY")]
    assert len(set(distinct)) == len(distinct)


def test_dify_env_domain_https_and_ports_from_data(stack):
    env = env_lines(dify_env(stack))
    assert env["NGINX_SERVER_NAME"] == stack.network.domain
    assert env["NGINX_HTTPS_ENABLED"] == ("true" if stack.dify["https"]["enabled"] else "false")
    assert env["EXPOSE_NGINX_PORT"] == "80" and env["EXPOSE_NGINX_SSL_PORT"] == "443"
    # The plugin daemon stays on loopback.
    assert env["EXPOSE_PLUGIN_DEBUGGING_PORT"] == "127.0.0.1:5003"
    assert env["COMPOSE_PROFILES"].split(",") == ["weaviate", "postgresql"]


def test_dify_override_publishes_nothing_for_weaviate(stack):
    raw = yaml.safe_load(render(dify.OVERRIDE_TEMPLATE, dify.override_context(stack)))
    assert "weaviate" not in raw["services"] or not raw["services"]["weaviate"].get("ports")


def test_dify_project_publishes_exactly_the_stack_ports(stack, secrets_dir, tmp_path):
    (tmp_path / "docker-compose.yaml").write_text(UPSTREAM_STANDIN)
    (tmp_path / ".env").write_text(fill(dify_env(stack), secrets_dir))
    (tmp_path / "docker-compose.override.yaml").write_text(render(dify.OVERRIDE_TEMPLATE, dify.override_context(stack)))

    config = compose_config(tmp_path, "dify", "docker-compose.yaml", "docker-compose.override.yaml")
    published = compose_ports.published_ports(config)
    expected = sorted(
        (name, ip, str(port), str(target), "tcp") for name, ip, port, target in dify.expected_published(stack)
    )
    assert published == expected
    assert {row[0] for row in published} >= {
        "web",
        "api",
        "nginx",
        "plugin_daemon",
        "db_postgres",
        "redis",
        "ssrf_proxy",
    }
    assert "weaviate" not in {row[0] for row in published}
    for name, ip, port, _, _ in published:
        service = next(s for s in dify.services(stack) if s.settings.compose_service == name)
        assert (ip, int(port)) in {(service.bind, p.number) for p in service.ports}
    # The deploy's on-host check compares kca-compose-ports' output with this text.
    assert "\n".join(" ".join((n, i, p, f"{t}/{pr}")) for n, i, p, t, pr in published) == published_lines(
        dify.expected_published(stack)
    )
    # The secrets reached the services, and the API still reads a plain port.
    services = config["services"]
    assert services["redis"]["command"][-2:] == ["--requirepass", "fakedifyredispassword"]
    assert services["db_postgres"]["environment"]["POSTGRES_PASSWORD"] == "fakedifydbpassword"
    assert str(services["api"]["environment"]["PLUGIN_REMOTE_INSTALL_PORT"]) == "5003"


def dify_project(stack, secrets_dir, folder: Path, drop: tuple[str, ...] = ()) -> dict:
    """Compose's own view of upstream's file + the override + the .env rendered from the data; `drop`
    leaves .env lines out (a configuration as an older version of this project wrote it)."""
    lines = fill(dify_env(stack), secrets_dir).splitlines()
    env = "".join(line + "\n" for line in lines if line.split("=")[0] not in drop)
    (folder / "docker-compose.yaml").write_text(UPSTREAM_STANDIN)
    (folder / ".env").write_text(env)
    (folder / "docker-compose.override.yaml").write_text(render(dify.OVERRIDE_TEMPLATE, dify.override_context(stack)))
    return compose_config(folder, "dify", "docker-compose.yaml", "docker-compose.override.yaml")


def secrets_check(stack, config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """The deploy's on-host check (kca-compose-secrets) with the rules from the committed data."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(dify.secrets_rules(stack)))
    script = str(ROOT / "files/usr/local/sbin/kca-compose-secrets")
    return subprocess.run(["python3", script, str(rules)], input=json.dumps(config), capture_output=True, text=True)


def test_dify_configuration_passes_the_secrets_check(stack, secrets_dir, tmp_path):
    done = secrets_check(stack, dify_project(stack, secrets_dir, tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fake" not in done.stdout + done.stderr


def test_every_code_node_would_get_401_without_code_execution_api_key(stack, secrets_dir, tmp_path):
    """The .env as this project wrote it before: only SANDBOX_API_KEY replaced. The sandbox expects
    the new key, the api and worker still send upstream's default: refused, naming the variables."""
    config = dify_project(stack, secrets_dir, tmp_path, drop=("CODE_EXECUTION_API_KEY",))
    assert (
        config["services"]["sandbox"]["environment"]["API_KEY"]
        != config["services"]["api"]["environment"]["CODE_EXECUTION_API_KEY"]
    )
    done = secrets_check(stack, config, tmp_path)
    assert done.returncode == 1
    agree = "sandbox.API_KEY, api.CODE_EXECUTION_API_KEY, worker.CODE_EXECUTION_API_KEY must hold the same secret"
    assert agree in done.stderr
    assert "api.CODE_EXECUTION_API_KEY still holds an upstream default credential" in done.stderr
    assert "fake" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "dropped, named",
    [
        ("REDIS_PASSWORD", "redis.command:--requirepass"),
        ("PLUGIN_DIFY_INNER_API_KEY", "plugin_daemon.DIFY_INNER_API_KEY"),
        ("WEAVIATE_AUTHENTICATION_APIKEY_ALLOWED_KEYS", "weaviate.AUTHENTICATION_APIKEY_ALLOWED_KEYS"),
        ("QDRANT_API_KEY", "api.QDRANT_API_KEY still holds an upstream default credential"),
    ],
)
def test_secrets_check_names_what_disagrees(stack, secrets_dir, tmp_path, dropped, named):
    done = secrets_check(stack, dify_project(stack, secrets_dir, tmp_path, drop=(dropped,)), tmp_path)
    assert done.returncode == 1
    assert named in done.stderr


def test_dify_model_provider_clients_reach_the_host_services(stack, secrets_dir, tmp_path):
    """api, worker and the plugin daemon call the host's LLM, embedding and reranker services: they
    join ai-network (the bridge the firewall opens the internal ports to) and keep their own."""
    services = dify_project(stack, secrets_dir, tmp_path)["services"]
    network = stack.network.docker_network
    for name, upstream in stack.dify["host_service_clients"].items():
        assert set(services[name]["networks"]) == {*upstream, network}, name
        assert "host.docker.internal=host-gateway" in services[name]["extra_hosts"] or (
            "host.docker.internal:host-gateway" in services[name]["extra_hosts"]
        ), services[name]["extra_hosts"]


def test_dify_web_entry_calls_the_api_through_nginx(stack, secrets_dir, tmp_path):
    web = dify_project(stack, secrets_dir, tmp_path)["services"]["web"]["environment"]
    assert web["CONSOLE_API_URL"] == web["APP_API_URL"] == f"http://{stack.network.domain}"


# --- kca-render-secrets ----------------------------------------------------------------------------


def test_render_secrets_writes_0600_atomically_and_leaves_a_converged_file_alone(tmp_path, secrets_dir):
    source = tmp_path / "in"
    source.write_text("A=@@secret:llm-api-key@@\nB=redis://:@@secret:llm-api-key@@@redis:6379/1\n")
    out = tmp_path / "out"
    env = {**os.environ, "KCA_SECRETS_DIR": str(secrets_dir)}
    script = str(ROOT / "files/usr/local/sbin/kca-render-secrets")
    first = subprocess.run(["python3", script, str(source), str(out)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert out.read_text() == "A=fakellmapikey\nB=redis://:fakellmapikey@redis:6379/1\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "fake" not in first.stdout + first.stderr
    before = out.stat().st_mtime_ns
    again = subprocess.run(["python3", script, str(source), str(out)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert out.stat().st_mtime_ns == before


def test_render_secrets_refuses_a_missing_secret(tmp_path, secrets_dir):
    source = tmp_path / "in"
    source.write_text("A=@@secret:no-such-secret@@\n")
    out = tmp_path / "out"
    env = {**os.environ, "KCA_SECRETS_DIR": str(secrets_dir)}
    script = str(ROOT / "files/usr/local/sbin/kca-render-secrets")
    done = subprocess.run(["python3", script, str(source), str(out)], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "no-such-secret" in done.stderr
    assert not out.exists()
