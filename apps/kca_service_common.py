"""What the KCA model servers (bge_embedding_server.py, reranker_server.py) share.

Deployed into the same folder as each server and imported as a plain `import kca_service_common`:
a script's own folder is first on sys.path. Stdlib, FastAPI, Starlette and uvicorn only.

Shared: the KCA_* settings and their checks, the {"error": {"message", "type"}} shape with its
exception handlers, the request-body size limit, loading the model in the background with
/health answering 503 until it is ready, GET /v1/models, and the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


# --- the model's loading state ----------------------------------------------------------------


class ModelHolder:
    """A server's model and its loading state; the server's subclass loads and runs the model.

    /health and the request handlers answer 503 until `model` is set. Subclasses hold
    `_lock` around each forward pass: one at a time (one GPU, predictable memory).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model: Any = None
        self.error: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        raise NotImplementedError


def load_in_background(model: ModelHolder, log: logging.Logger) -> None:
    """Load the model; a model that cannot load ends the process so systemd restarts it."""
    try:
        model.load()
    except Exception as exc:  # noqa: BLE001 - any failure here is fatal and must be logged
        log.exception("model load failed")
        model.error = str(exc)
        logging.shutdown()
        os._exit(3)


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
        threading.Thread(target=load_in_background, args=(model, log), daemon=True).start()
        yield

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)

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
        if not model.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(
            content={
                "status": "ok",
                "model": settings.model_name,
                "device": settings.device,
                "precision": settings.precision,
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


def main(doc: str, default_port: int, create_app: Callable[[Settings], FastAPI], argv: list[str] | None) -> None:
    """The command line systemd runs: --host, --port, --log-level; settings from the environment."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(load_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
