"""Images where no registry can be reached (docker.pull_images false, the test host): each compose
project's image is built on the host from registry packages (its `local_build`: Python packages from
pip, or Debian packages from the host's own apt), tagged `<prefix>/<name>:<tag>`, and started from the
same compose file, env file and network as production. Only the image reference differs, and only by
data.

The base is the host's own OS, imported once from a root filesystem tarball (no base image can be
pulled). A built image is saved to a cache folder and loaded from there on a fresh host.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex

import jinja2
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from kca_stack import Stack

from .util import remote_output, streamed_shell

SOURCE = "tasks/images.py"
DOCKERFILE_TEMPLATE = "templates/opt/ai-platform/images/Dockerfile.j2"
BUILD_IMAGE = "/usr/local/sbin/kca-build-image"


def image_ref(stack: Stack, image: str, tag: str) -> str:
    """The image a compose file runs: upstream's where images can be pulled, else the local build."""
    if stack.docker["pull_images"]:
        return f"{image}:{tag}"
    return f"{stack.docker['local_images']['prefix']}/{posixpath.basename(image)}:{tag}"


def dockerfile_context(stack: Stack, title: str, build: dict, venv: str, port: int) -> dict:
    return {
        "source": SOURCE,
        "title": title,
        "base_image": stack.docker["local_images"]["base_image"],
        "packages": list(build.get("python_packages", [])),
        "venv": venv,
        "apt_packages": list(build.get("apt_packages", [])),
        "prepare": list(build.get("prepare", [])),
        # (name in the build context, path in the image), in a fixed order.
        "files": [(posixpath.basename(src), dest) for dest, src in sorted(build.get("files", {}).items())],
        "environment": sorted(build.get("environment", {}).items()),
        "port": port,
        "stop_signal": build.get("stop_signal"),
        "entrypoint": list(build.get("entrypoint", [])),
        "command": list(build["command"]),
    }


def render_dockerfile(context: dict) -> str:
    with open(DOCKERFILE_TEMPLATE) as f:
        template = jinja2.Template(f.read(), trim_blocks=True, lstrip_blocks=True)
    return template.render(**context)


def recipe_of(context: dict, build: dict) -> str:
    """What the image is made of: the Dockerfile (the base, the packages, the settings) and the files
    it copies in."""
    digest = hashlib.sha256(render_dockerfile(context).encode())
    for _dest, src in sorted(build.get("files", {}).items()):
        with open(src, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def build_args(ref: str, recipe: str, context_dir: str, cache: str, build: dict) -> list[str]:
    """kca-build-image's command line: each Debian package after --apt, then the Python packages."""
    apt = [arg for package in build.get("apt_packages", []) for arg in ("--apt", package)]
    return [BUILD_IMAGE, ref, recipe, context_dir, cache, *apt, *build.get("python_packages", [])]


@deploy("Local images")
def build_local_image(stack: Stack, image: str, ref: str, title: str, build: dict, port: int):
    """Make `ref` present on the host (`image`: its build folder and cache name). Returns the operation
    whose change means a new image. (pyinfra's @deploy takes `name` for itself.)"""
    local = stack.docker["local_images"]
    context_dir = f"{local['build_dir']}/{image}"
    venv = f"{context_dir}/venv"
    context = dockerfile_context(stack, title, build, venv, port)
    recipe = recipe_of(context, build)

    files.put(
        name="Install kca-build-image (builds an image from registry packages)",
        src="files/usr/local/sbin/kca-build-image",
        dest=BUILD_IMAGE,
        mode="0755",
    )
    base = local["base_image"]
    if remote_output(f"docker image inspect --format ok {shlex.quote(base)} 2>/dev/null || true") != "ok":
        rootfs = shlex.quote(local["base_rootfs"])
        server.shell(
            name=f"Import the base image {base} from {local['base_rootfs']}",
            commands=[
                f"docker image inspect {shlex.quote(base)} >/dev/null 2>&1"
                f" || zstd -dc {rootfs} | docker import - {shlex.quote(base)}"
            ],
        )
    files.directory(name=f"Create {context_dir}", path=context_dir, mode="0755")
    files.template(
        name=f"Install the Dockerfile of {ref}",
        src=DOCKERFILE_TEMPLATE,
        dest=f"{context_dir}/Dockerfile",
        mode="0644",
        jinja_env_kwargs={"trim_blocks": True, "lstrip_blocks": True},
        **context,
    )
    for dest, src in sorted(build.get("files", {}).items()):
        files.put(
            name=f"Install {posixpath.basename(src)} into the build of {ref} (its {dest})",
            src=src,
            dest=f"{context_dir}/{posixpath.basename(src)}",
            mode="0755",
        )
    label = remote_output(
        f"docker image inspect --format '{{{{ index .Config.Labels \"kca.recipe\" }}}}' {shlex.quote(ref)}"
        " 2>/dev/null || true"
    )
    if label == recipe:
        host.noop(f"{ref} is present (recipe {recipe})")
        return None
    cache = f"{local['cache_dir']}/{image}-{recipe}.tar.zst" if local.get("cache_dir") else ""
    argv = build_args(ref, recipe, context_dir, cache, build)
    return streamed_shell(
        name=f"Build or load {ref} (recipe {recipe})",
        commands=[" ".join(shlex.quote(a) for a in argv)],
    )
