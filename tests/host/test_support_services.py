"""The embedding, reranker and Docling services answer over HTTP as their clients expect.

Fixtures (tests/conftest.py): service_url(name) -> "http://ADDR:PORT", secret(name) -> str,
stack_service(name) -> the service's data (port, limits, embedding_dim).
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct

import pytest
import requests

TIMEOUT = 120  # seconds; a CPU test host embeds slowly but never this slowly


# --- helpers ----------------------------------------------------------------------------------


def embed(service_url, texts, **extra) -> dict:
    body = {"model": "any", "input": texts, **extra}
    response = requests.post(f"{service_url('bge-embedding')}/v1/embeddings", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def rerank(service_url, query, documents, **extra) -> dict:
    body = {"model": "any", "query": query, "documents": documents, **extra}
    response = requests.post(f"{service_url('bge-reranker')}/v1/rerank", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def make_docx(heading: str, rows: list[list[str]]) -> bytes:
    """A DOCX with one heading and one table, made here so no binary is committed."""
    import docx  # python-docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            table.cell(r, c).text = text
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_html(heading: str, rows: list[list[str]]) -> bytes:
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    return (
        f"<!DOCTYPE html><html><head><title>{heading}</title></head><body>"
        f"<h1>{heading}</h1><table><tr>{head}</tr>{body}</table></body></html>"
    ).encode()


def convert(service_url, secret, filename: str, data: bytes, content_type: str) -> str:
    response = requests.post(
        f"{service_url('docling')}/v1/convert/file",
        files={"files": (filename, data, content_type)},
        headers={"X-Api-Key": secret("docling-api-key")},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text[:2000]
    result = response.json()
    assert result.get("status") == "success", result.get("errors")
    return result["document"]["md_content"]


def table_row(markdown: str, cells: list[str]) -> bool:
    """A markdown table line holding these cells in order (padding differs by version)."""
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts == cells:
            return True
    return False


# --- embeddings -------------------------------------------------------------------------------


def test_embedding_has_the_configured_dimension(service_url, stack_service):
    result = embed(service_url, ["first text", "second text", "third text"])
    dim = stack_service("bge-embedding")["embedding_dim"]
    assert result["object"] == "list"
    assert [item["index"] for item in result["data"]] == [0, 1, 2]
    assert all(len(item["embedding"]) == dim for item in result["data"])


def test_embedding_of_a_single_string(service_url, stack_service):
    result = embed(service_url, "just one text")
    assert len(result["data"]) == 1
    assert len(result["data"][0]["embedding"]) == stack_service("bge-embedding")["embedding_dim"]


def test_near_duplicates_are_closer_than_unrelated_texts(service_url):
    texts = [
        "The quarterly sales report is due on Friday.",
        "The sales report for the quarter must be handed in by Friday.",
        "Penguins live in the cold waters of the southern hemisphere.",
    ]
    a, b, c = (item["embedding"] for item in embed(service_url, texts)["data"])
    assert cosine(a, b) > cosine(a, c) + 0.2


def test_base64_decodes_to_the_float_vector(service_url):
    text = "base64 and float must agree"
    floats = embed(service_url, [text])["data"][0]["embedding"]
    encoded = embed(service_url, [text], encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(floats)
    assert max(abs(x - y) for x, y in zip(decoded, floats, strict=True)) < 1e-6


def test_embedding_is_normalised(service_url):
    vector = embed(service_url, ["length one"])["data"][0]["embedding"]
    assert abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-3


def test_embedding_usage_counts_tokens(service_url):
    usage = embed(service_url, ["count my tokens", "and mine"])["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] >= usage["prompt_tokens"]


@pytest.mark.parametrize("name", ["bge-embedding", "bge-reranker"])
def test_health_and_models(service_url, name):
    health = requests.get(f"{service_url(name)}/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = requests.get(f"{service_url(name)}/v1/models", timeout=TIMEOUT).json()
    assert models["object"] == "list" and models["data"][0]["id"]


# --- reranker ---------------------------------------------------------------------------------

PASSWORD_DOCS = [
    "The cafeteria serves lunch between 11:30 and 13:30.",
    "Our company was founded in 1998 and has offices in three cities.",
    "To reset your password, open Settings, choose Security and click Reset password.",
    "Parking spaces for visitors are next to the main entrance.",
]


def test_reranker_puts_the_relevant_document_first(service_url):
    result = rerank(service_url, "How do I reset my password?", PASSWORD_DOCS)
    results = result["results"]
    assert results[0]["index"] == 2
    assert results[0]["document"]["text"] == PASSWORD_DOCS[2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]


def test_reranker_honours_top_n_and_object_documents(service_url):
    documents = [{"text": d} for d in PASSWORD_DOCS]
    result = rerank(service_url, "How do I reset my password?", documents, top_n=2)
    assert len(result["results"]) == 2
    assert result["results"][0]["index"] == 2


def test_reranker_answers_on_the_plain_path_too(service_url):
    body = {"query": "reset password", "documents": PASSWORD_DOCS, "top_n": 1}
    response = requests.post(f"{service_url('bge-reranker')}/rerank", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["results"][0]["index"] == 2
    assert response.json()["usage"]["total_tokens"] > 0


# --- bad input: every case a 4xx with {"error": {"message", "type"}} -------------------------


def bad_embedding_bodies(limits: dict) -> list[tuple[str, object, int]]:
    return [
        ("invalid JSON", b'{"input": ', 400),
        ("body not an object", b'["a", "b"]', 400),
        ("missing input", {"model": "m"}, 400),
        ("empty string", {"input": ""}, 400),
        ("empty list", {"input": []}, 400),
        ("number input", {"input": 42}, 400),
        ("token ids", {"input": [101, 2023, 102]}, 400),
        ("list of token lists", {"input": [[101, 102]]}, 400),
        ("non-string item", {"input": ["ok", {"text": "no"}]}, 400),
        ("bad encoding_format", {"input": "x", "encoding_format": "hex"}, 400),
        ("too many items", {"input": ["x"] * (limits["max_items"] + 1)}, 400),
        ("text too long", {"input": ["y" * (limits["max_text_chars"] + 1)]}, 400),
    ]


def bad_rerank_bodies(limits: dict) -> list[tuple[str, object, int]]:
    docs = ["a document"]
    return [
        ("invalid JSON", b"{not json", 400),
        ("missing query", {"documents": docs}, 400),
        ("empty query", {"query": "", "documents": docs}, 400),
        ("query not a string", {"query": ["q"], "documents": docs}, 400),
        ("missing documents", {"query": "q"}, 400),
        ("empty documents", {"query": "q", "documents": []}, 400),
        ("documents not a list", {"query": "q", "documents": "a document"}, 400),
        ("document without text", {"query": "q", "documents": [{"body": "x"}]}, 400),
        ("top_n zero", {"query": "q", "documents": docs, "top_n": 0}, 400),
        ("top_n not an integer", {"query": "q", "documents": docs, "top_n": "2"}, 400),
        ("too many documents", {"query": "q", "documents": ["d"] * (limits["max_items"] + 1)}, 400),
        ("query too long", {"query": "q" * (limits["max_text_chars"] + 1), "documents": docs}, 400),
    ]


BAD_CASES = [("bge-embedding", "/v1/embeddings", bad_embedding_bodies)] + [
    ("bge-reranker", "/v1/rerank", bad_rerank_bodies)
]


def assert_error_shape(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]


def post_raw(url: str, body: object, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.post(url, data=data, headers=headers, timeout=TIMEOUT, **kwargs)


@pytest.mark.parametrize("service,path,cases", BAD_CASES, ids=["embedding", "reranker"])
def test_bad_input_gets_a_json_error(service_url, stack_service, service, path, cases):
    limits = stack_service(service)["limits"]
    failures = []
    for label, body, status in cases(limits):
        response = post_raw(f"{service_url(service)}{path}", body)
        try:
            assert_error_shape(response, status)
        except (AssertionError, ValueError, KeyError) as exc:
            failures.append(f"{label}: {response.status_code} {response.text[:200]} ({exc})")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("service,path", [("bge-embedding", "/v1/embeddings"), ("bge-reranker", "/v1/rerank")])
def test_oversized_body_is_refused_before_parsing(service_url, stack_service, service, path):
    limit = stack_service(service)["limits"]["max_body_bytes"]
    body = b'{"input": "' + b"z" * limit + b'"}'
    assert_error_shape(post_raw(f"{service_url(service)}{path}", body), 413)


@pytest.mark.parametrize("service,path", [("bge-embedding", "/v1/embeddings"), ("bge-reranker", "/v1/rerank")])
def test_oversized_chunked_body_is_refused(service_url, stack_service, service, path):
    """No Content-Length at all: the server has to count while it reads."""
    limit = stack_service(service)["limits"]["max_body_bytes"]

    def chunks():
        yield b'{"input": "'
        for _ in range(limit // 65536 + 2):
            yield b"z" * 65536
        yield b'"}'

    response = requests.post(
        f"{service_url(service)}{path}",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_error_shape(response, 413)


@pytest.mark.parametrize("service,path", [("bge-embedding", "/v1/embeddings"), ("bge-reranker", "/v1/rerank")])
def test_unknown_path_and_wrong_method_use_the_error_shape(service_url, service, path):
    assert_error_shape(requests.get(f"{service_url(service)}/nope", timeout=TIMEOUT), 404)
    assert_error_shape(requests.get(f"{service_url(service)}{path}", timeout=TIMEOUT), 405)


# --- Docling ----------------------------------------------------------------------------------

ROWS = [["Region", "Sales"], ["North", "42"]]


@pytest.fixture
def docling_models(stack_service):
    """Every docling-serve 1.38 conversion (DOCX and HTML too) first sets up the PDF pipeline, whose
    layout model comes from the hub only: where the data says the models cannot be had, stop there."""
    if stack_service("docling").get("layout_models") == "unavailable":
        pytest.skip("Docling's layout models are unavailable on this host (layout_models = unavailable)")


def test_docling_converts_a_docx(service_url, secret, docling_models):
    docx_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    markdown = convert(service_url, secret, "report.docx", make_docx("Quarterly Report", ROWS), docx_type)
    assert "# Quarterly Report" in markdown
    assert table_row(markdown, ROWS[0]) and table_row(markdown, ROWS[1]), markdown


def test_docling_converts_html(service_url, secret, docling_models):
    markdown = convert(service_url, secret, "report.html", make_html("Team Roster", ROWS), "text/html")
    assert "# Team Roster" in markdown
    assert table_row(markdown, ROWS[0]) and table_row(markdown, ROWS[1]), markdown


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong-key"}], ids=["no key", "wrong key"])
def test_docling_refuses_requests_without_the_api_key(service_url, headers):
    response = requests.post(
        f"{service_url('docling')}/v1/convert/file",
        files={"files": ("a.html", make_html("x", ROWS), "text/html")},
        headers=headers,
        timeout=TIMEOUT,
    )
    assert response.status_code in (401, 403)


def test_docling_health_is_open(service_url):
    response = requests.get(f"{service_url('docling')}/health", timeout=TIMEOUT)
    assert response.status_code == 200 and response.json()["status"] == "ok"


# --- Restart on failure -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bge-embedding", "bge-reranker", "docling"])
def test_killed_service_is_restarted_by_systemd(host, stack, name):
    """kill -9 of the main process: systemd restarts it (Restart=on-failure) and it answers again
    within the restart delay plus its start time (TimeoutStartSec bounds the wait)."""
    import time

    unit = stack.services[name].unit
    port = stack.services[name].port
    show = host.check_output(f"systemctl show -p MainPID -p RestartUSec -p TimeoutStartUSec {unit}")
    props = dict(line.split("=", 1) for line in show.splitlines())
    old_pid = int(props["MainPID"])
    assert old_pid > 0, f"{unit} is not running"
    host.run(f"kill -9 {old_pid}")
    started = time.monotonic()
    deadline = started + 600
    while time.monotonic() < deadline:
        if host.run(f"curl -sf -m 2 http://127.0.0.1:{port}/health").rc == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{unit} did not answer /health again after kill -9")
    new_pid = int(host.check_output(f"systemctl show -p MainPID --value {unit}"))
    assert new_pid not in (0, old_pid)
    back = time.monotonic() - started
    print(f"\n{unit}: answering again {back:.1f} s after kill -9 (RestartSec={props['RestartUSec']})")
