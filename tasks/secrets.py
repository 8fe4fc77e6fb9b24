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
    host, in the same command, so that no run ever replaces a secret."""
    path = shlex.quote(path)
    return (
        f"[ -e {path} ] || {{ umask 077; head -c {size} /dev/urandom | base64 "
        f"| tr -d '\\n/+=' > {path}.tmp && mv {path}.tmp {path}; }}"
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
