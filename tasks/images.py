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

from pyinfra.api import deploy

from kca_stack import Stack

from . import ops
from .render import render

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
    return render(DOCKERFILE_TEMPLATE, **context)


def recipe_of(dockerfile: str, build: dict) -> str:
    """What the image is made of: its Dockerfile (the base, the packages, the settings) and the files it
    copies in. The Dockerfile is taken without its final newline, as the recipes of the images already
    built and cached were (a new digest would rebuild them all)."""
    digest = hashlib.sha256(dockerfile.removesuffix("\n").encode())
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
    dockerfile = render_dockerfile(context)
    recipe = recipe_of(dockerfile, build)

    ops.install_files(
        name="Install kca-build-image (builds an image from registry packages)",
        files=[ops.HostFile(BUILD_IMAGE, src=f"files{BUILD_IMAGE}", mode="0755")],
    )
    base = shlex.quote(local["base_image"])
    ops.shell_unless(
        name=f"Import the base image {local['base_image']} from {local['base_rootfs']}",
        done=f"docker image inspect {base}",
        commands=[f"zstd -dc {shlex.quote(local['base_rootfs'])} | docker import - {base}"],
    )
    ops.install_files(
        name=f"Install the Dockerfile of {ref}",
        files=[ops.HostFile(f"{context_dir}/Dockerfile", text=dockerfile)],
    )
    if build.get("files"):
        ops.install_files(
            name=f"Install the files the build of {ref} copies in",
            files=[
                ops.HostFile(f"{context_dir}/{posixpath.basename(src)}", src=src, mode="0755")
                for _dest, src in sorted(build["files"].items())
            ],
        )
    label = '{{ index .Config.Labels "kca.recipe" }}'
    cache = f"{local['cache_dir']}/{image}-{recipe}.tar.zst" if local.get("cache_dir") else ""
    argv = build_args(ref, recipe, context_dir, cache, build)
    return ops.shell_unless(
        name=f"Build or load {ref} (recipe {recipe})",
        done=f'[ "$(docker image inspect --format {shlex.quote(label)} {shlex.quote(ref)})" = {recipe} ]',
        commands=[" ".join(shlex.quote(a) for a in argv)],
        stream=True,
    )
