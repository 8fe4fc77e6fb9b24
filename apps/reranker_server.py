"""Rerank server (BGE reranker v2-m3 in production), in the shape Dify and Open WebUI call.

Deployed to the host next to kca_service_common.py (settings, errors, body limit, /health,
/v1/models and the command line shared with bge_embedding_server.py) and run by systemd:

    VENV/bin/python reranker_server.py --host HOST --port PORT

Every setting comes from the environment (the unit renders it from the stack data):

    KCA_MODEL_PATH      local cross-encoder folder (required; nothing is downloaded)
    KCA_MODEL_NAME      id shown in /v1/models and echoed as "model" (default: folder name)
    KCA_DEVICE          cuda | cpu (default cpu)
    KCA_PRECISION       fp16 | fp32 (default fp32; fp16 only on cuda)
    KCA_BATCH_TOKENS         padded tokens per forward pass (default 8192)
    KCA_BATCH_WAIT_MS        how long a pass waits for clients coming back (default 2)
    KCA_MAX_QUEUED_REQUESTS  requests admitted at once; more get 503 + Retry-After (default 64)
    KCA_MAX_ITEMS            most documents in one request (default 256)
    KCA_MAX_TEXT_CHARS       longest query or document in characters (default 32768)
    KCA_MAX_TEXT_TOKENS      tokens per query-document pair; longer pairs are cut (default 8192)
    KCA_MAX_REQUEST_TOKENS   tokens in one request, all pairs together (default 65536)
    KCA_MAX_BODY_BYTES       largest request body in bytes (default 8388608)
    KCA_LIMIT_CONCURRENCY    uvicorn's bound on connections and tasks (default 96)
    KCA_TIMEOUT_KEEP_ALIVE_S idle keep-alive connections close after this (default 5)

Pairs from all clients are batched together (kca_batching.py), as in bge_embedding_server.py.

Endpoints: GET /health (503 while the model loads), GET /v1/models, POST /v1/rerank and
POST /rerank taking {"model", "query", "documents", "top_n"}. Scores are sigmoid(logit), 0..1.
Every error is a JSON body {"error": {"message", "type"}} with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kca_service_common
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kca_service_common import ApiError, Settings

log = logging.getLogger("reranker_server")


# --- request bodies (errors and the body limit: kca_service_common.py) ------------------------


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


class Reranker(kca_service_common.ModelHolder):
    """The cross-encoder (in its own process), its tokenizer (here) and the forward pass the batcher runs."""

    def __init__(self, settings: Settings):
        super().__init__(settings, "reranker", __file__)
        self.model: Any = None
        self._torch: Any = None

    # --- in the model's process ---

    def load(self) -> dict[str, Any]:
        import torch
        from sentence_transformers import CrossEncoder

        started = time.monotonic()
        model = CrossEncoder(self.settings.model_path, device=self.settings.device, local_files_only=True)
        if self.settings.precision == "fp16":
            model.model.half()
        model.model.eval()
        # sentence-transformers 6 renamed CrossEncoder.max_length to max_seq_length.
        model_limit = getattr(model, "max_seq_length", None) or model.max_length or model.tokenizer.model_max_length
        self._torch = torch
        self.model = model
        log.info(
            "loaded %s on %s/%s in %.1fs",
            self.settings.model_path,
            self.settings.device,
            self.settings.precision,
            time.monotonic() - started,
        )
        # The model's fast tokenizer, cutting pairs longest-first as CrossEncoder.predict does.
        return {
            "tokenizer": model.tokenizer.backend_tokenizer.to_str(),
            "max_tokens": min(self.settings.max_text_tokens, model_limit),
            "truncation": "longest_first",
            "pad_id": model.tokenizer.pad_token_id or 0,
        }

    def run_pass(self, arrays: dict[str, np.ndarray]) -> list[float]:
        """sigmoid(logit) per pair, 0..1.

        The sigmoid is applied here, on the raw first logit, so the scale does not depend on
        whatever activation the model folder's config names."""
        torch = self._torch
        names = [n for n in self.model.tokenizer.model_input_names if n in arrays]
        features = {name: torch.from_numpy(arrays[name]).to(self.model.device) for name in names}
        with torch.inference_mode():
            logits = self.model.model(**features).logits[:, 0]
            return torch.sigmoid(logits.double()).cpu().tolist()

    # --- in the HTTP process ---

    def tokenize(self, query: str, documents: list[str]) -> list[tuple[list[int], list[int]]]:
        """(ids, type ids) per query-document pair."""
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch_fast([(query, d) for d in documents])]


# --- the app ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    reranker = Reranker(settings)
    app = kca_service_common.create_base_app("reranker-server", settings, reranker, log)
    app.state.reranker = reranker

    async def rerank(request: Request) -> JSONResponse:
        with kca_service_common.admit(reranker):
            body = await kca_service_common.read_json_body(request, settings.max_body_bytes, settings.body_timeout_s)
            query = check_text("query", body.get("query"), settings)
            documents = parse_documents(body.get("documents"), settings)
            top_n = parse_top_n(body.get("top_n"), len(documents))
            return_documents = body.get("return_documents", True)
            if not isinstance(return_documents, bool):
                raise ApiError(400, "'return_documents' must be true or false")
            kca_service_common.check_model_and_ready(body, reranker)

            scores, tokens = await kca_service_common.run_tokenized(
                reranker,
                lambda: reranker.tokenize(query, documents),
                len(query) * len(documents) + sum(len(d) for d in documents),
            )
        # Stable sort: equal scores keep the order the caller sent.
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        return kca_service_common.FastJSONResponse(
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
    kca_service_common.main(__doc__, 8006, create_app, Reranker, argv)


if __name__ == "__main__":
    main()
