"""What the KCA model servers (bge_embedding_server.py, reranker_server.py) share.

Deployed into the same folder as each server and imported as a plain `import kca_service_common`:
a script's own folder is first on sys.path. Stdlib, NumPy, orjson, FastAPI, Starlette and uvicorn only.

Shared: the KCA_* settings and their checks, the {"error": {"message", "type"}} shape with its
exception handlers, the request-body size limit, loading the model in the background with
/health answering 503 until it is ready, the bound on requests (503 with Retry-After beyond it),
running a request through the model's process (which batches it, kca_batching.py), padding token ids,
GET /v1/models, and the command line with uvicorn's limits.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import kca_batching
import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Requests are tokenized side by side in the thread pool already; the tokenizer's own worker pool on top
# would only compete with the forward pass for the same cores. Read when the tokenizer is first used.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The forward pass's OpenMP threads spin only briefly before they sleep (GOMP_SPINCOUNT, libgomp's, which
# torch's wheels ship). libgomp's default spins 300,000 times, and a spinning thread holds a core that
# the tokenizer and the other services on the host need: on 2 busy cores a one-text pass on 2 threads
# took 7x the CPU time of one thread. Not spinning at all (OMP_WAIT_POLICY=PASSIVE) pays a futex wake
# at every operation of the pass. A short spin has neither cost; one MiniLM text on 2 threads, measured
# on 2 cores (docs/support-load.md): idle cores 17.5 ms at 1.67 cores with 1000 spins, 22 ms at 1.45
# cores passive, 14-17 ms at 1.95 cores with the default; beside two busy loops 33-48 ms at 0.79 cores
# with 1000 spins, 32-50 ms at 0.75 passive. Read when torch (and with it libgomp) is first imported,
# which is after this module.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Tokenizing a request this small (in characters) costs less than a hop to the thread pool and
# back: done on the event loop. Larger requests go to the pool, beside the forward passes.
INLINE_CHARS = 4096

# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    model_path: str
    model_name: str
    device: str
    precision: str
    # Batching across requests (kca_batching.py): padded tokens per forward pass, how long the model's
    # process waits for clients coming back, and how many requests may be admitted at once.
    batch_tokens: int
    batch_wait_ms: int
    max_queued_requests: int
    # Per request: texts, characters and tokens per text (longer texts are cut to max_text_tokens,
    # or to the model's own limit where that is lower), tokens in all, and body bytes.
    max_items: int
    max_text_chars: int
    max_text_tokens: int
    max_request_tokens: int
    max_body_bytes: int
    body_timeout_s: int
    # uvicorn: connections and tasks at once (beyond it uvicorn itself answers 503), and how long
    # an idle keep-alive connection stays open.
    limit_concurrency: int
    timeout_keep_alive_s: int


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be >= {minimum}")
    return value


def load_settings() -> Settings:
    """Read and check the environment once; a bad setting stops the process with its reason."""
    model_path = os.environ.get("KCA_MODEL_PATH", "")
    if not model_path:
        raise SystemExit("KCA_MODEL_PATH is not set (a local model folder)")
    device = os.environ.get("KCA_DEVICE", "cpu")
    if device not in ("cuda", "cpu"):
        raise SystemExit(f"KCA_DEVICE={device!r}: use cuda or cpu")
    precision = os.environ.get("KCA_PRECISION", "fp32")
    if precision not in ("fp16", "fp32"):
        raise SystemExit(f"KCA_PRECISION={precision!r}: use fp16 or fp32")
    if precision == "fp16" and device != "cuda":
        # Half precision on CPU is slow and loses accuracy for nothing.
        raise SystemExit("KCA_PRECISION=fp16 needs KCA_DEVICE=cuda")
    settings = Settings(
        model_path=model_path,
        model_name=os.environ.get("KCA_MODEL_NAME") or os.path.basename(model_path.rstrip("/")),
        device=device,
        precision=precision,
        batch_tokens=_env_int("KCA_BATCH_TOKENS", 8192),
        batch_wait_ms=_env_int("KCA_BATCH_WAIT_MS", 2, minimum=0),
        max_queued_requests=_env_int("KCA_MAX_QUEUED_REQUESTS", 64),
        max_items=_env_int("KCA_MAX_ITEMS", 256),
        max_text_chars=_env_int("KCA_MAX_TEXT_CHARS", 32768),
        max_text_tokens=_env_int("KCA_MAX_TEXT_TOKENS", 8192),
        max_request_tokens=_env_int("KCA_MAX_REQUEST_TOKENS", 65536),
        max_body_bytes=_env_int("KCA_MAX_BODY_BYTES", 8 * 1024 * 1024),
        body_timeout_s=_env_int("KCA_BODY_TIMEOUT_S", 30),
        limit_concurrency=_env_int("KCA_LIMIT_CONCURRENCY", 512),
        timeout_keep_alive_s=_env_int("KCA_TIMEOUT_KEEP_ALIVE_S", 5),
    )
    if settings.max_text_tokens > settings.batch_tokens:
        # Every text must fit one forward pass, or the pass bound says nothing about memory.
        raise SystemExit(
            f"KCA_MAX_TEXT_TOKENS={settings.max_text_tokens} is larger than KCA_BATCH_TOKENS={settings.batch_tokens}"
        )
    if settings.limit_concurrency <= settings.max_queued_requests:
        # The queue's own 503 (with Retry-After) must come before uvicorn's bare one.
        raise SystemExit(
            f"KCA_LIMIT_CONCURRENCY={settings.limit_concurrency} must be larger than "
            f"KCA_MAX_QUEUED_REQUESTS={settings.max_queued_requests}"
        )
    return settings


# --- errors and request bodies ----------------------------------------------------------------


class ApiError(Exception):
    """An error answered as {"error": {...}}; raised anywhere in request handling."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers


class FastJSONResponse(JSONResponse):
    """JSON bodies encoded by orjson: NumPy arrays and floats in C, not through Python lists."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}}, headers=headers)


async def read_json_body(request: Request, max_bytes: int, timeout_s: int) -> dict[str, Any]:
    """Read at most max_bytes of body within timeout_s and parse it as a JSON object.

    The limit is checked before parsing, by counting bytes while reading: a chunked body has
    no length and a declared one may be wrong. A body somewhat over the limit is read to its
    end without being kept, so the client is done sending and reads the 413. The timeout keeps
    a client that sends slowly from holding its place in the queue.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 2 * max_bytes:
        # Far too large: refuse without reading (the client may see the connection close).
        raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    too_large = False
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    # Keep reading but stop storing, so the client gets to read the 413;
                    # give up (and let the connection close) after another max_bytes.
                    too_large = True
                    if size > 2 * max_bytes:
                        break
                    continue
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s} s") from None
    if too_large:
        raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            # Thousands of nested brackets fit in a small body; orjson stops at 1024 levels.
            raise ApiError(400, "body is nested too deeply") from None
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


# --- the model and its process ----------------------------------------------------------------


class ModelHolder:
    """A server's model, run in a process of its own, which also batches its requests.

    The HTTP process (the event loop: requests, tokenizing, JSON) and the model's process (torch and
    the batching, kca_batching.py) share nothing but a socket. In one process they shared one GIL:
    every torch operation lets go of the GIL and takes it back, and each time the event loop held it
    the forward pass waited, so a busy event loop stretched every pass. On a GPU, 16 clients sending
    one text each got 22% of the in-process throughput that way (docs/support-load.md).

    The subclass says how: `load()` and `run_pass()` run in the model's process, `adopt()` in the
    HTTP process with what `load()` returned (the tokenizer, the model's figures). /health and the
    request handlers answer 503 until the model's process says it is ready.
    """

    def __init__(self, settings: Settings, name: str, script: str):
        self.settings = settings
        self.name = name
        self.script = script  # the server's own file: the model's process runs it with --model-process
        self.tokenizer: Any = None
        self.pad_id = 0
        self.error: str | None = None
        self.bound = kca_batching.RequestBound(settings.max_queued_requests)
        # What the model has done since the start, for /health (the servers keep no access log).
        self.answered = 0
        self.texts = 0
        self.passes = 0
        self._ready = False
        self._socket: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._process: subprocess.Popen | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    # --- in the model's process (the subclass) ---

    def load(self) -> dict[str, Any]:
        """Load the model; return what adopt() needs, picklable (the tokenizer as its JSON, pad_id)."""
        raise NotImplementedError

    def run_pass(self, arrays: dict[str, np.ndarray]) -> Any:
        """One forward pass over padded token ids: one result per row, in order."""
        raise NotImplementedError

    def lanes(self) -> int:
        """Passes run side by side (kca_batching.py, step 4). On a CPU, one per thread of the forward
        pass (OMP_NUM_THREADS), each on one thread: on 2 cores, two passes side by side ran 143-150
        texts/s (passes of 16 to 80 short texts), the same passes one after another on both threads
        137-142, whose threads wait for each other at every operation (docs/support-load.md). On a
        GPU, one: the device runs one pass at a time anyway, and each lane would hold a pass's memory."""
        if self.settings.device != "cpu":
            return 1
        import torch

        return torch.get_num_threads()

    @staticmethod
    def start_lane() -> None:
        """In each lane's thread, before its first pass: torch's thread count is the thread's own."""
        import torch

        torch.set_num_threads(1)

    # --- in the HTTP process ---

    def adopt(self, described: dict[str, Any]) -> None:
        """Take what load() returned: the tokenizer (cut where the model cuts) and the pad id."""
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(described["tokenizer"])
        self.tokenizer.enable_truncation(described["max_tokens"], strategy=described.get("truncation", "longest_first"))
        self.tokenizer.no_padding()
        self.pad_id = described["pad_id"]

    def spawn_model_process(self) -> None:
        """Start the model's process. From the main thread: the process's death signal
        (PR_SET_PDEATHSIG) follows the thread that started it, and the main thread lives as long as
        this server does."""
        parent, child = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, self.script, "--model-process", str(child.fileno())],
            pass_fds=[child.fileno()],
        )
        child.close()
        self._socket = parent

    async def talk_to_model(self, log: logging.Logger) -> None:
        """Wait until the model's process has loaded the model, then hand each answer it sends to the
        request waiting for it. The model's process ending, or not loading, ends this server."""
        reader, self._writer = await asyncio.open_connection(sock=self._socket)
        try:
            status, value = await kca_batching.read_message(reader)
        except asyncio.IncompleteReadError:
            status, value = "failed", f"the model's process ended with {await asyncio.to_thread(self._process.wait)}"
        if status != "ready":
            self.error = str(value)
            exit_for_restart(log, f"the model did not load: {value}")
        self.adopt(value)
        self._ready = True
        while True:
            try:
                message = await kca_batching.read_message(reader)
            except (asyncio.IncompleteReadError, OSError):
                # Killed, out of memory: systemd restarts the unit, and with it a model in a known state.
                exit_for_restart(log, "the model's process ended")
            kind, request_id, value, *passes = message
            waiting = self._waiting.pop(request_id, None)
            if kind == "done":
                self.answered += 1
                self.texts += len(value)
                self.passes = passes[0]
            if waiting is None or waiting.done():  # the request is gone (its client went away)
                continue
            if kind == "done":
                waiting.set_result(value)
            else:
                waiting.set_exception(RuntimeError(value))

    async def run(self, items: list[tuple[list[int], list[int]]], lengths: list[int]) -> list[Any]:
        """One request's texts through the model's process: one result per item, in order."""
        request_id = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        kca_batching.write_message(self._writer, ("run", request_id, items, lengths, self.bound.admitted))
        try:
            return await future
        finally:
            self._waiting.pop(request_id, None)


def exit_for_restart(log: logging.Logger, why: str) -> NoReturn:
    """End the server at once with status 3, for systemd to restart it in a known state."""
    log.critical("%s; exiting so that systemd restarts", why)
    logging.shutdown()
    os._exit(3)


def serve_model(holder: ModelHolder, fd: int, log: logging.Logger) -> int:
    """The model's process: load, say so, then batch and run the requests the HTTP process sends
    until it closes the socket.

    SIGTERM and SIGINT are left to the HTTP process: on a stop, systemd signals both, and the
    passes of requests still open must go on until uvicorn's graceful shutdown ends. The socket
    closing ends this process; so does the HTTP process's death (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        return 0  # the HTTP process died before prctl took effect
    sock = socket.socket(fileno=fd)
    try:
        described = holder.load()
    except Exception as exc:  # noqa: BLE001 - reported to the HTTP process, which exits
        log.exception("model load failed")
        kca_batching.send_message(sock, ("failed", f"model load failed: {type(exc).__name__}: {exc}"))
        return 3
    kca_batching.send_message(sock, ("ready", described))
    settings, pad_id = holder.settings, described["pad_id"]
    batcher = kca_batching.Batcher(
        lambda items: holder.run_pass(pad_token_ids(items, pad_id)),
        batch_tokens=settings.batch_tokens,
        wait_ms=settings.batch_wait_ms,
        name=holder.name,
        lanes=holder.lanes(),
        start_lane=holder.start_lane,
    )
    batcher.serve(sock)
    return 0


def pad_token_ids(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, np.ndarray]:
    """(ids, type ids) per text -> input_ids, token_type_ids and attention_mask, padded on the right."""
    longest = max(len(ids) for ids, _ in items)
    input_ids = np.full((len(items), longest), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(items), longest), dtype=np.int64)
    attention_mask = np.zeros((len(items), longest), dtype=np.int64)
    for row, (ids, type_ids) in enumerate(items):
        input_ids[row, : len(ids)] = ids
        token_type_ids[row, : len(ids)] = type_ids
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def admit(model: ModelHolder) -> kca_batching.Admission:
    """A place among the server's requests, or 503 with Retry-After at once when they are too many.

    Taken before the body is read, so that bodies in memory are bounded too
    (max_queued_requests x max_body_bytes); use it as a context manager: the place is freed
    however the request ends."""
    try:
        return model.bound.admit()
    except kca_batching.QueueFull as exc:
        # One second: the model clears a full forward pass well within it on the GPU.
        raise ApiError(503, f"busy: {exc}; retry later", "service_unavailable", {"Retry-After": "1"}) from None


async def run_tokenized(
    model: ModelHolder, tokenize: Callable[[], list[tuple[list[int], list[int]]]], size: int
) -> tuple[list[Any], int]:
    """Tokenize (size: the request's characters; in the thread pool unless small), check the request's
    token total, and wait for its results from the model's process, in order."""
    items = tokenize() if size <= INLINE_CHARS else await run_in_threadpool(tokenize)
    lengths = [len(ids) for ids, _ in items]
    tokens = sum(lengths)
    if tokens > model.settings.max_request_tokens:
        raise ApiError(400, f"the request has {tokens} tokens; at most {model.settings.max_request_tokens}: split it")
    return await model.run(items, lengths), tokens


def check_model_and_ready(body: dict[str, Any], model: ModelHolder) -> None:
    """The optional "model" field is only type-checked (one model per server); then the model must be loaded."""
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "'model' must be a string")
    if not model.ready:
        raise ApiError(503, "model is still loading", "service_unavailable")


# --- the app ----------------------------------------------------------------------------------


def create_base_app(
    title: str,
    settings: Settings,
    model: ModelHolder,
    log: logging.Logger,
    health_extra: Callable[[], dict[str, Any]] = dict,
) -> FastAPI:
    """The app with the model loading in the background, the error handlers, /health and
    /v1/models; the server adds its own routes. health_extra adds fields to a ready /health."""
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        model.spawn_model_process()
        talking = asyncio.create_task(model.talk_to_model(log))
        yield
        talking.cancel()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)

    # One error shape for everything, FastAPI's own 404/405/422 included.
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the same JSON shape as every other error.
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not model.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(
            content={
                "status": "ok",
                "model": settings.model_name,
                "device": settings.device,
                "precision": settings.precision,
                "queued_requests": model.bound.admitted,
                "max_queued_requests": settings.max_queued_requests,
                # What the model has done since the start (no access log: see main()).
                "answered_requests": model.answered,
                "texts": model.texts,
                "forward_passes": model.passes,
                **health_extra(),
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "created": created, "owned_by": "kca"}],
        }

    return app


def main(
    doc: str,
    default_port: int,
    create_app: Callable[[Settings], FastAPI],
    holder: Callable[[Settings], ModelHolder],
    argv: list[str] | None,
) -> None:
    """The command line systemd runs: --host, --port, --log-level; settings from the environment.
    With --model-process FD (given by the server itself, not by systemd) it is the model's process."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--model-process", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    if args.model_process is not None:
        sys.exit(serve_model(holder(settings), args.model_process, logging.getLogger("model-process")))
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # The C parser and event loop (requirements-support.txt); named so that a venv without them
        # fails at start instead of running several times slower on the pure-Python defaults.
        http="httptools",
        loop="uvloop",
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        # No line per request: at thousands of small requests a second (16 clients embedding one text
        # each reach 1,800/s on the test host) they would cost the event loop and pass journald's
        # default rate limit (10,000 lines in 30 s), which then drops the lines that matter. Errors
        # and the model's load are still logged.
        access_log=False,
        # systemd's stop waits for open requests this long, then uvicorn closes them.
        timeout_graceful_shutdown=settings.body_timeout_s,
    )
