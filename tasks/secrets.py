"""Secrets: generated on the host once (never on the control machine, never printed), kept in
paths.secrets as root-only files; a service gets its secret through systemd's LoadCredential."""

from __future__ import annotations

import shlex

from pyinfra.api import deploy

from kca_stack import Stack

from . import ops


def secret_path(stack: Stack, name: str) -> str:
    return f"{stack.paths['secrets']}/{name}"


@deploy("Secrets")
def deploy_secrets(stack: Stack) -> None:
    files = [secret_path(stack, name) for name in stack.secrets]
    paths = [shlex.quote(f) for f in files]
    if not paths:
        return
    # Each secret is generated only where its file is missing: the test on the host, in the same
    # command, so that no run ever replaces one.
    generate = [
        f"[ -e {path} ] || {{ umask 077; head -c {int(spec.get('bytes', 32))} /dev/urandom | base64 "
        f"| tr -d '\\n/+=' > {path}.tmp && mv {path}.tmp {path}; }}"
        for path, spec in zip(paths, stack.secrets.values(), strict=True)
    ]
    ops.shell_unless(
        name="Generate the missing secrets (never one that exists), readable by root only",
        done=ops.stat_test(files, "600 root root"),
        commands=[*generate, f"chown root:root {' '.join(paths)}", f"chmod 0600 {' '.join(paths)}"],
    )
