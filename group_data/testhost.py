"""The disposable test host: a Debian 12 container booted with systemd-nspawn (testhost/testhost).

Only what differs from the real server is here, laid over all.py table by table (a key set here
replaces that one value; the rest of the table stays as all.py says). It has no NVIDIA GPU, so the GPU
layer is skipped and GPU-only units are installed but skipped by systemd; /models is a plain directory.
"""

gpu = {"present": False}

# No models partition here: /models is a directory on the test host's root disk, on purpose.
models_filesystem = {"plain_directory": True}

# No model hub here: each model is a real small stand-in placed at the production path, through the
# same code path. HyperCLOVA X has none: its unit is skipped (no GPU) and its model is never fetched.
model_standins = {
    # The real SmolLM2-135M-Instruct GGUF, for each llama.cpp model (no vision projector).
    "gpt-oss-20b": {"artifact": "smollm2-gguf"},
    "exaone-32b": {"artifact": "smollm2-gguf"},
    "qwen3-vl-8b": {"artifact": "smollm2-gguf"},
    # all-MiniLM-L6-v2 (384-d) for BGE-M3.
    "bge-m3": {"artifact": "minilm-model"},
    # No cross-encoder with weights exists in the registries: the host builds a small real one from
    # MiniLM, deterministically (tools/build_test_reranker.py, ~1 min on 2 cores).
    "bge-reranker-v2-m3": {"build": "tools/build_test_reranker.py", "base": "bge-m3"},
}

# The llama.cpp source is the pinned archive (no GitHub here).
llama_cpp = {"source": "archive"}

# The CPU and 2 cores of a CI machine: a small context, no GPU layers.
llama_server_overrides = {
    "ctx_size": 2048,
    "n_gpu_layers": "0",
    "flash_attn": "off",
    "batch_size": 512,
    "ubatch_size": 512,
}

# The HyperCLOVA X plugin's repository cannot be reached from here and no archive of it exists in the
# registries: the vLLM layer installs vLLM and stops before the plugin, saying so once.
vllm = {"plugin": {"source": "unavailable"}}

services = {
    # The support services run on the CPU here; the stand-in embedding model (MiniLM) is 384-d. The
    # forward pass is the work on a CPU: both cores (with one thread, 16 clients x 16 texts ran at
    # half the rate of a server using both; the threads spin only briefly, see kca_service_common.py).
    "bge-embedding": {"device": "cpu", "precision": "fp32", "embedding_dim": 384, "threads": 2},
    # Passes of 2048 tokens for the reranker here: on 2 cores a cross-encoder pass of ~100 pairs (8192
    # tokens) ran 10% slower per pair than passes of 16-64 (95 against 106 pairs/s in-process), and 16
    # clients reranking 32 documents each went from 0.78-0.87x infinity-emb's rate to 1.00-1.06x
    # (docs/support-load.md). The embedding model's speed did not depend on the pass size.
    "bge-reranker": {
        "device": "cpu",
        "precision": "fp32",
        "threads": 2,
        "batching": {"batch_tokens": 2048},
        "limits": {"max_text_tokens": 2048},
    },
    # Docling's layout/table/OCR models come only from the hub: the conversion boundary of this host.
    "docling": {"layout_models": "unavailable"},
}

docker = {
    # Debian's own docker.io (Docker's repository is not reachable here), with Docker Compose v2 at the
    # production version from its registry package (artifacts.docker-compose).
    "engine": "debian",
    # No image registry: the images the compose projects need are built here from registry packages,
    # tagged under local_images.prefix, and cached outside the host (see all.py docker.local_images).
    "pull_images": False,
    "local_images": {
        # The test host's own root filesystem, bound read-only into it by testhost/testhost: the base
        # of every locally built image (no base image can be pulled).
        "base_rootfs": "/var/lib/kca-testhost/rootfs.tar.zst",
        # Bound to the control machine's cache: a fresh test host loads a built image instead of
        # building it again.
        "cache_dir": "/var/cache/kca-images",
    },
}

# Dify's release archive is in no package registry reachable from here: the Dify step stops with one
# message; its .env and override are checked offline (tests/unit/test_compose_rendering.py).
dify = {
    "source": "unavailable",
    # Dify's images cannot be pulled either, but its database is the state a restore must bring back:
    # a real PostgreSQL server stands in for db_postgres. Its compose project and service are Dify's
    # (`dify`, `db_postgres`: the labels kca-backup finds the container by, to dump through it), its
    # volume, superuser, PGDATA and password secret those of services.dify-db.state (upstream's), and its
    # image is built here like Open WebUI's: Debian 12's PostgreSQL 15 from the host's own apt on the
    # host's own OS, tagged as the local build of the image the state names. The deploy starts it after
    # a restored dump is loaded, as it would start Dify; the rest of Dify stays unstarted.
    "database_standin": {
        "service": "dify-db",
        "compose_file": "docker-compose.db-standin.yaml",
        "env_file": "/etc/kca/dify-db-standin.env",
        "local_build": {
            "apt_packages": ["postgresql-15"],
            # The postgres account at the alpine image's uid (container_uids), before the package makes
            # one; no cluster of Debian's own (the entrypoint makes it in PGDATA, as the official image's).
            "prepare": [
                "groupadd --system --gid 70 postgres",
                "useradd --system --uid 70 --gid 70 --home-dir /var/lib/postgresql --shell /bin/bash postgres",
                "mkdir -p /etc/postgresql-common",
                "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf",
            ],
            "files": {
                "/usr/local/bin/docker-entrypoint.sh": "files/opt/ai-platform/images/dify-db/docker-entrypoint.sh"
            },
            # The server's own binaries first (pg_dumpall, psql, pg_isready through `docker exec`).
            "environment": {
                "PATH": "/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            },
            # The official image's: a fast shutdown on docker stop.
            "stop_signal": "SIGINT",
            "entrypoint": ["docker-entrypoint.sh"],
            "command": ["postgres"],
        },
    },
}

# The restic repository: a folder of the control machine bound into the test host (testhost/testhost),
# off the test host's root filesystem, so it outlives the host as an off-site repository outlives the
# server. The password comes from the control machine too (inventory.py keeps it in the test host's
# state folder), as production's comes from the operator.
backup = {"repository": "/srv/kca-backup-repository"}
