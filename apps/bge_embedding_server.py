"""OpenAI-compatible embedding server (BGE-M3 in production).

Deployed to the host next to kca_service_common.py (settings, errors, body limit, /health,
/v1/models and the command line shared with reranker_server.py) and run by systemd:

    VENV/bin/python bge_embedding_server.py --host HOST --port PORT

Every setting comes from the environment (the unit renders it from the stack data):

    KCA_MODEL_PATH      local sentence-transformers folder (required; nothing is downloaded)
    KCA_MODEL_NAME      id shown in /v1/models and echoed as "model" (default: folder name)
    KCA_DEVICE          cuda | cpu (default cpu)
    KCA_PRECISION       fp16 | fp32 (default fp32; fp16 only on cuda)
    KCA_BATCH_TOKENS         padded tokens per forward pass (default 8192)
    KCA_BATCH_WAIT_MS        how long a pass waits for clients coming back (default 2)
    KCA_MAX_QUEUED_REQUESTS  requests admitted at once; more get 503 + Retry-After (default 64)
    KCA_MAX_ITEMS            most texts in one request (default 256)
    KCA_MAX_TEXT_CHARS       longest text in characters (default 32768)
    KCA_MAX_TEXT_TOKENS      tokens per text; longer texts are cut, as by the model (default 8192)
    KCA_MAX_REQUEST_TOKENS   tokens in one request, all texts together (default 65536)
    KCA_MAX_BODY_BYTES       largest request body in bytes (default 8388608)
    KCA_LIMIT_CONCURRENCY    uvicorn's bound on connections and tasks (default 96)
    KCA_TIMEOUT_KEEP_ALIVE_S idle keep-alive connections close after this (default 5)

Requests from all clients are batched together (kca_batching.py): each request is tokenized here
and sent to the model's own process, which gathers the requests that have arrived into
length-sorted forward passes of at most KCA_BATCH_TOKENS tokens and sends each caller's vectors
back in order.

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
    """The model (in its own process), its tokenizer (here) and the forward pass the batcher runs."""

    def __init__(self, settings: Settings):
        super().__init__(settings, "embedding", __file__)
        self.dimension = 0
        self.threads = 0
        self.model: Any = None
        self._torch: Any = None

    # --- in the model's process ---

    def load(self) -> dict[str, Any]:
        import torch
        from sentence_transformers import SentenceTransformer

        started = time.monotonic()
        model = SentenceTransformer(self.settings.model_path, device=self.settings.device, local_files_only=True)
        if self.settings.precision == "fp16":
            model.half()
        model.eval()
        dim_of = getattr(model, "get_embedding_dimension", None) or (model.get_sentence_embedding_dimension)
        self._torch = torch
        self.model = model
        log.info(
            "loaded %s on %s/%s in %.1fs",
            self.settings.model_path,
            self.settings.device,
            self.settings.precision,
            time.monotonic() - started,
        )
        # The model's own fast tokenizer, cut where the model cuts (or sooner, at max_text_tokens):
        # the HTTP process makes the same ids as model.encode() would.
        return {
            "tokenizer": model.tokenizer.backend_tokenizer.to_str(),
            "max_tokens": min(self.settings.max_text_tokens, model.max_seq_length),
            "pad_id": model.tokenizer.pad_token_id or 0,
            "dimension": int(dim_of()),
            "threads": torch.get_num_threads(),  # OMP_NUM_THREADS from the unit
        }

    def run_pass(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        torch = self._torch
        # BERT takes token_type_ids, XLM-RoBERTa (BGE-M3) does not: what the tokenizer says it makes.
        names = [n for n in self.model.tokenizer.model_input_names if n in arrays]
        features = {name: torch.from_numpy(arrays[name]).to(self.model.device) for name in names}
        with torch.inference_mode():
            pooled = self.model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    # --- in the HTTP process ---

    def adopt(self, described: dict[str, Any]) -> None:
        super().adopt(described)
        self.dimension = described["dimension"]
        self.threads = described["threads"]

    def tokenize(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """(ids, type ids) per text, special tokens included."""
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch_fast(texts)]


# --- the app ----------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":
        # Same as OpenAI: little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector  # float32; orjson writes each value's shortest exact form


def response_body(vectors: list[np.ndarray], encoding_format: str, model_name: str, tokens: int) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def create_app(settings: Settings) -> FastAPI:
    embedder = Embedder(settings)

    def health_extra() -> dict[str, int]:
        return {"dimension": embedder.dimension, "threads": embedder.threads}

    app = kca_service_common.create_base_app("bge-embedding-server", settings, embedder, log, health_extra)
    app.state.embedder = embedder

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        with kca_service_common.admit(embedder):
            body = await kca_service_common.read_json_body(request, settings.max_body_bytes, settings.body_timeout_s)
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

            vectors, tokens = await kca_service_common.run_tokenized(
                embedder, lambda: embedder.tokenize(texts), sum(len(t) for t in texts)
            )
            body = response_body(vectors, encoding_format, settings.model_name, tokens)
        # orjson encodes even 256 x 1024 floats in milliseconds: no need to leave the event loop.
        return kca_service_common.FastJSONResponse(body)

    return app


def main(argv: list[str] | None = None) -> None:
    kca_service_common.main(__doc__, 8083, create_app, Embedder, argv)


if __name__ == "__main__":
    main()
