"""The four LLM services: three llama-servers from one unit template, and vLLM with the HyperCLOVA X
plugin. Per-model flags are data; argument lists are built here and escaped for systemd."""

from __future__ import annotations

import json
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import git

from kca_stack import Service, Stack

from . import llama_cpp, ops
from .python_envs import ensure_packages
from .units import UnitSpec
from .util import systemd_command_line

SOURCE = "tasks/llm.py"


def llama_server_argv(stack: Stack, service: Service) -> list[str]:
    settings = stack.llama_server_settings(service)
    model = stack.models[service.models[0]]
    argv = [
        llama_cpp.binary(stack),
        "--model",
        model.path_of("model"),
        # Always pass the port: recent llama-server builds default to 9931, not 8080.
        "--host",
        service.bind,
        "--port",
        str(service.port),
        "--alias",
        settings.alias or service.name,
        "--ctx-size",
        str(settings.ctx_size),
        "--n-gpu-layers",
        settings.n_gpu_layers,
        "--flash-attn",
        settings.flash_attn,
        "--jinja",
        "--metrics",
    ]
    if settings.batch_size is not None:
        argv += ["--batch-size", str(settings.batch_size)]
    if settings.ubatch_size is not None:
        argv += ["--ubatch-size", str(settings.ubatch_size)]
    if settings.chat_template_kwargs:
        argv += ["--chat-template-kwargs", json.dumps(settings.chat_template_kwargs, sort_keys=True)]
    if settings.reasoning_format:
        argv += ["--reasoning-format", settings.reasoning_format]
    if settings.chat_template_file:
        argv += ["--chat-template-file", settings.chat_template_file]
    mmproj = model.path_of("mmproj")
    # The stand-in GGUF has no vision projector; the production model has.
    if mmproj and not stack.use_model_standins:
        argv += ["--mmproj", mmproj]
    argv += list(settings.extra_args)
    secret = service.api_key_secret
    if secret:
        argv += ["--api-key-file", f"%d/{secret}"]
    return argv


def llama_server_spec(stack: Stack, service: Service) -> UnitSpec:
    argv = llama_server_argv(stack, service)
    keep = tuple(a for a in argv if a.startswith("%d/"))
    return UnitSpec(exec_start=systemd_command_line(argv, keep_specifiers=keep))


def vllm_spec(stack: Stack, service: Service) -> UnitSpec:
    venv = stack.venvs[stack.vllm.venv].path
    options = service.settings.vllm
    model = stack.models[service.models[0]]
    # Behind the authenticating proxy (tasks/proxy.py), which holds the service's port: vLLM itself
    # listens on loopback only.
    bind, port = stack.listen_address(service)
    argv = [
        f"{venv}/bin/vllm",
        "serve",
        model.dir,
        "--host",
        bind,
        "--port",
        str(port),
        "--served-model-name",
        options.served_model_name or service.name,
        "--trust-remote-code",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        options.tool_call_parser,
        "--reasoning-parser",
        options.reasoning_parser,
        "--gpu-memory-utilization",
        str(service.settings.gpu_memory_utilization),
        "--max-model-len",
        str(options.max_model_len),
    ]
    command = " ".join(shlex.quote(a) for a in argv)
    secret = service.api_key_secret
    if secret:
        # vLLM takes its key from the environment, not a file: read the credential at start. It checks
        # only paths under /v1; the proxy checks every path, this one stays as a second lock.
        command = f'VLLM_API_KEY="$(cat "$CREDENTIALS_DIRECTORY/{secret}")" exec {command}'
    else:
        command = f"exec {command}"
    return UnitSpec(
        exec_start=systemd_command_line(["/bin/sh", "-c", command]),
        environment=[
            ("HF_HOME", "%C/kca-vllm/huggingface"),
            ("VLLM_CACHE_ROOT", "%C/kca-vllm/vllm"),
            ("HF_HUB_OFFLINE", "1"),
        ],
        # vLLM compiles kernels on first start: give it a writable cache of its own.
        extra_directives=["CacheDirectory=kca-vllm"],
        timeout_start=1800,
    )


@deploy("vLLM")
def deploy_vllm(stack: Stack):
    """vLLM at the pinned version in its own venv, and the HyperCLOVA X plugin installed into it.
    Returns the operations whose change restarts vllm-hyperclova."""
    venv = stack.venvs[stack.vllm.venv]
    install = ensure_packages(
        stack, stack.vllm.venv, list(stack.vllm.packages), "vLLM (several GB: torch and CUDA libraries)"
    )
    changes = [install] if install else []

    plugin = stack.vllm.plugin
    if plugin.source == "unavailable":
        logger.warning(
            f"{host.name}: the HyperCLOVA X vLLM plugin has no source here (vllm.plugin.source = "
            "unavailable): vLLM is installed, the plugin is not, and vllm-hyperclova stays off."
        )
        return changes
    if plugin.source == "git":
        changes.append(
            git.repo(
                name="Clone the HyperCLOVA X vLLM plugin",
                src=plugin.git_url,
                dest=plugin.path,
                branch=plugin.git_ref,
                pull=False,
                user=stack.user.name,
                group=stack.user.name,
            )
        )
    # Again after a new vLLM or a new checkout of the plugin.
    changes.append(
        ops.shell_unless(
            name="Install the HyperCLOVA X plugin into the vLLM venv (editable)",
            done=f"{venv.path}/bin/python -m pip show hcx-vllm-plugin | grep -q Location",
            commands=[f"{venv.path}/bin/pip install --no-deps -e {plugin.path}"],
            triggers=list(changes),
        )
    )
    return changes


def install_switch(stack: Stack):
    """kca-gpu-switch and the data it reads (what shares the GPU with what)."""
    config = {
        "usable_vram_gb": stack.gpu.vram_usable_gb,
        "device_node": stack.gpu.device_node,
        "gpu_present": stack.gpu.present,
        "services": {
            s.name: {
                "unit": s.unit,
                "port": s.port,
                "gpu": s.gpu,
                "vram_gb": stack.service_vram_gb(s),
                "needs_gpu_device": stack.unit_needs_gpu(s),
            }
            for s in stack.services.values()
            if s.uses_gpu and s.is_systemd
        },
        "scenarios": {sc.name: list(sc.services) for sc in stack.scenarios.values()},
    }
    ops.install_files(
        name="Install kca-gpu-switch and the GPU scenario data it reads",
        files=[
            ops.json_file(config, "/etc/kca/gpu-scenarios.json"),
            ops.HostFile("/usr/local/bin/kca-gpu-switch", src="files/usr/local/bin/kca-gpu-switch", mode="0755"),
        ],
    )
