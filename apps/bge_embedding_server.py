"""OpenAI-compatible embedding server (BGE-M3 in production).

Deployed to the host next to kca_service_common.py (settings, errors, body limit, /health,
/v1/models and the command line shared with reranker_server.py) and run by systemd:

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

import base64
import logging
import time
from typing import Any

import kca_service_common
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kca_service_common import ApiError, Settings

log = logging.getLogger("bge_embedding_server")


# --- request bodies (errors and the body limit: kca_service_common.py) ------------------------


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


class Embedder(kca_service_common.ModelHolder):
    """The loaded model; one forward pass at a time (one GPU, predictable memory)."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.dimension = 0

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


# --- the app ----------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # Same as OpenAI: little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(settings: Settings) -> FastAPI:
    embedder = Embedder(settings)
    app = kca_service_common.create_base_app(
        "bge-embedding-server", settings, embedder, log, health_extra=lambda: {"dimension": embedder.dimension}
    )
    app.state.embedder = embedder

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await kca_service_common.read_json_body(request, settings.max_body_bytes)
        texts = parse_texts(body.get("input"), settings)
        encoding_format = body.get("encoding_format")
        if encoding_format is None:
            encoding_format = "float"
        if encoding_format not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
        kca_service_common.check_model_and_ready(body, embedder)
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
    kca_service_common.main(__doc__, 8083, create_app, argv)


if __name__ == "__main__":
    main()
