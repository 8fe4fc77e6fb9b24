"""Rerank server (BGE reranker v2-m3 in production), in the shape Dify and Open WebUI call.

Deployed to the host as one file and run by systemd:

    VENV/bin/python reranker_server.py --host HOST --port PORT

Every setting comes from the environment (the unit renders it from the stack data):

    KCA_MODEL_PATH      local cross-encoder folder (required; nothing is downloaded)
    KCA_MODEL_NAME      id shown in /v1/models and echoed as "model" (default: folder name)
    KCA_DEVICE          cuda | cpu (default cpu)
    KCA_PRECISION       fp16 | fp32 (default fp32; fp16 only on cuda)
    KCA_BATCH_SIZE      query-document pairs per forward pass (default 32)
    KCA_MAX_ITEMS       most documents in one request (default 256)
    KCA_MAX_TEXT_CHARS  longest query or document in characters (default 32768)
    KCA_MAX_BODY_BYTES  largest request body in bytes (default 8388608)

Endpoints: GET /health (503 while the model loads), GET /v1/models, POST /v1/rerank and
POST /rerank taking {"model", "query", "documents", "top_n"}. Scores are sigmoid(logit), 0..1.
Every error is a JSON body {"error": {"message", "type"}} with a 4xx/5xx status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("reranker_server")


# --- configuration (same names and rules as bge_embedding_server.py) --------------------------


@dataclass(frozen=True)
class Settings:
    model_path: str
    model_name: str
    device: str
    precision: str
    batch_size: int
    max_items: int
    max_text_chars: int
    max_body_bytes: int


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise SystemExit(f"{name}={value} must be >= 1")
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
    return Settings(
        model_path=model_path,
        model_name=os.environ.get("KCA_MODEL_NAME") or os.path.basename(model_path.rstrip("/")),
        device=device,
        precision=precision,
        batch_size=_env_int("KCA_BATCH_SIZE", 32),
        max_items=_env_int("KCA_MAX_ITEMS", 256),
        max_text_chars=_env_int("KCA_MAX_TEXT_CHARS", 32768),
        max_body_bytes=_env_int("KCA_MAX_BODY_BYTES", 8 * 1024 * 1024),
    )


# --- errors and request bodies ----------------------------------------------------------------


class ApiError(Exception):
    """An error answered as {"error": {...}}; raised anywhere in request handling."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """Read at most max_bytes of body and parse it as a JSON object.

    The limit is checked before parsing, by counting bytes while reading: a chunked body has
    no length and a declared one may be wrong. A body somewhat over the limit is read to its
    end without being kept, so the client is done sending and reads the 413.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 2 * max_bytes:
        # Far too large: refuse without reading (the client may see the connection close).
        raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    too_large = False
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
    if too_large:
        raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def check_text(name: str, value: Any, settings: Settings) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a string")
    if not value:
        raise ApiError(400, f"'{name}' is empty")
    if len(value) > settings.max_text_chars:
        raise ApiError(400, f"'{name}' has {len(value)} characters; at most {settings.max_text_chars}")
    return value


def parse_documents(value: Any, settings: Settings) -> list[str]:
    """Documents as strings or {"text": ...} objects (both forms seen from RAG front ends)."""
    if not isinstance(value, list):
        raise ApiError(400, "'documents' must be a list")
    if not value:
        raise ApiError(400, "'documents' must not be empty")
    if len(value) > settings.max_items:
        raise ApiError(400, f"'documents' has {len(value)} items; at most {settings.max_items}")
    texts = []
    for i, doc in enumerate(value):
        if isinstance(doc, dict):
            doc = doc.get("text")
        texts.append(check_text(f"documents[{i}]", doc, settings))
    return texts


def parse_top_n(value: Any, count: int) -> int:
    """top_n is optional (all documents); when given it must be an integer >= 1."""
    if value is None:
        return count
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "'top_n' must be an integer")
    if value < 1:
        raise ApiError(400, "'top_n' must be >= 1")
    return min(value, count)


# --- the model --------------------------------------------------------------------------------


class Reranker:
    """The loaded cross-encoder; one forward pass at a time (one GPU, predictable memory)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model: Any = None
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        # Imported here so /health answers "loading" while torch itself is still importing.
        import torch
        from sentence_transformers import CrossEncoder

        started = time.monotonic()
        # Raw logits out (Identity); the sigmoid is applied below so the 0..1 scale does not
        # depend on whatever activation the model folder's config names.
        model = CrossEncoder(
            self.settings.model_path,
            device=self.settings.device,
            local_files_only=True,
            activation_fn=torch.nn.Identity(),
        )
        if self.settings.precision == "fp16":
            model.model.half()
        model.model.eval()
        self.model = model
        log.info(
            "loaded %s on %s/%s in %.1fs",
            self.settings.model_path,
            self.settings.device,
            self.settings.precision,
            time.monotonic() - started,
        )

    def count_tokens(self, query: str, documents: list[str]) -> int:
        """Tokens the model really sees for all pairs (special tokens included, truncated)."""
        encoded = self.model.tokenizer(
            [query] * len(documents),
            documents,
            truncation=True,
            max_length=self.model.max_length,
        )
        return sum(len(ids) for ids in encoded["input_ids"])

    def score(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
        with self._lock:
            logits = self.model.predict(
                [(query, doc) for doc in documents],
                batch_size=self.settings.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            tokens = self.count_tokens(query, documents)
        logits = np.asarray(logits, dtype=np.float64).reshape(len(documents), -1)[:, 0]
        return 1.0 / (1.0 + np.exp(-logits)), tokens


def load_in_background(reranker: Reranker) -> None:
    """Load the model; a model that cannot load ends the process so systemd restarts it."""
    try:
        reranker.load()
    except Exception as exc:  # noqa: BLE001 - any failure here is fatal and must be logged
        log.exception("model load failed")
        reranker.error = str(exc)
        logging.shutdown()
        os._exit(3)


# --- the app ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    reranker = Reranker(settings)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=load_in_background, args=(reranker,), daemon=True).start()
        yield

    app = FastAPI(title="reranker-server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.reranker = reranker

    # One error shape for everything, FastAPI's own 404/405/422 included.
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not reranker.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(
            content={
                "status": "ok",
                "model": settings.model_name,
                "device": settings.device,
                "precision": settings.precision,
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "created": created, "owned_by": "kca"}],
        }

    async def rerank(request: Request) -> JSONResponse:
        body = await read_json_body(request, settings.max_body_bytes)
        query = check_text("query", body.get("query"), settings)
        documents = parse_documents(body.get("documents"), settings)
        top_n = parse_top_n(body.get("top_n"), len(documents))
        return_documents = body.get("return_documents", True)
        if not isinstance(return_documents, bool):
            raise ApiError(400, "'return_documents' must be true or false")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string")
        if not reranker.ready:
            raise ApiError(503, "model is still loading", "service_unavailable")

        scores, tokens = await run_in_threadpool(reranker.score, query, documents)
        # Stable sort: equal scores keep the order the caller sent.
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        return JSONResponse(
            content={
                "model": settings.model_name,
                "results": results,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # Dify posts to /v1/rerank (base URL ends in /v1), Open WebUI to the full URL given.
    app.add_api_route("/v1/rerank", rerank, methods=["POST"])
    app.add_api_route("/rerank", rerank, methods=["POST"])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(load_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
