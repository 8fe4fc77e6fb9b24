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

from kca_stack import Stack
from kca_stack.model import Model

from . import ops
from .util import local_artifact, owned_by_test

FETCHER = "/usr/local/sbin/kca-fetch-model"
STANDIN_BUILDER_DIR = "/usr/local/lib/kca"
# Read by every service user, written by kca alone.
READABLE = "u+rwX,go+rX"


def models_of_kind(stack: Stack, kinds: tuple[str, ...]) -> list[Model]:
    names = {m for s in stack.services.values() if s.kind in kinds for m in s.models}
    return [stack.models[n] for n in sorted(names)]


def settle_folder(stack: Stack, model: Model, triggers=()):
    """The model's folder is its owner's (files an older, root-run fetch or build left go to kca; chown
    -h: links themselves, never what they point at) and readable by every service user: each service
    runs as its own user (service_users), not as the owner of /models, and models hold no secret. A
    converged folder costs one find."""
    owner = stack.user.name
    folder = shlex.quote(model.dir)
    private = f"{folder} \\( -type f ! -perm -o=r \\) -o \\( -type d ! -perm -o=rx \\)"
    return ops.shell_unless(
        name=f"Give {model.dir} to {owner}, readable by the services",
        done=f"[ ! -e {folder} ] || {{ {owned_by_test(model.dir, owner, stack.user.uid)} && "
        f'[ -z "$(find {private} -print -quit)" ]; }}',
        commands=[f"chown -hR {owner}:{owner} {folder}", f"chmod -R {READABLE} {folder}"],
        triggers=triggers,
    )


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
            placed = [
                ops.HostFile(f"{model.dir}/{path.relative_to(local)}", src=path, mode="0644", **owner)
                for path in sorted(local.rglob("*"))
                if path.is_file() and path.name != ".extracted"
            ]
            return [ops.install_files(name=f"Place the stand-in model folder at {model.dir}", files=placed)]
        path = model.path_of("model")
        return [
            ops.install_files(
                name=f"Place the stand-in GGUF at {path}", files=[ops.HostFile(path, src=local, mode="0644", **owner)]
            )
        ]
    # A stand-in the host builds itself (deterministically) from another model's files.
    script = Path(standin.build)
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    remote = f"{STANDIN_BUILDER_DIR}/{script.name}"
    base = stack.models[standin.base].dir
    python = f"{stack.venvs['main'].path}/bin/python"
    marker = f"{model.dir}/.standin-{digest}"
    # As the folder's owner, like the fetcher: its files are kca's from the start.
    return [
        ops.shell_unless(
            name=f"Build the stand-in {model.name} from {standin.base} (deterministic)",
            done=f"[ -e {marker} ]",
            commands=[
                f"mkdir -p {model.dir}",
                f"cd {stack.user.home} && HF_HUB_OFFLINE=1 {python} {remote} --base {base} --out {model.dir}",
                f"chmod -R {READABLE} {model.dir} && touch {marker}",
            ],
            stream=True,
            _sudo=True,
            _sudo_user=stack.user.name,
        )
    ]


def standin_builders(stack: Stack, models: list[Model]) -> list[ops.HostFile]:
    """The scripts that build a stand-in on the host (tools/), uploaded before any build."""
    standins = [stack.model_standins.get(m.name) for m in models]
    scripts = {standin.build for standin in standins if standin is not None and standin.build}
    return [ops.HostFile(f"{STANDIN_BUILDER_DIR}/{Path(s).name}", src=s, mode="0644") for s in sorted(scripts)]


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
        builders = standin_builders(stack, wanted)
        if builders:
            ops.install_files(name="Upload the scripts that build stand-in models", files=builders)
        for model in wanted:
            placed = place_standin(stack, model)
            changes[model.name] = [*placed, settle_folder(stack, model, triggers=placed)]
        return changes

    ops.install_files(name=f"Install {FETCHER}", files=[ops.HostFile(FETCHER, src=f"files{FETCHER}", mode="0755")])
    owner = stack.user.name
    for model in wanted:
        ops.directories(name=f"Create {model.dir}", dirs=[ops.HostDirectory(model.dir, owner, owner)])
        settle_folder(stack, model)
        # The fetcher runs as the folder's owner, not root: root never writes through a path another
        # user could have laid (a .part that is a symlink).
        for role_file in model.files:
            command, marker = fetch_command(model, role_file)
            # Checked when the fetch runs (the models disk may be mounted by this very deploy).
            space = [free_space_check(model)] if model.disk_gb else []
            changes[model.name].append(
                ops.shell_unless(
                    name=f"Fetch {model.name} ({role_file.role}: {role_file.file or 'snapshot'})",
                    done=f"[ -e {shlex.quote(marker)} ]",
                    commands=[*space, command, f"chmod -R {READABLE} {shlex.quote(model.dir)}"],
                    stream=True,
                    _sudo=True,
                    _sudo_user=owner,
                )
            )
    return changes
