"""Secrets: generated on the host once (never on the control machine, never printed), kept in
paths.secrets as root-only files; a service gets its secret through systemd's LoadCredential."""

from __future__ import annotations

import shlex

from pyinfra.api import deploy

from kca_stack import Stack

from . import ops


def secret_path(stack: Stack, name: str) -> str:
    return f"{stack.paths['secrets']}/{name}"


def generate_command(path: str, size: int) -> str:
    """Create the secret file at `path` (root-only from the start) unless it exists: the test is on the
    host, in the same command, so that no run ever replaces a secret (an empty file is no secret).

    A secret that exists is never generated again, so a partial one would stay partial for good: it is
    written beside its place and renamed, the bytes and the rename each forced to disk (`sync FILE` is
    fsync), so that even a power cut leaves it absent or whole. A .tmp a cut run left behind is simply
    overwritten, and an empty one is never renamed into place."""
    tmp, final, folder = (shlex.quote(p) for p in (f"{path}.tmp", path, path.rsplit("/", 1)[0] or "/"))
    return (
        f"[ -s {final} ] || {{ umask 077; head -c {size} /dev/urandom | base64 | tr -d '\\n/+=' > {tmp}"
        f" && [ -s {tmp} ] && sync {tmp} && mv -T {tmp} {final} && sync {folder}; }}"
    )


@deploy("Secrets")
def deploy_secrets(stack: Stack) -> None:
    files = [secret_path(stack, name) for name in stack.secrets]
    if not files:
        return
    paths = " ".join(shlex.quote(f) for f in files)
    generate = [generate_command(path, spec.bytes) for path, spec in zip(files, stack.secrets.values(), strict=True)]
    ops.shell_unless(
        name="Generate the missing secrets (never one that exists), readable by root only",
        done=ops.stat_test(files, "600 root root"),
        commands=[*generate, f"chown root:root {paths}", f"chmod 0600 {paths}"],
    )
