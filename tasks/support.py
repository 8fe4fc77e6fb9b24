"""The three support services: BGE-M3 embeddings and the BGE reranker (FastAPI apps of this
repository, apps/) and Docling (docling-serve, pinned). Each from a venv described in data, each
restarted when its code, venv or model changed."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger

from kca_stack import Service, Stack

from . import ops
from .python_envs import ensure_requirements
from .units import UnitSpec
from .util import systemd_command_line

SOURCE = "tasks/support.py"
SHARED_MODULES = (Path("apps/kca_service_common.py"), Path("apps/kca_batching.py"))


def venv_python(stack: Stack, service: Service) -> str:
    return f"{stack.venvs[service.settings.venv].path}/bin/python"


def cache_directory(service: Service) -> str:
    """Each service's own cache folder: systemd gives it to the unit's user, so two services that run
    as different users cannot share one."""
    return f"kca-{service.name}"


def fastapi_spec(stack: Stack, service: Service) -> UnitSpec:
    s = service.settings
    model = stack.models[service.models[0]]
    batching, limits, server = s.batching, s.limits, s.uvicorn
    environment = [
        ("KCA_MODEL_PATH", model.dir),
        ("KCA_MODEL_NAME", model.name),
        ("KCA_DEVICE", s.device),
        ("KCA_PRECISION", s.precision),
        ("KCA_BATCH_TOKENS", str(batching.batch_tokens)),
        ("KCA_BATCH_WAIT_MS", str(batching.wait_ms)),
        ("KCA_MAX_QUEUED_REQUESTS", str(batching.max_queued_requests)),
        ("KCA_MAX_ITEMS", str(limits.max_items)),
        ("KCA_MAX_TEXT_CHARS", str(limits.max_text_chars)),
        ("KCA_MAX_TEXT_TOKENS", str(limits.max_text_tokens)),
        ("KCA_MAX_REQUEST_TOKENS", str(limits.max_request_tokens)),
        ("KCA_MAX_BODY_BYTES", str(limits.max_body_bytes)),
        ("KCA_BODY_TIMEOUT_S", str(limits.body_timeout_s)),
        ("KCA_LIMIT_CONCURRENCY", str(server.limit_concurrency)),
        ("KCA_TIMEOUT_KEEP_ALIVE_S", str(server.timeout_keep_alive_s)),
        ("OMP_NUM_THREADS", str(s.threads)),
        # The model is on disk already: a hub lookup could only slow the start down or fail.
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HOME", f"%C/{cache_directory(service)}/huggingface"),
    ]
    argv = [venv_python(stack, service), s.app.dest, "--host", service.bind, "--port", str(service.port)]
    return UnitSpec(
        exec_start=systemd_command_line(argv),
        environment=environment,
        extra_directives=[f"CacheDirectory={cache_directory(service)}"],
    )


def docling_spec(stack: Stack, service: Service) -> UnitSpec:
    s = service.settings
    venv = stack.venvs[s.venv].path
    environment = [
        ("DOCLING_DEVICE", s.device),
        ("DOCLING_SERVE_ARTIFACTS_PATH", s.artifacts_dir),
        ("DOCLING_SERVE_SCRATCH_PATH", s.scratch_dir),
        # Models are placed ahead of time; the service never downloads at boot.
        ("DOCLING_SERVE_LOAD_MODELS_AT_BOOT", "false"),
        ("DOCLING_SERVE_ENABLE_UI", "false"),
        ("DOCLING_SERVE_MAX_FILE_SIZE", str(s.max_file_size)),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HOME", "%C/kca-docling/huggingface"),
        ("OMP_NUM_THREADS", str(s.threads)),
    ]
    secret = s.api_key_secret
    serve = f"{venv}/bin/docling-serve run --host {service.bind} --port {service.port}"
    # docling-serve takes its key from the environment only: read the credential at start.
    command = f'DOCLING_SERVE_API_KEY="$(cat "$CREDENTIALS_DIRECTORY/{secret}")" exec {serve}'
    return UnitSpec(
        exec_start=systemd_command_line(["/bin/sh", "-c", command]),
        environment=environment,
        extra_directives=["CacheDirectory=kca-docling", f"ReadWritePaths={s.scratch_dir}"],
    )


def fetch_docling_models(stack: Stack, service: Service):
    """Docling's layout, table and OCR models into artifacts_dir, once (a marker says complete)."""
    s = service.settings
    if s.layout_models == "unavailable":
        logger.warning(
            f"{host.name}: Docling's models cannot be fetched here (layout_models = unavailable): "
            "docling-serve runs and answers /health, conversions need the models."
        )
        return None
    marker = f"{s.artifacts_dir}/.kca-models-complete"
    venv = stack.venvs[s.venv].path
    names = " ".join(s.layout_model_names)
    return ops.shell_unless(
        name=f"Fetch Docling's models ({names}) into {s.artifacts_dir}",
        done=f"[ -e {marker} ]",
        stream=True,
        commands=[
            f"{venv}/bin/docling-tools models download {names} -o {s.artifacts_dir}",
            f"chown -R {stack.user.name}: {s.artifacts_dir} && touch {marker}",
        ],
    )


# (host, venv, requirements) -> the operation that installs them: one per host, however many services
# share the venv (the embedding server and the reranker share main).
_VENV_OPS: dict[tuple[str, str, str], object] = {}


def service_venv(stack: Stack, service: Service):
    """The service's venv from its requirements, installed once for all the services that share it."""
    s = service.settings
    key = (host.name, s.venv, s.requirements)
    if key not in _VENV_OPS:
        _VENV_OPS[key] = ensure_requirements(stack, s.venv, s.requirements, service.kind)
    return _VENV_OPS[key]


# (host, folder) -> the operation that installs the modules the FastAPI apps share there.
_SHARED_OPS: dict[tuple[str, str], object] = {}


def install_fastapi(stack: Stack, service: Service) -> list:
    """A FastAPI model server: its venv, the app and the modules it shares; returns the operations
    whose change restarts it."""
    s = service.settings
    folder = str(Path(s.app.dest).parent)
    # The modules the apps share, beside them (a script's own folder is first on sys.path): installed
    # once, and their change restarts every app that reads them.
    if (host.name, folder) not in _SHARED_OPS:
        _SHARED_OPS[(host.name, folder)] = ops.install_files(
            name=f"Install the modules the FastAPI apps share into {folder}",
            files=[
                ops.HostFile(f"{folder}/{shared.name}", src=shared, group=stack.user.name) for shared in SHARED_MODULES
            ],
        )
    app = ops.install_files(
        name=f"Install {s.app.dest}", files=[ops.HostFile(s.app.dest, src=s.app.src, group=stack.user.name)]
    )
    return [service_venv(stack, service), _SHARED_OPS[(host.name, folder)], app]


def install_docling(stack: Stack, service: Service) -> list:
    """docling-serve: its venv and its layout models; returns the operations whose change restarts it."""
    return [service_venv(stack, service), fetch_docling_models(stack, service)]
