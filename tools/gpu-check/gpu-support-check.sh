#!/usr/bin/env bash
# Kept as it was run on the lent H100 (see docs/gpu-check.md): it expects the scratch layout that
# its "prep" notes describe under .gpu/support (model parts, wheels), which is not committed.
# GPU check of apps/bge_embedding_server.py and apps/reranker_server.py with KCA_DEVICE=cuda
# KCA_PRECISION=fp16 on the lent device machine (no network there, 64 MiB carried per call).
#
#   prep         (here)   tar the two model folders, split into 3 parts of <= 62 MiB:
#                         .gpu/support/p1, p2, p3 (+ models.tar.sha256 in p3)
#   stash N      (device) copy part N to /root/work (persists while the machine stays warm);
#                         with N=1 also print nvidia-smi and the image's versions
#   run          (device) join the parts, check sha256, unpack, install the carried wheels
#                         (.gpu/support/run/whl) into /tmp/site, run .gpu/support/run/checks.py
#
# Calls used:  run(carry=[.gpu/support/p1], "bash .gpu/support/gpu-support-check.sh stash 1")
#              run(carry=[.gpu/support/p2], "bash .gpu/support/gpu-support-check.sh stash 2")
#              run(carry=[.gpu/support/p3, .gpu/support/run, .gpu/support/gpu-support-check.sh],
#                  "bash .gpu/support/gpu-support-check.sh run")
set -uo pipefail
HERE=.gpu/support
WORK=${WORK:-/root/work}
MINILM=${MINILM:-/var/cache/kca-ai-infra/downloads/minilm-model}
RERANKER=${RERANKER:-/tmp/kw/reranker-b}
PART_BYTES=$((62 * 1024 * 1024))

case "${1:-}" in
prep)
    rm -rf "$HERE/p1" "$HERE/p2" "$HERE/p3" /tmp/kca-gpu-bundle && mkdir -p /tmp/kca-gpu-bundle
    cp -a "$MINILM" /tmp/kca-gpu-bundle/minilm-model
    cp -a "$RERANKER" /tmp/kca-gpu-bundle/reranker-b
    tar -C /tmp/kca-gpu-bundle -cf /tmp/kca-gpu-bundle.tar minilm-model reranker-b
    (cd /tmp && sha256sum kca-gpu-bundle.tar | sed 's/kca-gpu-bundle.tar/models.tar/' >models.tar.sha256)
    split -b "$PART_BYTES" -d -a 1 /tmp/kca-gpu-bundle.tar /tmp/kca-gpu-part.
    for i in 0 1 2; do mkdir -p "$HERE/p$((i + 1))" && mv "/tmp/kca-gpu-part.$i" "$HERE/p$((i + 1))/models.tar.part$i"; done
    mv /tmp/models.tar.sha256 "$HERE/p3/"
    sha256sum "$MINILM/model.safetensors" "$RERANKER/model.safetensors"
    cat "$HERE/p3/models.tar.sha256"; ls -l "$HERE"/p?/
    ;;
stash)
    mkdir -p "$WORK" && cp "$HERE/p$2"/* "$WORK"/ && ls -l "$WORK"
    if [ "$2" = 1 ]; then
        nvidia-smi
        python3 --version
        python3 -m pip list 2>/dev/null | grep -iE '^(torch|sentence-transformers|transformers|numpy|requests|anyio|click|h11|idna|typing.extensions|annotated-doc|fastapi|starlette|uvicorn|pydantic) '
    fi
    ;;
run)
    cp "$HERE"/p3/* "$WORK"/ || exit 1
    ls -l "$WORK"
    cd "$WORK" && cat models.tar.part0 models.tar.part1 models.tar.part2 >models.tar && sha256sum -c models.tar.sha256 || exit 1
    mkdir -p models && tar -xf models.tar -C models && rm -f models.tar models.tar.part* && cd - >/dev/null || exit 1
    sha256sum "$WORK"/models/*/model.safetensors
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$HERE"/run/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    python3 -c 'import fastapi, starlette, uvicorn, pydantic, torch, sentence_transformers as st, transformers
print("fastapi", fastapi.__version__, "starlette", starlette.__version__, "uvicorn", uvicorn.__version__, "pydantic", pydantic.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "sentence-transformers", st.__version__, "transformers", transformers.__version__)'
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    KCA_DEVICE=${KCA_DEVICE:-cuda} KCA_PRECISION=${KCA_PRECISION:-fp16} python3 "$HERE/run/checks.py" "$WORK/models" "${OUT:-/tmp/out}"
    ;;
*)
    echo "usage: $0 prep | stash N | run" >&2
    exit 2
    ;;
esac
