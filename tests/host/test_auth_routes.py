"""Every external LLM port asks for the key on every route it has, from this machine.

- HyperCLOVA X (vLLM 0.10.2, port 8082): vLLM's own key check covers only paths under /v1, so the port
  is the authenticating proxy's. The route list comes from the vLLM installed on the target: its app
  factory (`build_app`) built without an engine, or, where that import fails, the route decorators of
  its api_server.py; the test prints which, and also adds the decorated routes that only an environment
  flag registers (development, profiler, LoRA). Without the GPU, a stand-in answers behind the proxy on
  vLLM's own address, as vLLM's own user.
- The llama.cpp services: llama-server checks the key itself (--api-key-file) on every path but its
  public ones. The route list comes from the llama.cpp source the target built from.

Each route: 401 without the key (or with a wrong one), and passed through with it.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

STANDIN_UNIT = "kca-test-vllm-standin"
STANDIN_SCRIPT = "/run/kca-test-vllm-standin.py"
# Answers every method on every path with 200 and the path it received: what the proxy let through.
STANDIN = """\
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"standin": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""

# vLLM's routes from its app factory, without an engine or a GPU. Without a GPU vLLM cannot infer a
# device, which its argument defaults need: the platform is set to the CPU first (the routes do not
# depend on it). FastAPI may hold an included router as one entry: walked into.
VLLM_APP_ROUTES = """\
import json

import vllm.platforms
from vllm.platforms.cpu import CpuPlatform

vllm.platforms._current_platform = CpuPlatform()

from vllm.entrypoints.openai.api_server import build_app
from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.utils import FlexibleArgumentParser


def walk(routes, prefix=""):
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path, sorted(getattr(route, "methods", None) or ["GET"])
        elif hasattr(route, "original_router"):
            inner = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from walk(route.original_router.routes, prefix + inner)


app = build_app(make_arg_parser(FlexibleArgumentParser()).parse_args([]))
print(json.dumps(list(walk(app.routes))))
"""

# vLLM's routes from the decorators of its api_server.py (every one, flag-gated included), and the
# /metrics mount.
VLLM_SOURCE_ROUTES = """\
import ast, glob, json, sys

# Found, not imported: this works where importing vLLM does not.
(origin,) = glob.glob(sys.prefix + "/lib/python3*/site-packages/vllm/entrypoints/openai/api_server.py")
routes = []
for node in ast.walk(ast.parse(open(origin).read())):
    if not (isinstance(node, ast.Call) and node.args):
        continue
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("/")):
        continue
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "router":
        if func.attr in ("get", "post", "put", "delete"):
            routes.append([first.value, [func.attr.upper()]])
    elif isinstance(func, ast.Name) and func.id == "Mount":
        routes.append([first.value, ["GET"]])
print(json.dumps({"origin": origin, "routes": routes}))
"""

# Routes every vLLM 0.10.2 has: an empty or broken list must not pass as "every route answered 401".
VLLM_SENTINELS = {"/invocations", "/tokenize", "/detokenize", "/pooling", "/score", "/rerank", "/metrics", "/health"}
LLAMA_ROUTE = re.compile(r'ctx_http\.(get|post|put|del)\s*\(\s*"([^"]+)"')
LLAMA_SENTINELS = {"/health", "/metrics", "/props", "/slots", "/completion", "/tokenize", "/v1/chat/completions"}


def concrete(path: str) -> str:
    """A request path for a route pattern: parameters ({id}, :id) get a value."""
    return re.sub(r"\{[^}]+\}|:[A-Za-z_]+", "0", path)


def vllm_routes(host, stack) -> tuple[str, dict[str, set[str]]]:
    python = f"{stack.venvs[stack.vllm.venv].path}/bin/python"
    routes: dict[str, set[str]] = {}
    app = host.run(f"timeout 600 {python} - <<'EOF'\n{VLLM_APP_ROUTES}EOF")
    if app.rc == 0:
        how = "vLLM's app factory (build_app, no engine, CPU platform)"
        for path, methods in json.loads(app.stdout.strip().splitlines()[-1]):
            routes.setdefault(path, set()).update(m for m in methods if m != "HEAD")
    else:
        how = f"the route decorators of api_server.py (build_app failed: {app.stderr.strip()[-300:]})"
    source = host.run(f"{python} - <<'EOF'\n{VLLM_SOURCE_ROUTES}EOF")
    assert source.rc == 0, source.stderr[-2000:]
    found = json.loads(source.stdout.strip().splitlines()[-1])
    for path, methods in found["routes"]:
        routes.setdefault(path, set()).update(methods)
    return f"{how}, with every decorated route of {found['origin']}", routes


def llama_routes(host, stack) -> tuple[dict[str, set[str]], set[str]]:
    from tasks.llama_cpp import layout

    src = f"{layout(stack)['src']}/tools/server"
    text = host.run(f"cat {src}/server.cpp").stdout
    routes: dict[str, set[str]] = {}
    for method, path in LLAMA_ROUTE.findall(text):
        routes.setdefault(path, set()).add({"del": "DELETE"}.get(method, method.upper()))
    # llama-server's own list of paths that need no key.
    http = host.run(f"cat {src}/server-http.cpp").stdout
    block = re.search(r"get_public_endpoints\s*=.*?\{(.*?)\};", http, re.S)
    public = set(re.findall(r'"(/[^"]*)"', block.group(1))) if block else set()
    return routes, public


def standin_answered(response: requests.Response, path: str) -> bool:
    """The stand-in itself answered, for this path: the proxy passed the request through."""
    try:
        body = response.json()
    except ValueError:
        return False
    return response.status_code == 200 and body.get("standin") is True and body["path"].split("?")[0] == concrete(path)


def call(url: str, method: str, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return requests.request(method, url, headers=headers, json=body, timeout=60)


@pytest.fixture(scope="module")
def vllm_backend(host, stack):
    """vLLM itself when it runs here, else the stand-in on vLLM's own address, as vLLM's own user."""
    service = next(iter(stack.proxied_services()))
    if host.service(service.unit).is_running:
        yield "vllm"
        return
    bind, port = stack.listen_address(service)
    user = stack.service_users[service.name].name
    host.run(f"systemctl stop {STANDIN_UNIT} 2>/dev/null; rm -f {STANDIN_SCRIPT}")
    written = host.run(f"cat > {STANDIN_SCRIPT} <<'EOF'\n{STANDIN}EOF\nchmod 0644 {STANDIN_SCRIPT}")
    assert written.rc == 0, written.stderr
    started = host.run(
        f"systemd-run --unit={STANDIN_UNIT} --collect -p User={user} -p Group={user} "
        f"/usr/bin/python3 {STANDIN_SCRIPT} {bind} {port}"
    )
    assert started.rc == 0, started.stderr
    up = host.run(f"timeout 20 sh -c 'until curl -s -o /dev/null http://{bind}:{port}/; do sleep 0.2; done'")
    assert up.rc == 0, host.run(f"journalctl -u {STANDIN_UNIT} --no-pager -n 20").stdout
    yield "stand-in"
    host.run(f"systemctl stop {STANDIN_UNIT}; rm -f {STANDIN_SCRIPT}")


def test_every_vllm_route_needs_the_key_through_the_proxy(host, stack, secret, target_address, vllm_backend, request):
    service = next(iter(stack.proxied_services()))
    how, routes = vllm_routes(host, stack)
    assert set(routes) >= VLLM_SENTINELS, f"the route list misses {VLLM_SENTINELS - set(routes)}"
    public = set(stack.auth_proxy.public_paths)
    key = secret(service.api_key_secret)
    base = f"http://{target_address}:{service.port}"
    rows, wrong = [], []
    for path in sorted(routes):
        for method in sorted(routes[path]):
            url = base + concrete(path)
            bare = call(url, method).status_code
            bad = call(url, method, key="not-the-key").status_code
            good = call(url, method, key=key)
            passed = good.status_code != 401 if vllm_backend == "vllm" else standin_answered(good, path)
            expected_bare = 200 if path in public else 401
            if vllm_backend == "vllm" and path in public:
                expected_bare = good.status_code
            rows.append(f"{method:6} {path:40} no key {bare}  wrong key {bad}  key {good.status_code}")
            if bare != expected_bare or (path not in public and bad != 401) or not passed:
                wrong.append(rows[-1])
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nvLLM routes ({len(rows)}) from {how}; backend: {vllm_backend}")
        print("\n".join(rows))
    assert not wrong, "routes not guarded by the proxy:\n" + "\n".join(wrong)


def test_every_llama_route_needs_the_key(host, stack, secret, target_address, request):
    routes, public = llama_routes(host, stack)
    assert set(routes) >= LLAMA_SENTINELS, f"the route list misses {LLAMA_SENTINELS - set(routes)}"
    assert public == {"/health", "/v1/health"}, f"llama-server's public paths changed: {public}"
    running = [s for s in stack.services_of_kind("llama.cpp") if host.service(s.unit).is_running]
    assert running, "no llama.cpp service runs: the boot scenario should start one"
    wrong, lines = [], []
    for service in running:
        key = secret(service.api_key_secret)
        base = f"http://{target_address}:{service.port}"
        for path in sorted(routes):
            for method in sorted(routes[path]):
                url = base + concrete(path)
                bare = call(url, method).status_code
                bad = call(url, method, key="not-the-key").status_code
                good = call(url, method, key=key).status_code
                lines.append(f"{service.name:9} {method:6} {path:36} no key {bare}  wrong key {bad}  key {good}")
                if path in public:
                    ok = bare == 200 and good == 200
                else:
                    ok = bare == 401 and bad == 401 and good != 401
                if not ok:
                    wrong.append(lines[-1])
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nllama-server routes ({len(routes)} paths) from its source, public: {sorted(public)}")
        print("\n".join(lines))
    assert not wrong, "llama-server routes not guarded:\n" + "\n".join(wrong)


def test_proxy_answers_while_vllm_is_off(host, stack, target_address):
    """The proxy does not follow vLLM's unit: with vLLM off, 401 without the key, 503 with it."""
    service = next(iter(stack.proxied_services()))
    if host.service(service.unit).is_running:
        pytest.skip(f"{service.unit} runs here")
    host.run(f"systemctl stop {STANDIN_UNIT} 2>/dev/null || true")
    assert host.service(stack.auth_proxy.unit).is_running
    url = f"http://{target_address}:{service.port}/v1/chat/completions"
    assert call(url, "POST").status_code == 401
    from_health = requests.get(f"http://{target_address}:{service.port}/health", timeout=10)
    assert from_health.status_code == 503 and from_health.headers.get("Retry-After")
