"""OpenAI-compatible embedding server (BGE-M3 in production).

Deployed to the host as one file and run by systemd:

    VENV/bin/python bge_embedding_server.py --host HOST --port PORT

Every setting comes from the environment (the unit renders it from the stack data):

    KCA_MODEL_PATH      local sentence-transformers folder (required; nothing is downloaded)
    KCA_MODEL_NAME      id shown in /v1/models and echoed as "model" (default: folder name)
    KCA_DEVICE          cuda | cpu (default cpu)
    KCA_PRECISION       fp16 | fp32 (default fp32; fp16 only on cuda)
    KCA_BATCH_SIZE      texts per forward pass (default 32)
    KCA_MAX_ITEMS       most texts in one request (default 256)
    KCA_MAX_TEXT_CHARS  longest text in characters (default 32768)
    KCA_MAX_BODY_BYTES  largest request body in bytes (default 8388608)

Endpoints: GET /health (503 while the model loads), GET /v1/models, POST /v1/embeddings.
Every error is a JSON body {"error": {"message", "type"}} with a 4xx/5xx status.
"""

from __future__ import annotations

import argparse
import base64
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

log = logging.getLogger("bge_embedding_server")


# --- configuration ----------------------------------------------------------------------------


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


def parse_texts(value: Any, settings: Settings) -> list[str]:
    """Check the OpenAI "input" field: one string or a list of strings, within the limits."""
    if value is None:
        raise ApiError(400, "'input' is required")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ApiError(400, "'input' must be a string or a list of strings")
    if not texts:
        raise ApiError(400, "'input' must not be an empty list")
    if len(texts) > settings.max_items:
        raise ApiError(400, f"'input' has {len(texts)} items; at most {settings.max_items}")
    for i, text in enumerate(texts):
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            raise ApiError(400, "token-id input is not supported; send text")
        if not isinstance(text, str):
            raise ApiError(400, f"'input[{i}]' must be a string")
        if not text:
            raise ApiError(400, f"'input[{i}]' is empty")
        if len(text) > settings.max_text_chars:
            raise ApiError(
                400,
                f"'input[{i}]' has {len(text)} characters; at most {settings.max_text_chars}",
            )
    return texts


# --- the model --------------------------------------------------------------------------------


class Embedder:
    """The loaded model; one forward pass at a time (one GPU, predictable memory)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model: Any = None
        self.dimension = 0
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        # Imported here so /health answers "loading" while torch itself is still importing.
        from sentence_transformers import SentenceTransformer

        started = time.monotonic()
        model = SentenceTransformer(self.settings.model_path, device=self.settings.device, local_files_only=True)
        if self.settings.precision == "fp16":
            model.half()
        model.eval()
        dim_of = getattr(model, "get_embedding_dimension", None) or (model.get_sentence_embedding_dimension)
        self.dimension = int(dim_of())
        self.model = model
        log.info(
            "loaded %s (%d-d) on %s/%s in %.1fs",
            self.settings.model_path,
            self.dimension,
            self.settings.device,
            self.settings.precision,
            time.monotonic() - started,
        )

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model really sees (special tokens included, cut at its max length)."""
        encoded = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            tokens = self.count_tokens(texts)
        return np.asarray(vectors, dtype=np.float32), tokens


def load_in_background(embedder: Embedder) -> None:
    """Load the model; a model that cannot load ends the process so systemd restarts it."""
    try:
        embedder.load()
    except Exception as exc:  # noqa: BLE001 - any failure here is fatal and must be logged
        log.exception("model load failed")
        embedder.error = str(exc)
        logging.shutdown()
        os._exit(3)


# --- the app ----------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # Same as OpenAI: little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(settings: Settings) -> FastAPI:
    embedder = Embedder(settings)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=load_in_background, args=(embedder,), daemon=True).start()
        yield

    app = FastAPI(title="bge-embedding-server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.embedder = embedder

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
        if not embedder.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(
            content={
                "status": "ok",
                "model": settings.model_name,
                "device": settings.device,
                "precision": settings.precision,
                "dimension": embedder.dimension,
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_name, "object": "model", "created": created, "owned_by": "kca"}],
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await read_json_body(request, settings.max_body_bytes)
        texts = parse_texts(body.get("input"), settings)
        encoding_format = body.get("encoding_format")
        if encoding_format is None:
            encoding_format = "float"
        if encoding_format not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string")
        if not embedder.ready:
            raise ApiError(503, "model is still loading", "service_unavailable")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != embedder.dimension:
            raise ApiError(400, f"'dimensions' can only be {embedder.dimension} for this model")

        vectors, tokens = await run_in_threadpool(embedder.embed, texts)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            content={
                "object": "list",
                "data": data,
                "model": settings.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(load_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
