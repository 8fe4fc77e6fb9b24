"""llama.cpp from source, pinned: fetch (git or uploaded archive), build llama-server, install it
under /home/kca/llama.cpp/bin. The build is identified by a hash of its source and flags: a re-run with
the same identity compiles nothing; a change rebuilds, and the caller restarts what uses it.

The tree lives in kca's home, which kca can always rearrange (rename a folder, plant a link): so the
fetch and the build run as kca, never as root, and root never runs a compiler, a CMake script or a
binary from it. (Making the tree root's would not help while its parent is kca's home.)"""

from __future__ import annotations

import hashlib
import json
import shlex

from pyinfra.api import deploy

from kca_stack import Stack

from . import ops
from .util import local_artifact, owned_by_test


def layout(stack: Stack) -> dict[str, str]:
    root = stack.paths["llama_cpp"]
    return {
        "root": root,
        "src": f"{root}/src",
        "build": f"{root}/build",
        "bin": f"{root}/bin",
        "archives": f"{root}/archives",
        "build_id": f"{root}/bin/.build-id",
        "log": f"{root}/build.log",
    }


def binary(stack: Stack, name: str = "llama-server") -> str:
    return f"{layout(stack)['bin']}/{name}"


def build_id(stack: Stack) -> str:
    """What makes one build differ from another: the source, the flags, the targets."""
    cpp = stack.llama_cpp
    source = f"git:{cpp.git_ref}" if cpp.source == "git" else f"archive:{stack.artifacts[cpp.archive].sha256}"
    identity = {"source": source, "flags": stack.llama_cmake_flags(), "targets": list(cpp.targets)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@deploy("llama.cpp")
def deploy_llama_cpp(stack: Stack):
    """Returns the build operation, so that the services can restart on `_if=build.did_change`."""
    where = layout(stack)
    cpp = stack.llama_cpp
    wanted = build_id(stack)
    user = stack.user.name
    ccache_dir = "/var/cache/ccache"
    trees = [where["root"], *([ccache_dir] if cpp.ccache else [])]

    ops.directories(
        name="Create the llama.cpp folders",
        dirs=[
            *(ops.HostDirectory(tree, user, user) for tree in trees),
            ops.HostDirectory(where["bin"], user, user, "0755"),
            *([ops.HostDirectory(where["archives"], user, user)] if cpp.source == "archive" else []),
        ],
    )
    # Trees an older, root-run build left behind go to kca first (chown -h: links themselves, never what
    # they point at); then nothing in them is root's.
    ops.shell_unless(
        name=f"Give the llama.cpp trees to {user} (the build runs as {user})",
        done=" && ".join(owned_by_test(tree, user, stack.user.uid) for tree in trees),
        commands=[f"chown -hR {user}:{user} {' '.join(trees)}"],
    )

    fetch: list[str]
    if cpp.source == "archive":
        artifact = stack.artifacts[cpp.archive]
        archive = f"{where['archives']}/{artifact.file}"
        ops.install_files(
            name=f"Upload the pinned llama.cpp source archive ({artifact.file})",
            files=[ops.HostFile(archive, src=local_artifact(artifact), mode="0644", user=user, group=user)],
        )
        depth = len(artifact.subdir.strip("/").split("/")) if artifact.subdir else 0
        fetch = [
            f"echo {artifact.sha256}  {shlex.quote(archive)} | sha256sum -c --quiet",
            f"rm -rf {where['src']} && mkdir -p {where['src']}",
            # The sdist's tree carries a .git file that points outside it: left out.
            f"tar -xzf {shlex.quote(archive)} -C {where['src']} --strip-components={depth} --exclude=.git "
            f"{artifact.subdir}",
        ]
    else:
        fetch = [
            f"[ -d {where['src']}/.git ] || git clone --no-checkout {shlex.quote(cpp.git_url)} {where['src']}",
            f"git -C {where['src']} fetch --depth 1 origin {cpp.git_ref}",
            f"git -C {where['src']} checkout --force --detach {cpp.git_ref}",
        ]

    flags = " ".join(shlex.quote(f) for f in stack.llama_cmake_flags())
    targets = " ".join(f"-t {t}" for t in cpp.targets)
    env = f"export CCACHE_DIR={ccache_dir}; " if cpp.ccache else ""
    # Beside its place, then renamed: a cut mid-copy never leaves a partial binary where the services
    # (and a reboot) would run it.
    install = " && ".join(
        f"install -m 0755 {where['build']}/bin/{t} {where['bin']}/.{t}.new && "
        f"mv -f {where['bin']}/.{t}.new {where['bin']}/{t}"
        for t in cpp.targets
    )
    # The build's identity in the stamp, not the commit: a changed flag rebuilds too.
    return ops.stamped(
        name=f"Build llama.cpp {cpp.git_ref[:10]} ({'CUDA' if stack.gpu.present else 'CPU'})",
        stamp=where["build_id"],
        wanted=wanted,
        # Each command runs in kca's own folder (sudo keeps root's working directory, which kca cannot read).
        commands=[
            f"cd {where['root']} && {command}"
            for command in [
                *fetch,
                # A fresh build folder: a changed flag must not meet a stale CMake cache.
                f"rm -rf {where['build']}",
                f"{env}cmake -S {where['src']} -B {where['build']} {flags} 2>&1 | tail -n 5",
                # Progress: cmake prints [ N%] lines as it goes; the full log stays on the host.
                "bash -o pipefail -c "
                + shlex.quote(
                    f"{env}cmake --build {where['build']} -j $(nproc) {targets} 2>&1 | tee {where['log']} "
                    "| grep --line-buffered -E '^\\[ *[0-9]+%\\]' | awk 'NR % 10 == 1 { print; fflush() }'"
                ),
                install,
            ]
        ],
        stream=True,
        _sudo=True,
        _sudo_user=user,
    )
