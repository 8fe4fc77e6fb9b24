"""Models under /models, from the manifest in data.

Production: `kca-fetch-model` fetches each file from the hub with resume and progress and verifies it;
a file with a verification record is never fetched again, and nothing under /models is ever deleted.
Test host (use_model_standins): each llama.cpp model file is the real SmolLM2 GGUF from PyPI,
uploaded to the production file's path.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import files, server

from kca_stack import Stack
from kca_stack.model import Model

from .util import first_not_owned, local_artifact, remote_output, streamed_shell

FETCHER = "/usr/local/sbin/kca-fetch-model"
STANDIN_BUILDER_DIR = "/usr/local/lib/kca"
# Read by every service user, written by kca alone.
READABLE = "u+rwX,go+rX"


def models_of_kind(stack: Stack, kinds: tuple[str, ...]) -> list[Model]:
    names = {m for s in stack.services.values() if s.kind in kinds for m in s.models}
    return [stack.models[n] for n in sorted(names)]


def keep_readable(model: Model) -> list:
    """Each service runs as its own user (service_users), not as the owner of /models: every model file
    must be readable by all (models hold no secret). Converges a host where a file was written private."""
    private = remote_output(
        f"find {shlex.quote(model.dir)} \\( -type f ! -perm -o=r \\) -o \\( -type d ! -perm -o=rx \\)"
        " 2>/dev/null | head -n 1"
    )
    if not private:
        return []
    return [
        server.shell(
            name=f"Make {model.dir} readable by the services",
            commands=[f"chmod -R {READABLE} {shlex.quote(model.dir)}"],
        )
    ]


def place_standin(stack: Stack, model: Model) -> list:
    """Put the model's real small stand-in where the production model lives."""
    standin = stack.model_standins.get(model.name)
    if standin is None:
        logger.info(f"{host.name}: {model.name} has no stand-in here; it is not placed")
        return []
    owner = {"user": stack.user.name, "group": stack.user.name}
    if standin.artifact is not None:
        local = local_artifact(stack.artifacts[standin.artifact])
        if local.is_dir():
            files.directory(name=f"Create {model.dir}", path=model.dir, **owner)
            return [
                files.sync(
                    name=f"Place the stand-in model folder at {model.dir}",
                    src=str(local),
                    dest=model.dir,
                    exclude=[".extracted"],
                    delete=False,  # never delete under /models
                    **owner,
                )
            ]
        path = model.path_of("model")
        files.directory(name=f"Create {model.dir}", path=model.dir, **owner)
        return [files.put(name=f"Place the stand-in GGUF at {path}", src=str(local), dest=path, mode="0644", **owner)]
    # A stand-in the host builds itself (deterministically) from another model's files.
    script = Path(standin.build)
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    remote = f"{STANDIN_BUILDER_DIR}/{script.name}"
    base = stack.models[standin.base].dir
    python = f"{stack.venvs['main'].path}/bin/python"
    files.directory(name=f"Create {STANDIN_BUILDER_DIR}", path=STANDIN_BUILDER_DIR)
    files.put(name=f"Upload {script.name}", src=str(script), dest=remote, mode="0644")
    marker = f"{model.dir}/.standin-{digest}"
    if remote_output(f"test -e {marker} && echo built || true") == "built":
        return []
    # As the folder's owner, like the fetcher: its files are kca's from the start.
    return [
        streamed_shell(
            name=f"Build the stand-in {model.name} from {standin.base} (deterministic)",
            commands=[
                f"cd {stack.user.home} && HF_HUB_OFFLINE=1 {python} {remote} --base {base} --out {model.dir}",
                f"chmod -R {READABLE} {model.dir} && touch {marker}",
            ],
            _sudo=True,
            _sudo_user=stack.user.name,
        )
    ]


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
        if role_file.size is not None:
            args += ["--size", str(role_file.size)]
    argv = [FETCHER, "--repo", role_file.repo, "--revision", role_file.revision, *args]
    return " ".join(shlex.quote(a) for a in argv), marker


def give_to_owner(stack: Stack, folder: str) -> None:
    """Files an older, root-run fetch or build left in a model's folder go to its owner (chown -h: links
    themselves, never what they point at); a converged folder costs one find."""
    owner = stack.user.name
    if first_not_owned(folder, owner, stack.user.uid):
        server.shell(
            name=f"Give {folder} to {owner}",
            commands=[f"chown -hR {owner}:{owner} {shlex.quote(folder)}"],
        )


def free_space_check(model: Model) -> str:
    """A shell check that the model's folder has room for what is still missing of it (models.*.disk_gb
    less what is already there): a full disk stops before a download, not in the middle of one."""
    folder = shlex.quote(model.dir)
    need = int(model.disk_gb * 1e9)
    return (
        f"have=$(du -sb {folder} | cut -f1); free=$(df -B1 --output=avail {folder} | tail -n 1); "
        f"if [ $(({need} - have)) -gt $free ]; then echo '{model.name}: needs about {model.disk_gb:g} GB in "
        f"{model.dir}, '$((free / 1000000000))' GB are free; nothing was fetched. Fix: free space on the models "
        "disk, or a larger one.' >&2; exit 1; fi"
    )


@deploy("Models")
def deploy_models(stack: Stack, kinds: tuple[str, ...]):
    """Place the model files of the services of `kinds`. Returns {model: [operations]}: a service
    restarts when one of its own models changed."""
    wanted = models_of_kind(stack, kinds)
    changes: dict[str, list] = {model.name: [] for model in wanted}

    if stack.use_model_standins:
        for model in wanted:
            give_to_owner(stack, model.dir)
            changes[model.name] = [*place_standin(stack, model), *keep_readable(model)]
        return changes

    files.put(
        name=f"Install {FETCHER}",
        src=f"files{FETCHER}",
        dest=FETCHER,
        mode="0755",
    )
    owner = stack.user.name
    for model in wanted:
        files.directory(name=f"Create {model.dir}", path=model.dir, user=owner, group=owner)
        pending = []
        for role_file in model.files:
            command, marker = fetch_command(model, role_file)
            present = remote_output(f"test -e {shlex.quote(marker)} && echo present || true")
            if present != "present":
                pending.append((role_file, command))
        give_to_owner(stack, model.dir)
        # The fetcher runs as the folder's owner, not root: root never writes through a path another
        # user could have laid (a .part that is a symlink).
        for index, (role_file, command) in enumerate(pending):
            logger.info(f"{host.name}: {model.name}: {role_file.file or role_file.repo} will be fetched")
            # Checked when the fetch runs (the models disk may be mounted by this very deploy).
            space = [free_space_check(model)] if index == 0 and model.disk_gb else []
            changes[model.name].append(
                streamed_shell(
                    name=f"Fetch {model.name} ({role_file.role}: {role_file.file or 'snapshot'})",
                    commands=[*space, command, f"chmod -R {READABLE} {shlex.quote(model.dir)}"],
                    _sudo=True,
                    _sudo_user=owner,
                )
            )
        changes[model.name] += keep_readable(model)
    return changes
