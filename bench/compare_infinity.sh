#!/usr/bin/env bash
# The support services' load table against infinity-emb, the dedicated embedding and reranking server
# an operator would otherwise pick: the same models, the same machine, the same run, row by row in turn
# (bench/support_services.py --compare). Run it on the host the services run on, as root, beside
# support_services.py; `KCA_BENCH_INFINITY=1 ./kca bench` copies both to the test host and runs it there.
#
#   compare_infinity.sh [support_services.py options...]
#
# infinity-emb is no dependency of the project: it goes into a throwaway venv ($INFINITY_VENV, kept for
# the next run; remove it with rm -rf), with the same torch release as the services' venv, so that the
# two servers differ in how they serve and not in the torch build under them. infinity-emb 0.0.78 does
# not start with transformers 5 (its tokenizer call is gone there), hence transformers<5.
# infinity-emb listens on loopback only and is stopped when this script ends, however it ends.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVICES_PYTHON=${SERVICES_PYTHON:-/models/venv/bin/python}
EMBEDDING_MODEL=${EMBEDDING_MODEL:-/models/huggingface/bge-m3}
RERANKER_MODEL=${RERANKER_MODEL:-/models/reranker/models/bge-reranker-v2-m3}
INFINITY_VENV=${INFINITY_VENV:-/var/tmp/kca-bench-infinity}
INFINITY_VERSION=0.0.78
INFINITY_PORT=${INFINITY_PORT:-7997}
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
DEVICE=${DEVICE:-$device}

say() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

torch_release=$("$SERVICES_PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')
if [[ ! -x $INFINITY_VENV/bin/infinity_emb ]] || ! "$INFINITY_VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('infinity-emb') != '$INFINITY_VERSION' or m.version('torch').split('+')[0] != '$torch_release')"
then
  say "Installing infinity-emb $INFINITY_VERSION with torch $torch_release into $INFINITY_VENV (throwaway)"
  rm -rf "$INFINITY_VENV"
  python3 -m venv "$INFINITY_VENV"
  "$INFINITY_VENV/bin/pip" install --progress-bar off \
    "infinity-emb[server,torch]==$INFINITY_VERSION" "transformers<5" "torch==$torch_release"
fi

log=$INFINITY_VENV/server.log
say "Starting infinity-emb on 127.0.0.1:$INFINITY_PORT ($DEVICE; log: $log)"
# Its defaults (batch size 32, its own queue), as an operator would start it; routes under /v1 as the
# OpenAI clients call them (its /health stays at the root), and no line per request (the project's
# servers write none either). Offline, as the server's own services run: a hub or telemetry call with
# no answer would stall its start.
HF_HUB_OFFLINE=1 INFINITY_ANONYMOUS_USAGE_STATS=0 DO_NOT_TRACK=1 \
  "$INFINITY_VENV/bin/infinity_emb" v2 --model-id "$EMBEDDING_MODEL" --model-id "$RERANKER_MODEL" \
    --served-model-name "${EMBEDDING_MODEL##*/}" --served-model-name "${RERANKER_MODEL##*/}" \
    --engine torch --device "$DEVICE" --host 127.0.0.1 --port "$INFINITY_PORT" --url-prefix /v1 \
    --log-level warning >"$log" 2>&1 &
infinity=$!
trap 'kill "$infinity" 2>/dev/null; wait "$infinity" 2>/dev/null || true' EXIT
# Up to 300 s for its models to load; a server that exits or never answers stops the run with its log.
for waited in $(seq 300); do
  curl -fsS -o /dev/null "http://127.0.0.1:$INFINITY_PORT/health" 2>/dev/null && break
  if ! kill -0 "$infinity" 2>/dev/null || ((waited == 300)); then
    tail -20 "$log"; echo "infinity-emb did not start" >&2; exit 1
  fi
  sleep 1
done

say "Load table: the project's servers against infinity-emb"
# The model fields name the models infinity-emb serves (it holds two); the project's servers each hold
# one and only check that the field is a string.
"$SERVICES_PYTHON" "$here/support_services.py" --model-path "$EMBEDDING_MODEL" \
  --compare "infinity=http://127.0.0.1:$INFINITY_PORT" \
  --compare-reranker "infinity=http://127.0.0.1:$INFINITY_PORT" \
  --compare-pid "infinity=$infinity" \
  --embedding-model "${EMBEDDING_MODEL##*/}" --reranker-model "${RERANKER_MODEL##*/}" "$@"
