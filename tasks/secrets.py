"""Secrets: generated on the host once (never on the control machine, never printed), kept in
paths.secrets as root-only files; a service gets its secret through systemd's LoadCredential."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from kca_stack import Stack


def secret_path(stack: Stack, name: str) -> str:
    return f"{stack.paths['secrets']}/{name}"


def generate_command(path: str, size: int) -> str:
    """The host-side command that makes the secret at `path` unless it is there when the command runs.
    Checked on the host, not only by the fact read at planning: on a freshly built host a restore puts
    the secrets back after planning and before this runs, and a restored secret must never be replaced."""
    quoted = shlex.quote(path)
    return (
        f"if [ ! -s {quoted} ]; then umask 077; head -c {size} /dev/urandom | base64 | tr -d '\\n/+=' > {quoted}.tmp"
        f" && mv {quoted}.tmp {quoted}; fi"
    )


@deploy("Secrets")
def deploy_secrets(stack: Stack) -> None:
    for name, spec in stack.secrets.items():
        path = secret_path(stack, name)
        if not host.get_fact(File, path=path):
            # Generated where it is used; the control machine never sees the value.
            server.shell(
                name=f"Generate the secret {name} (once)",
                commands=[generate_command(path, int(spec.get("bytes", 32)))],
            )
        files.file(name=f"Keep {name} readable by root only", path=path, user="root", group="root", mode="0600")
