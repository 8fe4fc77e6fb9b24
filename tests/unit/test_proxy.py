"""The authenticating proxy, rendered from the data and run for real: nginx (from the OS) with the
rendered configuration in front of a stand-in backend on this machine. Only the host-specific parts of
the rendered context move (listen and backend addresses, the runtime folder, where the key map lies):
the routing, the key check and the error pages are the deploy's.

Also the proxy's unit: its own user, the key map as its only credential, the firewall required."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kca_stack import build_stack
from kca_stack.data import group_data
from tasks import proxy
from tasks.render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
KEY = "TestKey0123456789abcdefABCDEF"
# Paths of vLLM 0.10.2 that its own key check (paths under /v1 only) leaves open, a few that it guards,
# and spellings that must not sneak past the key check.
GUARDED_PATHS = [
    "/invocations",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/classify",
    "/score",
    "/rerank",
    "/v2/rerank",
    "/metrics",
    "/load",
    "/ping",
    "/version",
    "/docs",
    "/openapi.json",
    "/v1/models",
    "/v1/chat/completions",
    "/no-such-route",
    "/health/../invocations",
    "//invocations",
    "/health/",
    "/healthz",
    "/health/%2E%2E/invocations",
    "/health%2F..%2Finvocations",
]


def render(template: str, context: dict) -> str:
    return render_template(template, **context)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class StandIn(ThreadingHTTPServer):
    """A backend that answers every method on every path with 200 and what it received."""

    daemon_threads = True

    def __init__(self, port: int):
        self.received: list[tuple[str, str, str | None]] = []

        class Handler(BaseHTTPRequestHandler):
            def answer(handler):
                length = int(handler.headers.get("Content-Length") or 0)
                if length:
                    handler.rfile.read(length)
                self.received.append((handler.command, handler.path, handler.headers.get("Authorization")))
                body = json.dumps({"standin": True, "path": handler.path}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", port), Handler)


def request(port: int, method: str, path: str, key: str | None = None, header: str | None = None):
    """Raw HTTP (the path is sent exactly as written, dot segments and all)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = b"{}" if method == "POST" else None
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    result = (response.status, dict(response.getheaders()), response.read())
    connection.close()
    return result


@pytest.fixture(scope="module")
def stack():
    return build_stack(group_data("production"))


@pytest.fixture(scope="module")
def running_proxy(stack):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed here (apt-get install nginx)")
    # Not pytest's tmp_path: its parent is private to the test's user, and nginx runs unprivileged.
    work = Path(tempfile.mkdtemp(prefix="kca-proxy-test-"))
    work.chmod(0o755)
    runtime = work / "run"
    runtime.mkdir(mode=0o777)
    runtime.chmod(0o777)

    context = proxy.config_context(stack)
    (service,) = stack.proxied_services()
    secret = service.api_key_secret
    key_map = work / proxy.key_map_name(secret)
    # Built by the deploy's own script, from a key file.
    (work / secret).write_text(KEY)
    script = proxy.key_map_script(stack, secret).replace(proxy.secret_path(stack, secret), str(work / secret))
    key_map.write_text(subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout)
    key_map.chmod(0o644)
    assert [m["path"] for m in context["key_maps"]] == [proxy.credential_path(stack, secret)]
    context["key_maps"] = [{**m, "path": str(key_map)} for m in context["key_maps"]]
    context["runtime_dir"] = str(runtime)
    listen, backend = free_port(), free_port()
    (site,) = context["sites"]
    assert site["listen"] == f"{service.bind}:{service.port}"
    context["sites"] = [{**site, "listen": f"127.0.0.1:{listen}", "backend": f"127.0.0.1:{backend}"}]
    config = work / "nginx.conf"
    config.write_text(render(proxy.CONFIG_TEMPLATE, context))
    config.chmod(0o644)

    # Unprivileged, as the unit runs it (root would switch its workers to a user of its own choosing).
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    check = subprocess.run(
        [*drop, nginx, "-q", "-t", "-e", "stderr", "-c", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    # Its log goes to a file: a pipe nobody reads would fill up and stall nginx.
    log = (work / "nginx.log").open("wb")
    process = subprocess.Popen([*drop, nginx, "-e", "stderr", "-c", str(config)], stderr=log)
    standin = StandIn(backend)
    thread = threading.Thread(target=standin.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for(listen, process)
        yield {"port": listen, "standin": standin, "site": site}
    finally:
        standin.shutdown()
        standin.server_close()
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(work)


@pytest.mark.parametrize("path", GUARDED_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_every_path_but_health_needs_the_key(running_proxy, method, path):
    port, standin = running_proxy["port"], running_proxy["standin"]
    before = len(standin.received)
    for header in (None, "Bearer wrong", f"Bearer {KEY}x", f"bearer {KEY}", KEY, f"Basic {KEY}"):
        status, headers, body = request(port, method, path, header=header)
        assert status == 401, (method, path, header, status, body)
        assert json.loads(body)["error"]["code"] == 401
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert len(standin.received) == before, "a request without the key reached the backend"


@pytest.mark.parametrize("path", [p for p in GUARDED_PATHS if "%" not in p and ".." not in p and "//" not in p])
def test_the_key_passes_every_path_through_unchanged(running_proxy, path):
    port, standin = running_proxy["port"], running_proxy["standin"]
    status, _, body = request(port, "POST", path, key=KEY)
    assert status == 200 and json.loads(body) == {"standin": True, "path": path}
    # The header goes on: vLLM's own check of /v1 paths still sees the key.
    assert standin.received[-1] == ("POST", path, f"Bearer {KEY}")


@pytest.mark.parametrize("spelling", ["/health", "/health?probe=1", "/%68ealth", "/./health"])
def test_health_is_public_and_reaches_the_backend_as_exactly_health(running_proxy, spelling):
    port, standin = running_proxy["port"], running_proxy["standin"]
    status, _, body = request(port, "GET", spelling)
    assert status == 200, (spelling, body)
    method, received, _ = standin.received[-1]
    # The path is exactly /health; a query string goes along.
    assert (method, received.split("?")[0]) == ("GET", "/health")


def test_backend_down_answers_503_after_the_key_check(stack, running_proxy):
    port, standin = running_proxy["port"], running_proxy["standin"]
    standin.shutdown()
    standin.server_close()
    status, _, _ = request(port, "POST", "/invocations")
    assert status == 401, "an unauthenticated request must learn nothing, not even that the backend is off"
    status, headers, body = request(port, "POST", "/v1/chat/completions", key=KEY)
    assert status == 503 and headers.get("Retry-After") == str(stack.auth_proxy.retry_after_s)
    assert "kca-gpu-switch hyperclova" in json.loads(body)["error"]["message"]
    status, _, _ = request(port, "GET", "/health")
    assert status == 503


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_proxy_unit_runs_as_its_own_user_with_only_the_key_map(stack):
    found = directives(render(proxy.UNIT_TEMPLATE, proxy.unit_context(stack)))
    user = stack.service_users[stack.auth_proxy.user].name
    assert found["User"] == found["Group"] == [user]
    assert user not in {stack.service_users[s.name].name for s in stack.systemd_services()}
    assert found["LoadCredential"] == ["llm-api-key.nginx-map:/etc/kca/secrets/llm-api-key.nginx-map"]
    assert found["Requires"] == ["kca-firewall.service"] and "kca-firewall.service" in found["After"]
    assert found["ProtectProc"] == ["invisible"] and found["CapabilityBoundingSet"] == [""]
    # Checked before it replaces a running configuration.
    assert found["ExecReload"][0].startswith("/usr/sbin/nginx -q -t")
    # The credential path nginx includes is the one systemd makes for this unit.
    assert (
        proxy.credential_path(stack, "llm-api-key") == f"/run/credentials/{stack.auth_proxy.unit}/llm-api-key.nginx-map"
    )
