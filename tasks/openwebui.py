"""Open WebUI in Docker: its compose file rendered from the stack (pinned image, the port map's bind
and port, the four LLM back ends, RAG wired to the embedding, reranker and Docling services), its
secrets put in on the host, its image built on the host where none can be pulled, and the project
converged with `compose up -d` whenever it is not (or something it reads changed)."""

from __future__ import annotations

from pyinfra.api import deploy

from kca_stack import Service, Stack

from . import ops
from .docker import compose_up, render_with_secrets, secret_placeholder
from .images import build_local_image, image_ref

SOURCE = "tasks/openwebui.py"
COMPOSE_TEMPLATE = "templates/home/kca/openwebui/docker-compose.yml.j2"
ENV_TEMPLATE = "templates/etc/kca/openwebui.env.j2"


def host_url(service: Service, path: str = "") -> str:
    """How a container reaches a host service: through the bridge gateway (host-gateway)."""
    return f"http://host.docker.internal:{service.port}{path}"


def llm_backends(stack: Stack) -> list[Service]:
    """Every LLM back end of the stack, in the data's order (GPT-OSS, EXAONE, HyperCLOVA X, Qwen3-VL)."""
    return stack.llm_backends()


def service(stack: Stack) -> Service:
    return stack.services[stack.openwebui["service"]]


def environment(stack: Stack) -> list[tuple[str, str]]:
    """The non-secret environment, as (key, value) in a fixed order: the same data renders the same bytes."""
    cfg = stack.openwebui
    embedding = stack.services[cfg["embedding_service"]]
    reranker = stack.services[cfg["reranker_service"]]
    docling = stack.services[cfg["docling_service"]]
    env = [
        # Without it, settings saved in the UI win over these after the first start.
        ("ENABLE_PERSISTENT_CONFIG", "False"),
        ("ENABLE_OLLAMA_API", "False"),
        ("ENABLE_OPENAI_API", "True"),
        ("OPENAI_API_BASE_URLS", ";".join(host_url(s, "/v1") for s in llm_backends(stack))),
        ("RAG_EMBEDDING_ENGINE", "openai"),
        ("RAG_OPENAI_API_BASE_URL", host_url(embedding, "/v1")),
        ("RAG_EMBEDDING_MODEL", embedding.models[0] if embedding.models else embedding.name),
        # Open WebUI 0.12 calls the external reranker only with hybrid search on: without it the
        # reranker is configured and never asked.
        ("ENABLE_RAG_HYBRID_SEARCH", "True"),
        ("RAG_RERANKING_ENGINE", "external"),
        ("RAG_EXTERNAL_RERANKER_URL", host_url(reranker, "/v1/rerank")),
        ("RAG_RERANKING_MODEL", reranker.models[0] if reranker.models else reranker.name),
        ("CONTENT_EXTRACTION_ENGINE", "docling"),
        ("DOCLING_SERVER_URL", host_url(docling)),
    ]
    env += [(str(k), str(v)) for k, v in cfg.get("environment", {}).items()]
    return env


def secret_environment(stack: Stack) -> list[tuple[str, str]]:
    """Secrets beside the API keys: each service's own key, where it declares one."""
    cfg = stack.openwebui
    pairs = [
        ("RAG_OPENAI_API_KEY", cfg["embedding_service"]),
        ("RAG_EXTERNAL_RERANKER_API_KEY", cfg["reranker_service"]),
        ("DOCLING_API_KEY", cfg["docling_service"]),
    ]
    return [
        (key, secret_placeholder(stack.services[name].api_key_secret))
        for key, name in pairs
        if stack.services[name].api_key_secret
    ]


def compose_context(stack: Stack) -> dict:
    cfg = stack.openwebui
    webui = service(stack)
    port = webui.ports[0]
    return {
        "source": SOURCE,
        "project": webui.compose_project,
        "service": webui.name,
        "image": image_ref(stack, cfg["image"], cfg["tag"]),
        "bind": webui.bind,
        "port": port.number,
        "container_port": port.target,
        "env_file": cfg["env_file"],
        "environment": environment(stack),
        "network": stack.network.docker_network,
    }


def env_context(stack: Stack) -> dict:
    cfg = stack.openwebui
    return {
        "source": SOURCE,
        "env_file": cfg["env_file"],
        # Paired by position with OPENAI_API_BASE_URLS; a back end without a key gets an empty one.
        "api_keys": [secret_placeholder(s.api_key_secret) for s in llm_backends(stack)],
        "webui_secret_key": secret_placeholder(cfg["secret_key_secret"]),
        "secret_environment": secret_environment(stack),
    }


@deploy("Open WebUI")
def deploy_openwebui(stack: Stack, docker_changes: list | None = None) -> None:
    webui = service(stack)
    folder = stack.paths["openwebui"]
    compose_file = f"{folder}/docker-compose.yml"

    env_file = stack.openwebui["env_file"]
    env_ops = render_with_secrets("Open WebUI environment", ENV_TEMPLATE, env_file, env_context(stack))
    compose = ops.install_files(
        name=f"Install {compose_file}", files=[ops.template(COMPOSE_TEMPLATE, compose_file, **compose_context(stack))]
    )

    changed = [compose, *env_ops, *(docker_changes or [])]
    if not stack.docker["pull_images"]:
        port = webui.ports[0]
        changed.append(
            build_local_image(
                stack=stack,
                image=webui.name,
                ref=image_ref(stack, stack.openwebui["image"], stack.openwebui["tag"]),
                title=webui.title,
                build=stack.openwebui["local_build"],
                port=port.target,
            )
        )
    compose_up(
        name="Converge Open WebUI (docker compose up -d)",
        project=webui.compose_project,
        folder=folder,
        compose_args=["-f", "docker-compose.yml"],
        triggers=changed,
        wait=600,
    )
