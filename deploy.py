"""Provision the whole kca AI server: `pyinfra inventory.py deploy.py`.

Reads like a table of contents: the stack is built from group_data/ and validated first, so that a
broken stack stops the run before any operation is queued; then each layer is one task module.
"""

import sys

from pyinfra import host

from kca_stack import StackError, load_stack
from tasks import (
    backup,
    base,
    dify,
    docker,
    firewall,
    identities,
    llm,
    nvidia,
    openwebui,
    proxy,
    secrets,
    units,
    weights,
)

try:
    stack = load_stack(host.data)
except StackError as error:
    # Nothing has been queued yet: the host is untouched.
    sys.stderr.write(f"\n{host.name}: refusing to deploy, {error}\n\nNothing on the host was changed.\n")
    sys.exit(2)

# The layers, in order. The data may name the first few (`deploy_layers`): a test host under emulation
# runs only the base layer (with secrets and the firewall).
LAYERS = ("base", "llm", "support", "apps")
layers = tuple(host.data.get("deploy_layers") or LAYERS)
if layers != LAYERS[: len(layers)]:
    sys.stderr.write(
        f"\n{host.name}: refusing to deploy, deploy_layers {list(layers)} is not a prefix of {list(LAYERS)}\n"
    )
    sys.exit(2)

# What restarts each service: every task registers its operations here (kca_stack.kinds names the
# task of each kind); activation restarts a running service when one of them changed.
restarts = units.Restarts()

# 1. The base layer: one identity per service (first: they own folders below), user, /models,
#    directory tree, packages, Python environment.
identities.deploy_identities(stack=stack)
base.deploy_base(stack=stack)
# Before the secret generator: a requested restore brings the secrets (and all state files) back first.
backup.deploy_backup(stack=stack)
secrets.deploy_secrets(stack=stack)
# Early: internal services listen on all addresses, so the firewall is in place before any starts.
firewall.deploy_firewall(stack=stack)

if "llm" in layers:
    # 2. The GPU layer, then the LLM services (llama.cpp built from the pinned source, vLLM with its
    #    plugin, their units), their models, the GPU switch.
    nvidia.deploy_nvidia(stack=stack)
    llm_services = units.deploy_services(stack, "llm", restarts)
    restarts.add_models(stack, weights.deploy_models(stack=stack, kinds=units.layer_kinds("llm")))
    llm.install_switch(stack=stack)
    # vLLM listens on loopback; its port is the authenticating proxy's.
    proxy.deploy_auth_proxy(stack=stack)
    units.activate(stack, llm_services, restarts)

if "support" in layers:
    # 3. Support services: embeddings, reranker, Docling (their venvs first: a stand-in model may be
    #    built with them), then their models.
    support_services = units.deploy_services(stack, "support", restarts)
    restarts.add_models(stack, weights.deploy_models(stack=stack, kinds=units.layer_kinds("support")))
    units.activate(stack, support_services, restarts)

if "apps" in layers:
    # 4. Docker, Open WebUI and Dify (the compose projects: pulled images, or images built on the host
    #    where none can be pulled; Dify only where its images can be pulled).
    docker_changes = docker.deploy_docker(stack=stack)
    # Where Dify's images cannot be pulled and a PostgreSQL server stands in for its database: its image,
    # which the restore below loads a dump with.
    standin_image = dify.build_database_standin(stack=stack)
    # Before the applications start: restored databases are loaded, a changed version pin is snapshotted.
    backup.before_services_start(stack=stack)
    openwebui.deploy_openwebui(stack=stack, docker_changes=docker_changes)
    dify.deploy_dify(stack=stack, standin_changes=[*docker_changes, standin_image])
