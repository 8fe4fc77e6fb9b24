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


@deploy("Secrets")
def deploy_secrets(stack: Stack) -> None:
    for name, secret in stack.secrets.items():
        path = secret_path(stack, name)
        if not host.get_fact(File, path=path):
            # Generated where it is used; the control machine never sees the value.
            size = secret.bytes
            server.shell(
                name=f"Generate the secret {name} (once)",
                commands=[
                    f"umask 077; head -c {size} /dev/urandom | base64 | tr -d '\\n/+=' > {shlex.quote(path)}.tmp"
                    f" && mv {shlex.quote(path)}.tmp {shlex.quote(path)}"
                ],
            )
        files.file(name=f"Keep {name} readable by root only", path=path, user="root", group="root", mode="0600")
