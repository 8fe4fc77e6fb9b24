"""Benchmark the embedding, reranker and Docling services where they run.

Run it on the host itself, with the python of the venv the services run in (it loads the embedding
model in-process to compare against the HTTP server); `./kca bench` copies it to the test host and
runs it there. On the real server:

    /models/venv/bin/python support_services.py --model-path /models/huggingface/bge-m3 \\
        --device cuda --docling-api-key-file /etc/kca/secrets/docling-api-key

The URLs default to the port map's (embedding 8083, reranker 8006, Docling 8007 on 127.0.0.1), and
each service's memory is read from its unit's MainPID (--pid NAME=PID or --unit NAME=UNIT instead).
--skip-docling leaves Docling out (the test host has no layout models).

Prints:
- a load table: 1, 4, 16 and 64 concurrent clients sending 1 or 16 texts per request, and 16
  clients reranking 1 query x 32 documents. Per row: texts (or documents) per second, p50 and p99
  latency, and the ratio to the in-process throughput of the same model (SentenceTransformer.encode,
  batches of 32, in this process). Each row runs --load-seconds after a warm-up second.
  `--compare NAME=URL` (and `--compare-reranker NAME=URL`) runs every row against another server
  too, row by row in turn so that both see the same machine, and adds its figures and the ratio;
  e.g. another release of these servers, or a dedicated embedding server on the same model.
- an overload run (--overload-seconds, 0 to skip): 4 x the server's max_queued_requests clients
  (from its /health) send 16 texts each for that long, honouring Retry-After; then p50/p99 of the
  answered requests, how many got 503 (and whether each carried Retry-After), other failures, the
  server's peak resident memory, and one normal request afterwards.
- reranker latency for 1 query x 32 documents, Docling conversion time for a generated 10-page
  DOCX, and each service's resident memory.
The load table starts with the machine (CPU, cores, GPU) and its load average, which it prints again
at the end: on a shared machine the other work shifts every figure, so compare servers only within
one run. After the table, each --pid's peak resident memory (the heaviest row, 64 x 16, is the last)
and, with nvidia-smi, its GPU memory.

--device auto (the default) measures in-process on cuda where torch sees a GPU; `--reranker-url ''`
leaves the reranker out. The script needs only torch, sentence-transformers and requests (the
servers' own venv has them), so it can be copied to a GPU machine beside the two servers.
Every loop is bounded in time or count; nothing runs in the background after it returns.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import requests

TIMEOUT = 600
LOAD_ROWS = [(clients, texts) for texts in (1, 16) for clients in (1, 4, 16, 64)]
RERANK_CLIENTS, RERANK_DOCUMENTS = 16, 32
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
    """Texts per second through the server (one client, batches of --batch-size) and in this
    process, same model and batch size."""
    embed_over_http(args.embedding_url, texts[: args.batch_size], args.batch_size)  # warm-up
    http_s = timed(lambda: embed_over_http(args.embedding_url, texts, args.batch_size))

    import torch
    from sentence_transformers import SentenceTransformer

    # As many CPU threads as the server's forward pass has (its OMP_NUM_THREADS), where it says.
    threads = requests.get(f"{args.embedding_url}/health", timeout=TIMEOUT).json().get("threads")
    if threads:
        torch.set_num_threads(threads)
    model = SentenceTransformer(args.model_path, device=args.device, local_files_only=True)
    if args.device == "cuda":
        model.half()  # match the server's fp16 on the GPU host

    def encode() -> None:
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)

    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    local_s = min(timed(encode) for _ in range(3))
    return {"http": len(texts) / http_s, "local": len(texts) / local_s}


def rerank_latency(args) -> list[float]:
    documents = sample_texts(32, 50)
    body = {"query": "which passage talks about document search?", "documents": documents}
    url = f"{args.reranker_url}/v1/rerank"

    if args.reranker_model:
        body["model"] = args.reranker_model

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


# --- load ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    items: int = 0  # texts (embedding) or documents (rerank) answered in the window
    latencies: list[float] = field(default_factory=list)
    refused: int = 0  # 503
    refused_with_retry_after: int = 0
    failed: int = 0  # anything else that is not a 200
    seconds: float = 0.0
    cores: float | None = None  # the server's CPU seconds per second of the row, where its pid is known

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def add(self, other: LoadResult) -> None:
        self.items += other.items
        self.latencies += other.latencies
        self.refused += other.refused
        self.refused_with_retry_after += other.refused_with_retry_after
        self.failed += other.failed


@dataclass(frozen=True)
class Call:
    """One client's request, sent again and again: plain data, so that it can go to a client process."""

    url: str  # the server's base URL
    path: str
    body: bytes
    answers: str  # the response's list whose length counts: "data" (embeddings) or "results" (rerank)


def embedding_call(url: str, model: str | None, texts: list[str]) -> Call:
    body: dict = {"input": texts}
    if model:
        body["model"] = model
    return Call(url, "/v1/embeddings", json.dumps(body).encode(), "data")


def rerank_call(url: str, model: str | None, query: str, documents: list[str]) -> Call:
    body: dict = {"query": query, "documents": documents, "return_documents": False}
    if model:
        body["model"] = model
    return Call(url, "/v1/rerank", json.dumps(body).encode(), "results")


def _client(call: Call, start: float, window: tuple[float, float], honour_retry_after: bool, result, lock) -> None:
    """One client: its own keep-alive connection, calling until the window ends.

    http.client, not requests: a requests call costs the client process about as much CPU as a
    small request costs the server, and the load would then measure the client."""
    address = urlsplit(call.url)
    headers = {"Content-Type": "application/json"}

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(address.hostname, address.port or 80, timeout=TIMEOUT)

    connection = connect()
    while time.time() < start:
        time.sleep(0.01)
    while (began := time.time()) < window[1]:
        retry_after = None
        try:
            connection.request("POST", call.path, body=call.body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            count = len(json.loads(data)[call.answers]) if status == 200 else 0
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            status, count = 0, 0
            connection.close()  # a closed or broken connection: the next call opens a new one
            connection = connect()
        ended = time.time()
        with lock:
            if status == 200 and window[0] <= ended <= window[1]:
                result.items += count
                result.latencies.append(ended - began)
            elif status == 503:
                result.refused += 1
                result.refused_with_retry_after += retry_after is not None
            elif status != 200:
                result.failed += 1
        if status == 503 and honour_retry_after:
            left = window[1] - time.time()
            time.sleep(max(0.0, min(float(retry_after or 1), left, 1.0)))
    connection.close()


def run_clients(calls: list[Call], start: float, warmup: float, seconds: float, honour_retry_after: bool) -> LoadResult:
    """One thread per call in this process, all starting at `start` (wall clock, shared by processes)."""
    result, lock = LoadResult(), threading.Lock()
    window = (start + warmup, start + warmup + seconds)
    threads = [
        threading.Thread(target=_client, args=(c, start, window, honour_retry_after, result, lock), daemon=True)
        for c in calls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + warmup + seconds)
    return result


class ClientProcesses:
    """The load's clients, spread over processes (one Python process runs out of CPU long before a
    server on a GPU does). The processes are started once and used for every row."""

    def __init__(self, processes: int):
        self.processes = processes
        self._pool = None
        if processes > 1:
            # spawn: the parent may hold CUDA (the in-process figure), which a forked child must not inherit.
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            list(self._pool.map(time.sleep, [0.2] * processes))  # all started before the first row

    def drive(
        self, calls: list[Call], seconds: float, warmup: float = 1.0, honour_retry_after: bool = False
    ) -> LoadResult:
        """Every call in a loop for warmup + seconds. Counted: requests that end within the window
        (after the warm-up), however long ago they began: under heavy load one request can take
        longer than the window."""
        groups = [calls[i :: self.processes] for i in range(min(self.processes, len(calls)))]
        start = time.time() + (0.5 if self._pool else 0.2)  # every client is up before anyone counts
        if self._pool is None or len(groups) == 1:
            result = run_clients(calls, start, warmup, seconds, honour_retry_after)
        else:
            result = LoadResult()
            futures = [self._pool.submit(run_clients, g, start, warmup, seconds, honour_retry_after) for g in groups]
            for future in futures:
                result.add(future.result())
        result.seconds = seconds
        return result

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()


def measured(load: ClientProcesses, calls: list[Call], seconds: float, pid: int | None) -> LoadResult:
    """load.drive, and how many cores the server (pid, where known) kept busy meanwhile."""
    before, started = (cpu_seconds(pid) if pid else 0.0), time.time()
    result = load.drive(calls, seconds)
    if pid:
        result.cores = (cpu_seconds(pid) - before) / (time.time() - started)
    return result


def embedding_calls(url: str, model: str | None, clients: int, per_request: int, texts: list[str]) -> list[Call]:
    """Each client its own texts (no server sees the same request twice in a row)."""
    calls = []
    for c in range(clients):
        first = (c * per_request) % max(1, len(texts) - per_request)
        calls.append(embedding_call(url, model, texts[first : first + per_request]))
    return calls


def check_targets(targets: dict[str, dict]) -> None:
    """One request to each server before the table: a server that answers something other than 200
    stops the bench with its answer, instead of a table of zeros."""
    for name, target in targets.items():
        calls = [embedding_call(target["embedding"], target["embedding_model"], ["a check"])]
        if target.get("reranker"):
            calls.append(rerank_call(target["reranker"], target["reranker_model"], "a check", ["a document"]))
        for call in calls:
            try:
                response = requests.post(
                    call.url + call.path, data=call.body, headers={"Content-Type": "application/json"}, timeout=60
                )
            except requests.RequestException as exc:
                raise SystemExit(f"{name}: POST {call.url}{call.path} failed: {exc}") from exc
            if response.status_code != 200:
                answer = f"{response.status_code}: {response.text[:300]}"
                raise SystemExit(f"{name}: POST {call.url}{call.path} answered {answer}")


def row_line(label: str, name: str, result: LoadResult, unit: str) -> str:
    """A row as it is measured; requests that were refused or failed are said, never only counted."""
    line = f"  {label:<22} {name:<14} {result.rate:8.1f} {unit}"
    if result.refused or result.failed:
        line += f" ({result.refused} answered 503, {result.failed} failed)"
    return line


def load_table(args, targets: dict[str, dict], local_rate: float, load: ClientProcesses) -> None:
    """The rows of LOAD_ROWS and the rerank row, each run against every target in turn."""
    texts = sample_texts(1024)
    documents = sample_texts(RERANK_DOCUMENTS, 50)
    query = "which passage talks about document search?"
    names = list(targets)
    rows: list[tuple[str, dict[str, LoadResult], str]] = []
    for clients, per_request in LOAD_ROWS:
        if f"{clients}x{per_request}" not in args.rows:
            continue
        label = f"{clients} client{'s' if clients > 1 else ''} x {per_request} text{'s' if per_request > 1 else ''}"
        found = {}
        for name in names:
            target = targets[name]
            calls = embedding_calls(target["embedding"], target["embedding_model"], clients, per_request, texts)
            found[name] = measured(load, calls, args.load_seconds, target.get("embedding_pid"))
            print(row_line(label, name, found[name], "texts/s"), flush=True)
        rows.append((label, found, "texts/s"))
    label = f"rerank {RERANK_CLIENTS} clients x 1x{RERANK_DOCUMENTS}"
    found = {}
    for name in names:
        target = targets[name]
        if not target.get("reranker") or "rerank" not in args.rows:
            continue
        calls = [rerank_call(target["reranker"], target["reranker_model"], query, documents)] * RERANK_CLIENTS
        found[name] = measured(load, calls, args.load_seconds, target.get("reranker_pid"))
        print(row_line(label, name, found[name], "docs/s"), flush=True)
    if found:
        rows.append((label, found, "docs/s"))

    first = names[0]
    header = ["load", "unit"]
    for name in names:
        header += [f"{name} /s", "p50 ms", "p99 ms", "n", "cores"]
    header.append(f"{first} / in-process")
    header += [f"{first} / {name}" for name in names[1:]]
    lines = [header]
    for label, found, unit in rows:
        line = [label, unit]
        for name in names:
            r = found.get(name)
            if r is None:
                line += ["-"] * 5
                continue
            p50, p99 = r.percentile(0.5) * 1000, r.percentile(0.99) * 1000
            cores = f"{r.cores:.2f}" if r.cores is not None else "-"
            line += [f"{r.rate:.1f}", f"{p50:.0f}", f"{p99:.0f}", str(len(r.latencies)), cores]
        mine = found.get(first)
        line.append(f"{mine.rate / local_rate:.2f}" if mine and unit == "texts/s" and local_rate else "-")
        for name in names[1:]:
            other = found.get(name)
            line.append(f"{mine.rate / other.rate:.2f}" if mine and other and other.rate else "-")
        lines.append(line)
    print(f"\nin-process: {local_rate:.1f} texts/s (SentenceTransformer.encode, batches of 32, the server's threads)")
    print(f"window per row and server: {args.load_seconds:g} s after a 1 s warm-up; n = requests counted")
    print(f"clients: threads with one keep-alive connection each, over {load.processes} process(es)")
    print("cores: the server's CPU time over the row's time (warm-up included), where its pid is known")
    print_markdown(lines)


def print_markdown(lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for index, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def overload(args, pid: int | None, load: ClientProcesses) -> list[tuple[str, str]]:
    """4 x max_queued_requests clients for --overload-seconds, then one normal request."""
    health = requests.get(f"{args.embedding_url}/health", timeout=TIMEOUT).json()
    bound = health.get("max_queued_requests")
    if not bound:
        return [("overload", "skipped: /health does not report max_queued_requests")]
    clients = 4 * bound
    texts = sample_texts(1024)
    calls = embedding_calls(args.embedding_url, args.embedding_model, clients, 16, texts)
    print(f"  overload: {clients} clients x 16 texts for {args.overload_seconds} s", flush=True)
    result = load.drive(calls, args.overload_seconds, honour_retry_after=True)
    started = time.perf_counter()
    after = requests.post(f"{args.embedding_url}/v1/embeddings", json={"input": texts[:16]}, timeout=TIMEOUT)
    after_ms = (time.perf_counter() - started) * 1000
    p99 = result.percentile(0.99)
    rows = [
        (f"overload: clients (4 x max_queued_requests {bound})", str(clients)),
        ("overload: answered 200 in the window", f"{len(result.latencies)} ({result.rate:.1f} texts/s)"),
        ("overload: p50 / p99 of answered", f"{result.percentile(0.5) * 1000:.0f} / {p99 * 1000:.0f} ms"),
        ("overload: 503 (with Retry-After)", f"{result.refused} ({result.refused_with_retry_after})"),
        ("overload: other failures", str(result.failed)),
        ("overload: then one request of 16 texts", f"HTTP {after.status_code} in {after_ms:.0f} ms"),
    ]
    if pid:
        rows.append((f"overload: peak resident memory (pid {pid})", f"{peak_rss_mib(pid):.0f} MiB"))
    return rows


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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process (all its threads) and its children."""
    ticks = 0
    for each in descendants(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most the process has held since it started (children included)."""
    total_kib = 0
    for each in descendants(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
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


def vram_mib(pids: dict[str, int]) -> dict[str, float]:
    """GPU memory each process (and its children) holds, from nvidia-smi; empty without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            used[int(pid)] = float(mib)
    return {name: sum(used.get(each, 0.0) for each in descendants(pid)) for name, pid in pids.items()}


def machine() -> str:
    """The CPU (model, cores), the GPU where torch sees one, and the load average now."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    text = f"{model}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- report -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="embedding model folder")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="for the in-process figure; auto: cuda where torch sees a GPU (match the server's KCA_DEVICE)",
    )
    parser.add_argument("--embedding-url", default="http://127.0.0.1:8083")
    parser.add_argument("--reranker-url", default="http://127.0.0.1:8006", help="'' leaves the reranker out")
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
    parser.add_argument("--embedding-model", help="'model' field sent to every embedding server (default: none)")
    parser.add_argument("--reranker-model", help="'model' field sent to every reranker (default: none)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        help="NAME=URL: another embedding server (OpenAI /v1/embeddings) to run the load table against",
    )
    parser.add_argument(
        "--compare-reranker", action="append", default=[], help="NAME=URL: its reranker (/v1/rerank), same NAME"
    )
    parser.add_argument("--compare-pid", action="append", default=[], help="NAME=PID: its process, for the cores")
    parser.add_argument("--name", default="kca", help="this project's servers' column in the load table")
    parser.add_argument("--load-seconds", type=float, default=10, help="each load row's window (0: no table)")
    parser.add_argument("--overload-seconds", type=float, default=60, help="the overload run (0: skip it)")
    parser.add_argument(
        "--rows",
        default=",".join([*(f"{c}x{t}" for c, t in LOAD_ROWS), "rerank"]),
        help="the load table's rows, CLIENTSxTEXTS and rerank, comma-separated (default: all)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 4),
        help="processes the load's client threads are spread over (default: a quarter of the cores, at least 1;"
        " the rest is left to the servers)",
    )
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.rows = args.rows.split(",")
    unknown = set(args.rows) - {*(f"{c}x{t}" for c, t in LOAD_ROWS), "rerank"}
    if unknown:
        parser.error(f"--rows: no such row {sorted(unknown)}")
    if not args.pid and not args.unit:
        args.unit = [
            "embedding=bge-embedding-server.service",
            "reranker=bge-reranker.service",
            "docling=docling-serve.service",
        ]
    return args


def load_targets(args, pids: dict[str, int]) -> dict[str, dict]:
    targets = {
        args.name: {
            "embedding": args.embedding_url,
            "reranker": args.reranker_url,
            "embedding_model": args.embedding_model,
            "reranker_model": args.reranker_model,
            "embedding_pid": pids.get("embedding"),
            "reranker_pid": pids.get("reranker"),
        }
    }
    compare_pids = {name: int(pid) for name, pid in (item.split("=", 1) for item in args.compare_pid)}
    rerankers = dict(item.split("=", 1) for item in args.compare_reranker)
    for item in args.compare:
        name, url = item.split("=", 1)
        targets[name] = {
            "embedding": url,
            "reranker": rerankers.get(name),
            "embedding_model": args.embedding_model,
            "reranker_model": args.reranker_model,
            # One server answers both (as infinity-emb does with two models): one pid for both rows.
            "embedding_pid": compare_pids.get(name),
            "reranker_pid": compare_pids.get(name),
        }
    return targets


def main() -> None:
    args = parse_args()
    api_key = args.docling_api_key
    if args.docling_api_key_file:
        api_key = args.docling_api_key_file.read_text().strip()
    pids = service_pids(args)

    rows: list[tuple[str, str]] = []
    texts = sample_texts(args.texts)
    emb = embedding_throughput(args, texts)
    rows.append((f"embedding over HTTP ({args.texts} texts, batch {args.batch_size})", f"{emb['http']:.1f} texts/s"))
    rows.append(("embedding in-process (same model, same batch)", f"{emb['local']:.1f} texts/s"))
    rows.append(("HTTP / in-process throughput", f"{emb['http'] / emb['local']:.2f}"))

    if args.load_seconds > 0:
        # Other work on the machine shifts every figure: say what it was, before and after.
        print(f"Load table on {machine()}, {load_average()} (rows run against each server in turn):", flush=True)
        targets = load_targets(args, pids)
        check_targets(targets)
        load = ClientProcesses(args.client_processes)
        try:
            load_table(args, targets, emb["local"], load)
            print(f"after the table: {load_average()}")
        finally:
            load.close()
        # The rows end with the heaviest (64 clients x 16 texts): each process's peak so far.
        for name, pid in pids.items():
            rows.append((f"peak resident memory after the load table: {name}", f"{peak_rss_mib(pid):.0f} MiB"))
        for name, mib in vram_mib(pids).items():
            rows.append((f"GPU memory after the load table: {name}", f"{mib:.0f} MiB"))
    if args.overload_seconds > 0:
        load = ClientProcesses(args.client_processes)
        try:
            rows += overload(args, pids.get("embedding"), load)
        finally:
            load.close()

    if args.reranker_url:
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
    for name, pid in pids.items():
        rows.append((f"resident memory: {name} (pid {pid} + children)", f"{rss_mib(pid):.0f} MiB"))
        rows.append((f"peak resident memory: {name}", f"{peak_rss_mib(pid):.0f} MiB"))

    print()
    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 16}")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
