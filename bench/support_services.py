"""Benchmark the embedding, reranker and Docling services where they run.

Run it on the host itself, with the python of the venv the services run in (it loads the embedding
model in-process to compare against the HTTP server); `./kca bench` copies it to the test host and
runs it there. On the real server:

    /models/venv/bin/python support_services.py --model-path /models/huggingface/bge-m3 \\
        --device cuda --docling-api-key-file /etc/kca/secrets/docling-api-key

The URLs default to the port map's (embedding 8083, reranker 8006, Docling 8007 on 127.0.0.1), and
each service's memory is read from its unit's MainPID (--pid NAME=PID or --unit NAME=UNIT instead).
--skip-docling leaves Docling out (the test host has no layout models).

Prints one table: embedding throughput over HTTP vs in-process (and their ratio), reranker
latency for 1 query x 32 documents, Docling conversion time for a generated 10-page DOCX,
and each service's resident memory. Every loop is bounded; nothing runs in the background.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import time
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import requests

TIMEOUT = 600
XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
WORDS = [
    *["server", "model", "vector", "search", "document", "table", "report", "query", "answer"],
    *["index", "cluster", "network", "storage", "memory", "energy", "market", "policy"],
    *["weather", "history", "science", "music", "travel"],
]


# --- inputs -----------------------------------------------------------------------------------


def sample_texts(count: int, words_per_text: int = 40) -> list[str]:
    """Deterministic sentences of realistic length (no randomness: runs compare)."""
    texts = []
    for i in range(count):
        words = [WORDS[(i * 7 + j * 3 + j * j) % len(WORDS)] for j in range(words_per_text)]
        texts.append(f"Passage {i}: " + " ".join(words) + ".")
    return texts


def make_docx(pages: int) -> bytes:
    """A minimal WordprocessingML file with a heading, text and a page break per page.

    Written by hand so the bench needs no python-docx in the support venv.
    """
    body = []
    for page in range(1, pages + 1):
        body.append(f'<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Section {page}</w:t></w:r></w:p>')
        for paragraph in sample_texts(12, 60)[page % 4 :]:
            body.append(f"<w:p><w:r><w:t>{escape(paragraph)}</w:t></w:r></w:p>")
        if page < pages:
            body.append('<w:p><w:r><w:br w:type="page"/></w:r></w:p>')
    ns = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document = f"{XML_HEAD}<w:document {ns}><w:body>{''.join(body)}</w:body></w:document>"
    main_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    content_types = (
        f"{XML_HEAD}"
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/word/document.xml" ContentType="{main_type}"/>'
        "</Types>"
    )
    office_document = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
    rels = (
        f"{XML_HEAD}"
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{office_document}" Target="word/document.xml"/>'
        "</Relationships>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", rels)
        archive.writestr("word/document.xml", document)
    return buffer.getvalue()


# --- measurements -----------------------------------------------------------------------------


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def embed_over_http(url: str, texts: list[str], batch_size: int) -> None:
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        response = requests.post(f"{url}/v1/embeddings", json={"input": batch}, timeout=TIMEOUT)
        response.raise_for_status()
        assert len(response.json()["data"]) == len(batch)


def embedding_throughput(args, texts: list[str]) -> dict[str, float]:
    """Texts per second through the server and in this process, same model and batch size."""
    embed_over_http(args.embedding_url, texts[: args.batch_size], args.batch_size)  # warm-up
    http_s = timed(lambda: embed_over_http(args.embedding_url, texts, args.batch_size))

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model_path, device=args.device, local_files_only=True)
    if args.device == "cuda":
        model.half()  # match the server's fp16 on the GPU host

    def encode() -> None:
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)

    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    local_s = timed(encode)
    return {"http": len(texts) / http_s, "local": len(texts) / local_s}


def rerank_latency(args) -> list[float]:
    documents = sample_texts(32, 50)
    body = {"query": "which passage talks about document search?", "documents": documents}
    url = f"{args.reranker_url}/v1/rerank"

    def call() -> None:
        response = requests.post(url, json=body, timeout=TIMEOUT)
        response.raise_for_status()

    call()  # warm-up
    return [timed(call) for _ in range(args.repeats)]


def docling_times(args, api_key: str) -> list[float]:
    data = make_docx(args.pages)
    docx_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

    def call() -> None:
        response = requests.post(
            f"{args.docling_url}/v1/convert/file",
            files={"files": ("bench.docx", data, docx_type)},
            headers={"X-Api-Key": api_key},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        assert response.json().get("status") == "success", response.text[:500]

    call()  # warm-up (first request builds docling's converter)
    return [timed(call) for _ in range(max(1, args.repeats // 3))]


# --- memory -----------------------------------------------------------------------------------


def main_pid(unit: str) -> int:
    out = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", unit],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip() or 0)


def descendants(pid: int) -> list[int]:
    """The process and its children (uvicorn or docling may fork workers)."""
    found, queue = [], [pid]
    while queue and len(found) < 256:  # bounded, whatever the tree looks like
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            queue += [int(child) for child in task.read_text().split()]
    return found


def rss_mib(pid: int) -> float:
    total_kib = 0
    for each in descendants(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def service_pids(args) -> dict[str, int]:
    pids = {}
    for item in args.pid:
        name, _, value = item.partition("=")
        pids[name] = int(value)
    for item in args.unit:
        name, _, unit = item.partition("=")
        pids.setdefault(name, main_pid(unit))
    return {name: pid for name, pid in pids.items() if pid > 0}


# --- report -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="embedding model folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--embedding-url", default="http://127.0.0.1:8083")
    parser.add_argument("--reranker-url", default="http://127.0.0.1:8006")
    parser.add_argument("--docling-url", default="http://127.0.0.1:8007")
    parser.add_argument("--docling-api-key", default=os.environ.get("DOCLING_SERVE_API_KEY", ""))
    parser.add_argument("--docling-api-key-file", type=Path)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--pid", action="append", default=[], help="NAME=PID (repeatable)")
    parser.add_argument(
        "--unit",
        action="append",
        default=[],
        help="NAME=UNIT, PID via systemctl (repeatable; default: the three stack units)",
    )
    parser.add_argument("--skip-docling", action="store_true")
    args = parser.parse_args()
    if not args.pid and not args.unit:
        args.unit = [
            "embedding=bge-embedding-server.service",
            "reranker=bge-reranker.service",
            "docling=docling-serve.service",
        ]
    return args


def main() -> None:
    args = parse_args()
    api_key = args.docling_api_key
    if args.docling_api_key_file:
        api_key = args.docling_api_key_file.read_text().strip()

    rows: list[tuple[str, str]] = []
    texts = sample_texts(args.texts)
    emb = embedding_throughput(args, texts)
    rows.append((f"embedding over HTTP ({args.texts} texts, batch {args.batch_size})", f"{emb['http']:.1f} texts/s"))
    rows.append(("embedding in-process (same model, same batch)", f"{emb['local']:.1f} texts/s"))
    rows.append(("HTTP / in-process throughput", f"{emb['http'] / emb['local']:.2f}"))

    latencies = rerank_latency(args)
    rows.append(
        (f"rerank 1 query x 32 docs (median of {len(latencies)})", f"{statistics.median(latencies) * 1000:.0f} ms")
    )
    if not args.skip_docling:
        label = f"Docling {args.pages}-page DOCX -> markdown"
        try:
            seconds = docling_times(args, api_key)
            rows.append((f"{label} (median of {len(seconds)})", f"{statistics.median(seconds):.2f} s"))
        except (requests.RequestException, AssertionError) as exc:
            # Keep the other figures: a Docling without its models fails here, not the bench.
            rows.append((label, f"failed: {str(exc)[:60]}"))
    for name, pid in service_pids(args).items():
        rows.append((f"resident memory: {name} (pid {pid} + children)", f"{rss_mib(pid):.0f} MiB"))

    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 16}")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
