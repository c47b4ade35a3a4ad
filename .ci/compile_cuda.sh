#!/usr/bin/env bash
# Compile-check the CUDA code of csrc/ without a GPU: every .cu with nvcc for sm_80 and sm_90a (-c
# only, against torch's headers), plus the torch-side CUDA glue (cuda_ops.cpp, ops.cpp with WITH_CUDA)
# through nvcc's host-compiler driver (so the CUDA runtime headers are found). Fails on any error.
# Needs nvcc (PATH, $NVCC or $CUDA_HOME/bin) and torch; torch >= 2.14 headers need -std=c++20.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then NVCC="$d/bin/nvcc"; break; fi
  done
fi
if [ -z "$NVCC" ]; then
  echo "compile_cuda.sh: nvcc not found (put it on PATH or set NVCC / CUDA_HOME)" >&2
  exit 1
fi
"$NVCC" --version | tail -1

mapfile -t INCS < <(python3 - <<'PY'
import os, sysconfig
import torch
from torch.utils.cpp_extension import include_paths
paths = include_paths()
nv = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
if os.path.isdir(nv):  # CUDA headers shipped with torch's CUDA wheels (cusparse.h, cublas.h, ...)
    paths.append(nv)
paths.append(sysconfig.get_paths()["include"])
print("\n".join("-I" + p for p in paths))
PY
)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
status=0
shopt -s nullglob
for cu in csrc/cuda/*.cu; do
  for arch in sm_80 sm_90a; do
    echo "+ nvcc -c $cu ($arch)"
    if ! "$NVCC" -c -std=c++20 -O3 -gencode "arch=compute_${arch#sm_},code=$arch" -Icsrc "${INCS[@]}" \
        "$cu" -o "$OUT/$(basename "$cu").$arch.o"; then
      echo "compile_cuda.sh: $cu failed for $arch" >&2
      status=1
    fi
  done
done
for cpp in csrc/cuda/*.cpp csrc/ops.cpp; do
  echo "+ host compile $cpp (WITH_CUDA)"
  if ! "$NVCC" -x c++ -c -std=c++20 -O1 -DWITH_CUDA -Xcompiler -fPIC -Icsrc "${INCS[@]}" "$cpp" \
      -o "$OUT/$(basename "$cpp").o"; then
    echo "compile_cuda.sh: $cpp failed" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "compile_cuda.sh: all CUDA sources compile (sm_80, sm_90a)"
exit "$status"
