#!/usr/bin/env bash
# The one script to run first whenever a GPU is at hand: install/build, the whole test suite on the GPU,
# `bench --quick` micro runs plus the key shapes, a short training profile. Target: under 8 minutes.
# Everything lands in bench/results/<device>/ (commit it; the README's table comes from there).
#
#   bash bench/gpu_check.sh            # BUDGET_S=480 by default; each step gets a cap and what is left
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}

DEV=$(python -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-')[:60] if torch.cuda.is_available() else 'no-cuda')")
if [ "$DEV" = "no-cuda" ]; then
  echo "gpu_check.sh: no CUDA device visible to torch; nothing to check" >&2
  exit 1
fi
OUT=bench/results/$DEV
mkdir -p "$OUT"
SUMMARY=$OUT/gpu_check_summary.txt
: > "$SUMMARY"
echo "gpu_check $(date -u +%FT%TZ) on $DEV, commit $(git rev-parse --short HEAD 2>/dev/null || echo n/a)" | tee -a "$SUMMARY"

# step NAME CAP_S CMD...: runs CMD with timeout min(CAP_S, time left - 10), logs to $OUT/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -le 5 ]; then
    echo "SKIP  $name (budget spent)" | tee -a "$SUMMARY"; return
  fi
  local t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=$([ $rc -eq 0 ] && echo OK || ([ $rc -eq 124 ] && echo TIMEOUT || echo "FAIL rc=$rc"))
  echo "$(printf '%-8s' "$status") $name ($(( $(date +%s) - t0 ))s, cap ${t}s) -> $OUT/$name.log" | tee -a "$SUMMARY"
}

step install 150 python -m pip install --no-deps --no-build-isolation -e .
step info 30 python -m attn_kernels.cli info
step tests 150 python -m pytest -q tests -p no:cacheprovider --junitxml="$OUT/tests.xml"
step bench_quick 90 python -m attn_kernels.cli bench --quick --no-progress --out "$OUT"
step bench_key_shapes 75 python -m attn_kernels.cli bench --ops se,eca,se_residual,se_silu --modes fwd+bwd \
  --dtypes bf16 --layouts channels_last --no-sweep --providers eager,compile,triton,cuda --no-progress --out "$OUT"
step profile 90 python -m attn_kernels.cli profile --models se_resnet50,efficientnet_b0 \
  --variants plain,eager,fused,fused_residual --dtypes bf16 --layouts channels_last --steps 10 --warmup 3 \
  --active 2 --out "$OUT"

tail -n 3 "$OUT/tests.log" 2>/dev/null | sed 's/^/tests: /' | tee -a "$SUMMARY"
echo "total $(( $(date +%s) - START ))s; results in $OUT" | tee -a "$SUMMARY"
