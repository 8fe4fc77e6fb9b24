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
# Production sources and checksums are filled in by the LLM layer; the test host replaces each
# llama.cpp model file with a real small stand-in (group_data/testhost.py).

models = {
    "gpt-oss-20b": {"dir": "/models/gpt-oss", "disk_gb": 12.0},
    "exaone-32b": {"dir": "/models/exaone", "disk_gb": 18.0},
    "qwen3-vl-8b": {"dir": "/models/qwen3-vl-gguf", "disk_gb": 5.4},
    "hyperclova-x-seed-think-14b": {"dir": "/models/huggingface", "disk_gb": 28.0},
    "bge-m3": {"dir": "/models/huggingface", "disk_gb": None},
    "bge-reranker-v2-m3": {"dir": "/models/reranker/models", "disk_gb": None},
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

firewall = {
    # When enabled, internal services may bind the wildcard address: the firewall keeps them internal.
    "enabled": True,
}
