#!/usr/bin/env bash
# Why do the C++ CPU kernels crash on this machine? (The first H200 run, 2026-12-04: the CPU part of
# attn_kernels._C, built there with /opt/gcc/bin/g++, killed every xdist worker that called it; nothing
# reproduced it on the CPU-only machines, with torch 2.11's wheel included.) One step of gpu_check.sh,
# also runnable alone after `pip install -e .`:
#
#   bash bench/cpu_diag.sh [PYTHON]
#
# 1. the installed _C: its file, the compilers named in its .comment section, the OpenMP / C++ runtimes
#    the loader resolves for it, build_info();
# 2. tests/ops/test_ext.py::test_cpu_kernels_run_in_a_fresh_process (SE and ECA forward + backward at
#    1, 2, 16 threads in a child process; faulthandler's trace on a crash), and the same snippet under
#    gdb for a native backtrace when gdb exists;
# 3. only if 2 failed: the CPU part rebuilt with the system compiler (CC=gcc CXX=g++, no CUDA) in a
#    scratch copy of the checkout and the same smoke run against it: the A/B that says whether the
#    compiler is the cause. Exit status: 0 when the installed build passes the smoke run, 1 otherwise.
# Time: ~10 s when the kernels run; on a crash up to ~40 s gdb + 80 s build + 30 s smoke (gpu_check's cap: 180 s).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
SMOKE=$("$PY" -c "import tests.ops.test_ext as t; print(t._SMOKE)" 2>/dev/null)
if [ -z "$SMOKE" ]; then echo "cpu_diag: cannot read the smoke snippet from tests/ops/test_ext.py"; exit 1; fi

so=$("$PY" -c "import attn_kernels._C as m; print(m.__file__)" 2>/dev/null)
echo "== _C: ${so:-not importable}"
if [ -n "$so" ]; then
  readelf -p .comment "$so" 2>/dev/null | sed -n '1,12p'
  ldd "$so" 2>/dev/null | grep -E "gomp|omp|stdc\+\+|libgcc|torch_cpu|c10\.so" || true
  "$PY" -c "import attn_kernels._C as m; print('build_info:', m.build_info())" 2>&1 | tail -n 3
fi
echo "== loaded OpenMP runtimes after a CPU call"
"$PY" - <<'PY' 2>&1 | tail -n 8
import torch
from attn_kernels.ops import ext
torch.set_num_threads(1)
try:
    ext.se(torch.randn(1, 8, 2, 2), *(torch.randn(*s) for s in ((2, 8), (2,), (8, 2), (8,))))
    print("1-thread call returned")
except Exception as exc:
    print("1-thread call raised", exc)
with open("/proc/self/maps") as f:
    print("\n".join(sorted({l.split()[-1] for l in f if "omp" in l or "stdc++" in l})))
PY
echo "== fresh-process smoke test (installed build)"
"$PY" -m pytest -q -p no:cacheprovider "tests/ops/test_ext.py::test_cpu_kernels_run_in_a_fresh_process" 2>&1 | tail -n 40
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ]; then echo "cpu_diag: the installed CPU kernels run"; exit 0; fi
if command -v gdb >/dev/null 2>&1; then
  echo "== gdb backtrace of the smoke snippet"
  exe=$("$PY" -c "import sys; print(sys.executable)")  # the binary itself, not a launcher script (pyenv shims)
  timeout 40 gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args "$exe" -c "$SMOKE" > /tmp/cpu_diag_gdb.$$ 2>&1
  grep -vE "^\[(New|Thread)" /tmp/cpu_diag_gdb.$$ | sed '/^From *To/,$d' | tail -n 50  # the signal and the backtrace
  grep -E "gomp|omp\.so|stdc\+\+|libgcc|_C\.|torch_cpu" /tmp/cpu_diag_gdb.$$ | head -n 12   # the runtimes loaded
  rm -f /tmp/cpu_diag_gdb.$$
fi
echo "== the CPU part rebuilt with the system compiler (CC=gcc CXX=g++), in a scratch copy"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$tmp" 2>/dev/null
for c in gcc g++; do command -v $c && $c --version | head -n 1; done
if ( cd "$tmp" && env CC=gcc CXX=g++ ATTN_KERNELS_NO_CUDA=1 MAX_JOBS=$(nproc) timeout 80 "$PY" setup.py -q build_ext --inplace ) \
     > "$tmp/build.log" 2>&1; then
  ( cd "$tmp" && env PYTHONPATH="$tmp" timeout 30 "$PY" -c "$SMOKE" ) > "$tmp/smoke.log" 2>&1
  echo "system-compiler build smoke exit: $?"
  tail -n 30 "$tmp/smoke.log"
else
  echo "system-compiler build failed (exit $?):"
  tail -n 15 "$tmp/build.log"
fi
exit 1
