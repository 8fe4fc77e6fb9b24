"""The service kinds: one entry each says everything a kind needs.

A service's `kind` selects its settings type (the keys of the service beyond the common ones in
`model.Service`); whether it runs as a systemd unit of this repository's template; whether Open WebUI
lists it as an LLM back end; the deploy layer it belongs to; and, by name so that this package stays
free of pyinfra, the task functions that install it:

- `prepare(stack)`: once for the kind, before its services (a build, a venv); the operations it returns
  restart every service of the kind when they change;
- `install(stack, service)`: what one service needs beside its unit (its code, its venv); the
  operations it returns restart that service;
- `unit_spec(stack, service)`: the `tasks.units.UnitSpec` its unit is rendered from (also what the unit
  tests render).

Adding a kind: its settings type and one `Kind` entry here, the functions it names, and its services in
group_data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .schema import setting

PORT = {"ge": 1, "le": 65535}
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def _load(doc: str, ge: int, le: int):
    """A required whole-number load setting of a FastAPI model server (apps/kca_batching.py)."""
    return setting(doc=doc, ge=ge, le=le)


# --- settings shared by kinds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where the service's own process listens when the authenticating proxy holds its port."""

    bind: str = setting(doc="the backend's address (loopback)")
    port: int = setting(doc="the backend's port", **PORT)


# --- llama.cpp ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaServer:
    """llama-server's flags (tasks/llm.py builds the argument list)."""

    # None: the service's name.
    alias: str | None = setting(None, doc="the model name the API answers to")
    ctx_size: int = setting(0, doc="the context in tokens (0: the model's own)", ge=0, le=1 << 22)
    n_gpu_layers: str = setting("99", doc="the layers on the GPU, a number", pattern=r"\d+")
    flash_attn: Literal["on", "off", "auto"] = setting("auto", doc="flash attention")
    batch_size: int | None = setting(None, doc="the logical batch in tokens", ge=1, le=1 << 16)
    ubatch_size: int | None = setting(None, doc="the physical batch in tokens", ge=1, le=1 << 16)
    chat_template_kwargs: Mapping[str, str | int | float | bool] = setting({}, doc="the chat template's arguments")
    reasoning_format: str | None = setting(None, doc="llama-server's --reasoning-format")
    chat_template_file: str | None = setting(None, doc="a chat template file on the host")
    extra_args: tuple[str, ...] = setting((), doc="further llama-server arguments")


@dataclass(frozen=True)
class LlamaCppSettings:
    llama_server: LlamaServer = setting(LlamaServer(), doc="llama-server's flags")
    api_key_secret: str | None = setting(None, doc="the secret the API key is read from")


# --- vLLM ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmOptions:
    # None: the service's name.
    served_model_name: str | None = setting(None, doc="the model name the API answers to")
    max_model_len: int = setting(32768, doc="the context in tokens", ge=1, le=1 << 22)
    reasoning_parser: str = setting("hcx", doc="vLLM's reasoning parser")
    tool_call_parser: str = setting("hcx", doc="vLLM's tool call parser")


@dataclass(frozen=True)
class VllmSettings:
    vllm: VllmOptions = setting(VllmOptions(), doc="vllm serve's options")
    # vLLM reserves this fraction of the whole card up front, whatever the weights need.
    gpu_memory_utilization: float = setting(0.9, doc="the fraction of the card vLLM reserves", gt=0, le=1)
    backend: Backend | None = setting(None, doc="where vLLM listens behind the authenticating proxy")
    api_key_secret: str | None = setting(None, doc="the secret the API key is read from")


# --- FastAPI model servers (apps/) ------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    src: str = setting(doc="the app's file in this repository")
    dest: str = setting(doc="where the app is installed on the host", pattern=r"/\S+")


@dataclass(frozen=True)
class Batching:
    batch_tokens: int = _load("tokens in one forward pass", 1, 1 << 20)
    wait_ms: int = _load("a short wait in ms: single requests must not pay for batching", 0, 100)
    max_queued_requests: int = _load("requests admitted at once", 1, 4096)


@dataclass(frozen=True)
class Limits:
    max_items: int = _load("texts in one request", 1, 1 << 16)
    max_text_chars: int = _load("characters in one text", 1, 1 << 24)
    max_text_tokens: int = _load("tokens in one text", 1, 1 << 20)
    max_request_tokens: int = _load("tokens in one request", 1, 1 << 24)
    max_body_bytes: int = _load("bytes in one request body", 1, 1 << 30)
    body_timeout_s: int = _load("seconds to receive a body", 1, 600)


@dataclass(frozen=True)
class Uvicorn:
    limit_concurrency: int = _load("open connections and tasks", 1, 65536)
    timeout_keep_alive_s: int = _load("seconds an idle connection stays open", 1, 600)


@dataclass(frozen=True)
class FastApiSettings:
    app: App = setting(doc="the app's source and destination")
    venv: str = setting(doc="a key of venvs")
    requirements: str = setting(doc="the requirements file its venv is built from")
    device: Literal["cuda", "cpu"] = setting(doc="where the model runs")
    precision: Literal["fp16", "bf16", "fp32"] = setting(doc="the weights' precision")
    threads: int = _load("CPU threads of the forward pass", 1, 256)
    batching: Batching = setting(doc="the cross-request batching")
    limits: Limits = setting(doc="the per-request caps")
    uvicorn: Uvicorn = setting(doc="uvicorn's own bounds")
    embedding_dim: int | None = setting(None, doc="the embedding's dimension", ge=1, le=65536)
    api_key_secret: str | None = setting(None, doc="the secret the API key is read from")


# --- Docling -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoclingSettings:
    venv: str = setting(doc="a key of venvs")
    requirements: str = setting(doc="the requirements file its venv is built from")
    device: Literal["cuda", "cpu"] = setting(doc="where the models run")
    artifacts_dir: str = setting(doc="where the layout, table and OCR models live", pattern=r"/\S+")
    scratch_dir: str = setting(doc="the folder docling-serve writes to", pattern=r"/\S+")
    api_key_secret: str = setting(doc="the secret the API key is read from")
    # docling-tools: fetched from the hub once; unavailable: no hub (conversions need the models).
    layout_models: Literal["docling-tools", "unavailable"] = setting("docling-tools", doc="how the models get there")
    layout_model_names: tuple[str, ...] = setting((), doc="the models docling-tools fetches", pattern=NAME)
    max_file_size: int = setting(104857600, doc="the largest upload in bytes", ge=1, le=1 << 34)
    # docling-serve's own default is every core.
    threads: int = setting(4, doc="CPU threads", ge=1, le=256)


# --- Docker compose --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeSettings:
    compose_service: str = setting(doc="its service in the compose file", pattern=NAME)
    health_path: str | None = setting(None, doc="the path the health check asks", pattern=r"/\S*")


KindSettings = LlamaCppSettings | VllmSettings | FastApiSettings | DoclingSettings | ComposeSettings


@dataclass(frozen=True)
class Kind:
    name: str
    settings: type
    # A unit of this repository's template (tasks/units.py); otherwise a compose service.
    systemd: bool
    # The deploy layer that installs it (deploy.LAYERS).
    layer: str
    # Listed by Open WebUI as an OpenAI-compatible back end (OPENAI_API_BASE_URLS).
    llm_backend: bool = False
    # Its unit needs the GPU even where the host has none (it cannot run on the CPU).
    gpu_only: bool = False
    # It serves the first model of its service's `models` (the unit's command names it).
    serves_model: bool = False
    # Task functions, as "module:function" (see the module's docstring).
    prepare: str | None = None
    install: str | None = None
    unit_spec: str | None = None


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "llama.cpp",
            LlamaCppSettings,
            serves_model=True,
            systemd=True,
            layer="llm",
            llm_backend=True,
            prepare="tasks.llama_cpp:deploy_llama_cpp",
            unit_spec="tasks.llm:llama_server_spec",
        ),
        Kind(
            "vllm",
            VllmSettings,
            serves_model=True,
            systemd=True,
            layer="llm",
            llm_backend=True,
            gpu_only=True,
            prepare="tasks.llm:deploy_vllm",
            unit_spec="tasks.llm:vllm_spec",
        ),
        Kind(
            "fastapi",
            FastApiSettings,
            serves_model=True,
            systemd=True,
            layer="support",
            install="tasks.support:install_fastapi",
            unit_spec="tasks.support:fastapi_spec",
        ),
        Kind(
            "docling-serve",
            DoclingSettings,
            systemd=True,
            layer="support",
            install="tasks.support:install_docling",
            unit_spec="tasks.support:docling_spec",
        ),
        # Open WebUI and Dify install their compose projects themselves (tasks/openwebui.py, tasks/dify.py).
        Kind("docker", ComposeSettings, systemd=False, layer="apps"),
    )
}


def kinds_of_layer(layer: str) -> list[Kind]:
    return [kind for kind in KINDS.values() if kind.layer == layer]
