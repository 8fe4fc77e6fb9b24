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
            # Generated where it is used; the control machine never sees the value. A secret that exists
            # is never generated again, so a partial one would stay partial for good: it is written
            # beside its place and renamed, the bytes and the rename each forced to disk (`sync FILE`
            # is fsync), so that even a power cut leaves it absent or whole. A .tmp a cut run left
            # behind is simply overwritten.
            size = secret.bytes
            tmp, final, folder = shlex.quote(f"{path}.tmp"), shlex.quote(path), shlex.quote(stack.paths["secrets"])
            server.shell(
                name=f"Generate the secret {name} (once)",
                commands=[
                    f"umask 077; head -c {size} /dev/urandom | base64 | tr -d '\\n/+=' > {tmp}"
                    f" && [ -s {tmp} ] && sync {tmp} && mv -T {tmp} {final} && sync {folder}"
                ],
            )
        files.file(name=f"Keep {name} readable by root only", path=path, user="root", group="root", mode="0600")
