#!/usr/bin/env bash
# The one script to run first whenever a GPU is at hand, most valuable steps first: build the CUDA extension
# for this GPU, the GPU-marked tests, the Triton op tests, compute-sanitizer memcheck + racecheck of every
# kernel (bench/sanitize_check.py), the rest of the tests, `bench --quick`, the key shapes, a short training
# profile, then synccheck + initcheck if time is left. Every step has a cap and never hangs the script.
#
#   bash bench/gpu_check.sh                                    # results in bench/results/<device>/ (commit them)
#   RESULTS_DIR=/tmp/ak ARCHIVE=$OUT/gpu_check.tar.gz bash bench/gpu_check.sh      # on a lent GPU machine
#   DRY_RUN=1 bash bench/gpu_check.sh                          # print the plan and commands, run nothing
#
# Environment:
#   BUDGET_S     wall-clock budget in s (default 420). A step gets min(its cap, budget left - 15 s) and is
#                skipped when that is under its minimum. Steps over their cap are stopped: pytest with SIGINT
#                (it still prints its summary and writes its XML), bench/profile with SIGTERM (they write the
#                rows measured so far, files *_partial_*), then SIGKILL 15 s later.
#   RESULTS_DIR  where every file goes (default bench/results/<device>). Do not point it at a folder that
#                can only carry back a few files: use ARCHIVE for that.
#   ARCHIVE      optional .tar.gz path: after every step RESULTS_DIR is packed there, and the summary is
#                copied beside it as <stem>_summary.txt (two files, whatever the number of logs).
#   PYTHON       interpreter (default python3); SKIP=comma list of step names to leave out.
#   TORCH_CUDA_ARCH_LIST  default: this GPU's capability ("9.0" on Hopper: the cluster forward in csrc/cuda
#                needs sm_90 features only -- clusters, distributed shared memory -- no sm_90a wgmma/setmaxnreg).
#
# Steps (cap s; first estimate for an H200 with 16 cores, nothing cached -- no GPU has run this yet).
# bench and profile get --max-seconds (cap - 30..40 s): they start no new case after it and write what they have.
#   env              20   ~5    versions, nvidia-smi, tools
#   install          240  60-90 pip install -e . (CUDA ext for this arch only, MAX_JOBS=cores)   [background]
#   tests_gpu_triton 120  30    pytest -m gpu tests/ops/test_se.py (Triton schedules, CUDA graphs)  [during build]
#   tests_triton     180  60-90 pytest -m "not gpu" on the four Triton op test files                [during build]
#   info             30   ~5    attn-kernels info (is the cuda backend there?)
#   cpu_diag         180  ~10   bench/cpu_diag.sh: the CPU kernels in a fresh process (+ A/B rebuild on a crash)
#   tests_gpu_ext    220  60-150 pytest -m gpu on the rest (the CUDA kernels of csrc/: both schedules x row loops off/on)
#   tests_rest       180  40-60 pytest -m "not gpu" on the rest                                  [background]
#   memcheck         150  30-60 compute-sanitizer --tool memcheck  python bench/sanitize_check.py [during tests_rest]
#   racecheck        150  30-60 compute-sanitizer --tool racecheck, the csrc/ CUDA kernels only      [during tests_rest]
#   host             90   35-65 bench/host_overhead.py --cprofile: host us per call, fused vs eager, direct
#                               launches on/off, replays on/off                                [alone: timings]
#   bench_quick      200  90-150 attn-kernels bench --quick (compile dominates)                    [alone: timings]
#   bench_key_shapes 120  45-75 se, eca, se_residual, se_silu at every model site, fwd+bwd, bf16, channels_last
#   auto_table       30   ~3    bench/auto_table.py: auto's table entry for this GPU from the bench JSON files
#   tune_se          150  60-120 bench/bench_groups.py: SE's auto plan vs forced configs, RESIDENT=1 first
#   cuda_rows        120  30-60 bench/bench_groups.py: csrc/'s SE and ECA kernels, row loops off vs on
#   profile          150  60-120 SE-ResNet-50, ECA-ResNet-50, EfficientNet-B0 training steps, plain/eager/fused/fused_residual
#   profile_op_path  90   40-60 the fused ECA-ResNet-50 run again with ATTN_KERNELS_EAGER_FAST=0 (eager_fast_off/)
#   synccheck        90   30    compute-sanitizer --tool synccheck  (only if the budget allows)
#   initcheck        90   30    compute-sanitizer --tool initcheck  (only if the budget allows)
# Expected total on a fresh machine: ~800-1000 s of work (the H200 run of 2026-12-04 spent 514 s reaching
# racecheck, before cpu_diag, tune_se and cuda_rows existed), more than one 10-minute device call: steps
# past the budget are skipped, later ones first. With one call, SKIP=tests_rest (the CPU-side tests CI
# already runs; cpu_diag still checks the C++ CPU kernels on the machine) leaves room for the timings;
# the script ends within BUDGET_S + ~15 s: give the device call a timeout_s of at least BUDGET_S + 45.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-420}
DRY_RUN=${DRY_RUN:-0}
SKIP=",${SKIP:-},"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
NPROC=$(nproc 2>/dev/null || echo 4)

unset TRITON_INTERPRET  # a GPU run compiles the Triton kernels; interpreting them here would measure nothing
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 MPLBACKEND=Agg
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench/*.py and a failed editable install still import it

DEV=$(timeout 120 "$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-')[:60] if torch.cuda.is_available() else 'no-cuda')" 2>/dev/null || echo no-cuda)
if [ "$DEV" = "no-cuda" ] && [ "$DRY_RUN" != 1 ]; then
  echo "gpu_check.sh: no CUDA device visible to torch ($PY); nothing to check (DRY_RUN=1 prints the plan)" >&2
  exit 1
fi
if [ "$DRY_RUN" = 1 ] && [ -z "${RESULTS_DIR:-}" ]; then
  RESULTS_DIR=$(mktemp -d)  # a dry run writes nothing into the checkout
fi
RES=${RESULTS_DIR:-bench/results/$DEV}
mkdir -p "$RES" && RES=$(cd "$RES" && pwd)
if [ -n "${ARCHIVE:-}" ]; then
  mkdir -p "$(dirname "$ARCHIVE")" && ARCHIVE="$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")"
fi
SUMMARY=$RES/gpu_check_summary.txt
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

pack() {  # RESULTS_DIR -> ARCHIVE (atomic replace), summary beside it
  [ -n "${ARCHIVE:-}" ] || return 0
  tar -czf "$ARCHIVE.tmp" -C "$(dirname "$RES")" "$(basename "$RES")" 2>/dev/null && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
  cp -f "$SUMMARY" "${ARCHIVE%.tar.gz}_summary.txt" 2>/dev/null || true
}

# ---- step machinery ------------------------------------------------------------------------------------
declare -A BG_PID BG_T0 BG_CAP RC
STEP_T=0
STEP_SIG=TERM

plan() {  # plan NAME CAP [MIN]: STEP_T = min(CAP, budget left - 15); false (and a SKIP line) when skipped
  local name=$1 cap=$2 min=${3:-10}
  local left=$(( BUDGET_S - ($(date +%s) - START) - 15 ))
  STEP_T=$(( cap < left ? cap : left ))
  STEP_SIG=TERM
  if [[ $SKIP == *",$name,"* ]]; then note "SKIP      $name (SKIP)"; RC[$name]=skip; return 1; fi
  if [ "$STEP_T" -lt "$min" ]; then
    note "SKIP      $name (budget: ${left}s left, needs ${min}s)"; RC[$name]=skip; return 1
  fi
}

keyline() {  # the log line that says most about a finished step
  local log=$RES/$1.log line=""
  [ -f "$log" ] || return 0
  case $1 in
    tests*) line=$(grep -E "(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s" "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//') ;;
    memcheck|racecheck|synccheck|initcheck)
      line="$(grep -E "(ERROR|RACECHECK|SYNCCHECK|INITCHECK) SUMMARY" "$log" | tail -n 1 | sed 's/^=* *//'); $(grep -E "^sanitize_check: [0-9]+ ok" "$log" | tail -n 1)" ;;
    tune_se|cuda_rows) line="$(grep -cE "^case " "$log") case(s) started" ;;
    bench*) line="$(grep -oE "[0-9]+ rows in [0-9.]+s" "$log" | tail -n 1); $(grep -oE "[0-9]+ row\(s\) with errors" "$log" | tail -n 1) $(grep -oE "stopped early \([^)]*\)" "$log" | tail -n 1)" ;;
    profile*) line="$(grep -oE "[0-9]+ run\(s\) (not measured|do not follow eager's loss curve)" "$log" | tr '\n' ' ') $(grep -oE "stopped early \([^)]*\)" "$log" | tail -n 1)" ;;
    install*) line="$(grep -E "attn_kernels: building" "$log" | tail -n 1 | sed 's/^ *//'); $(grep -c "WARNING (attn_kernels)" "$log") attn_kernels build warning(s)" ;;
    auto_table) line=$(grep -E "cases from" "$log" | head -n 2 | tr '\n' ' ') ;;
    info) line=$(grep -A3 -E "^  cuda:" "$log" | grep -E "^ +cuda " | head -n 1 | sed 's/^ */cuda backend: /') ;;
    cpu_diag) line="$(grep -E "^cpu_diag:|smoke exit" "$log" | tr '\n' ' ')" ;;
    host) line="fwd+bwd us/call: $(grep -E "^(se|eca) +fwd\+bwd +(eager|triton|triton:launches|triton:jit-path|triton:no-replay|timm:swapped|cuda) " "$log" | awk '{printf "%s %s %s; ", $1, $3, $4}')" ;;
  esac
  line=$(echo "$line" | sed 's/^[; ]*//; s/[; ]*$//')
  [ -n "$line" ] && echo " | $line"
}

record() {  # record NAME RC T0 CAP
  local name=$1 rc=$2 t0=$3 cap=$4 status
  case $rc in 0) status=OK ;; 124|137) status=TIMEOUT ;; *) status="FAIL($rc)" ;; esac
  RC[$name]=$rc
  note "$(printf '%-9s %-17s %4ss (cap %ss)' "$status" "$name" $(( $(date +%s) - t0 )) "$cap")$(keyline "$name")"
  pack
}

header() {  # header NAME CMD...: RES/NAME.log starts with the exact command, its cap and stop signal
  local name=$1; shift
  { printf '$'; printf ' %q' "$@"; printf '\n# cap %ss, stop signal %s, started %s\n' "$STEP_T" "$STEP_SIG" "$(date -u +%T)"; } > "$RES/$name.log"
  if [ "$DRY_RUN" = 1 ]; then head -n 1 "$RES/$name.log"; fi
}

run_fg() {  # run_fg NAME CMD...: the command under its cap (timeout), output appended to RES/NAME.log
  local name=$1 t0 rc=0; t0=$(date +%s)
  header "$@"; shift
  if [ "$DRY_RUN" != 1 ]; then
    timeout --signal="$STEP_SIG" --kill-after=15 "$STEP_T" "$@" >> "$RES/$name.log" 2>&1; rc=$?
  fi
  record "$name" $rc "$t0" "$STEP_T"
}

run_bg() {  # run_bg NAME CMD...: as run_fg, in the background (BG_PID is timeout's); wait_bg NAME records it
  local name=$1
  BG_T0[$name]=$(date +%s); BG_CAP[$name]=$STEP_T
  header "$@"; shift
  if [ "$DRY_RUN" = 1 ]; then true & else
    timeout --signal="$STEP_SIG" --kill-after=15 "$STEP_T" "$@" >> "$RES/$name.log" 2>&1 &
  fi
  BG_PID[$name]=$!
}

wait_bg() {
  local name=$1 rc
  [ -n "${BG_PID[$name]:-}" ] || return 0
  wait "${BG_PID[$name]}"; rc=$?
  unset "BG_PID[$name]"
  record "$name" $rc "${BG_T0[$name]}" "${BG_CAP[$name]}"
}

cleanup() {  # a background step still running when the script ends (interrupted) is stopped, by its PID
  local name
  for name in "${!BG_PID[@]}"; do kill "${BG_PID[$name]}" 2>/dev/null; done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---- tools -----------------------------------------------------------------------------------------------
have_py() { "$PY" -c "import $1" >/dev/null 2>&1; }
HAVE_XDIST=0; have_py xdist && HAVE_XDIST=1
HAVE_PT_TIMEOUT=0; have_py pytest_timeout && HAVE_PT_TIMEOUT=1

pytest_cmd() {  # pytest_cmd NAME WORKERS: the pytest command line in PT (-v: per-test lines survive a stop)
  local workers=$2
  PT=("$PY" -m pytest -v --tb=short -p no:cacheprovider --durations=15 --junitxml="$RES/$1.xml")
  if [ "$HAVE_XDIST" = 1 ] && [ "$workers" -gt 1 ]; then PT+=(-n "$workers"); fi
  if [ "$HAVE_PT_TIMEOUT" = 1 ]; then
    PT+=(--timeout=180)
    # thread method: a test stuck in a CUDA call is ended with its worker (xdist starts another one)
    if [ "$HAVE_XDIST" = 1 ] && [ "$workers" -gt 1 ]; then PT+=(--timeout-method=thread); fi
  fi
  # pytest on SIGINT: stops, prints the summary of what ran, writes the XML. (A background job of a script
  # starts with SIGINT ignored, but timeout catches INT itself, so its child starts with the default again.)
  STEP_SIG=INT
}

find_tool() {  # find_tool NAME: PATH, then the CUDA toolkit folders
  local c
  for c in "$(command -v "$1" 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/$1" /usr/local/cuda/bin/$1 \
           /usr/local/cuda-*/bin/$1 /usr/local/cuda/compute-sanitizer/$1; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}
CS=$(find_tool compute-sanitizer || echo "")
ARCH=${TORCH_CUDA_ARCH_LIST:-$(timeout 60 "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "9.0")}
W_BUILD=$(( NPROC > 10 ? 8 : NPROC / 2 > 0 ? NPROC / 2 : 1 ))   # pytest workers beside the build (<= 6 compile jobs)
W_GPU=$(( NPROC > 8 ? 8 : NPROC ))
W_REST=$(( NPROC > 14 ? 12 : NPROC > 2 ? NPROC - 2 : 1 ))     # beside the (single-process) sanitizer
OPS_TRITON="tests/ops/test_se.py tests/ops/test_eca.py tests/ops/test_cbam.py tests/ops/test_dynamic_eca.py"
IGNORE_TRITON=(--ignore=tests/ops/test_se.py --ignore=tests/ops/test_eca.py --ignore=tests/ops/test_cbam.py
               --ignore=tests/ops/test_dynamic_eca.py)
SAN=("$CS" --print-limit 40 --error-exitcode 86 --destroy-on-device-error kernel)

note "gpu_check $(date -u +%FT%TZ) on $DEV, commit $(git describe --always --dirty 2>/dev/null || echo n/a); budget ${BUDGET_S}s; $NPROC cores; arch $ARCH; xdist $HAVE_XDIST, pytest-timeout $HAVE_PT_TIMEOUT; compute-sanitizer ${CS:-not found}; results $RES"

# ---- 1. environment, then the build in the background while the Triton tests run -----------------------
ENV_SCRIPT="nvidia-smi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv
nproc; free -g; df -h .; grep -m1 'model name' /proc/cpuinfo
for c in \"\${CXX:-c++}\" g++ /opt/gcc/bin/g++; do command -v \"\$c\" >/dev/null && { echo \"\$c: \$(command -v \$c)\"; \"\$c\" -v 2>&1 | tail -2; }; done
ldd --version | head -1
'$PY' -c 'import sys, torch, triton; print(sys.version); print(torch.__version__, torch.version.cuda, triton.__version__); print(torch.cuda.get_device_properties(0))'
'$(find_tool nvcc || echo nvcc)' --version
'${CS:-compute-sanitizer}' --version
'$PY' -m pip list 2>/dev/null | grep -iE '^(torch|triton|torchvision|timm|numpy|pytest|pytest-xdist|pytest-timeout|matplotlib|tqdm|ninja|setuptools) '"
plan env 20 && run_fg env bash -c "$ENV_SCRIPT"

if plan install 240 30; then
  run_bg install env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$NPROC" "$PY" -m pip install -v --no-index --no-deps \
    --no-build-isolation -e .
fi
# The Triton op tests need no extension (tests/ops/test_{se,eca,cbam,dynamic_eca}.py), so they use the build's time.
if plan tests_gpu_triton 120 20; then
  pytest_cmd tests_gpu_triton $(( W_BUILD > 4 ? 4 : W_BUILD )); run_fg tests_gpu_triton "${PT[@]}" -m gpu tests/ops/test_se.py
fi
if plan tests_triton 180 30; then
  pytest_cmd tests_triton "$W_BUILD"; run_fg tests_triton "${PT[@]}" -m "not gpu" $OPS_TRITON
fi
wait_bg install
# pip failed outright (not a timeout: a second build would time out too): try the plain in-place build
if [[ ! " 0 124 137 skip " == *" ${RC[install]:-skip} "* ]] && plan install_inplace 150 30; then
  run_fg install_inplace env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$NPROC" "$PY" setup.py build_ext --inplace
fi
plan info 30 && run_fg info "$PY" -m attn_kernels.cli info
# the C++ CPU kernels in a fresh process; on a crash: gdb backtrace and a rebuild with the system compiler
plan cpu_diag 180 30 && run_fg cpu_diag bash bench/cpu_diag.sh "$PY"

# ---- 2. the CUDA kernels: GPU tests, then the sanitizers while the remaining tests run ------------------
if plan tests_gpu_ext 220 30; then
  pytest_cmd tests_gpu_ext "$W_GPU"; run_fg tests_gpu_ext "${PT[@]}" -m gpu tests --ignore=tests/ops/test_se.py
fi
if plan tests_rest 180 30; then
  pytest_cmd tests_rest "$W_REST"; run_bg tests_rest "${PT[@]}" -m "not gpu" tests "${IGNORE_TRITON[@]}"
fi
if [ -n "$CS" ]; then
  plan memcheck 150 30 && run_fg memcheck "${SAN[@]}" --tool memcheck "$PY" bench/sanitize_check.py
  # racecheck: the CUDA kernels of csrc/ only. Triton's cross-warp reductions (tl.sum) store the same value
  # from replicated lanes to one shared-memory word, which racecheck reports as write-write hazards at the
  # tl.sum line (triton-lang/triton#4736, #7264): the first H200 run (2026-12-04) stopped there with 136 of
  # them in _se_fwd/_se_bwd_kernel, after every ext case had run clean. memcheck covers the Triton kernels.
  plan racecheck 150 30 && run_fg racecheck "${SAN[@]}" --tool racecheck "$PY" bench/sanitize_check.py --parts ext
else
  note "SKIP      memcheck, racecheck (compute-sanitizer not found)"
fi
wait_bg tests_rest

# ---- 3. timings: nothing else runs on the machine from here ---------------------------------------------
# Host time per call of every fused op against eager (tiny tensors), with the Python functions it goes to:
# why the H200 run's fwd+bwd were host-bound (Triton ECA 1.01 ms per call vs 0.095 ms in a CUDA graph)
if plan host 90 30; then
  run_fg host "$PY" bench/host_overhead.py --cprofile --out "$RES"
fi
if plan bench_quick 200 60; then
  run_fg bench_quick "$PY" -m attn_kernels.cli bench --quick --rep-ms 50 --no-progress \
    --max-seconds $(( STEP_T - 40 )) --out "$RES"
fi
# The key sites without torch.compile (bench_quick has it at the key site; compiling 22 cases would take
# minutes) and without the profiler's launch count (the quick rows have it).
if plan bench_key_shapes 120 45; then
  run_fg bench_key_shapes "$PY" -m attn_kernels.cli bench --ops se,eca,se_residual,se_silu --modes fwd+bwd \
    --dtypes bf16 --layouts channels_last --no-sweep --providers eager,triton,cuda --rep-ms 50 --no-launches \
    --no-progress --max-seconds $(( STEP_T - 30 )) --out "$RES"
fi
# auto's table entry for this GPU from the bench files just written (copy it into attn_kernels/ and commit)
if plan auto_table 30 5; then
  cp -f attn_kernels/auto_table.json "$RES/auto_table.json" 2>/dev/null
  run_fg auto_table "$PY" bench/auto_table.py "$RES" --table "$RES/auto_table.json"
fi
# SE's launch plan against forced alternatives at the stage shapes (bench_groups.py; each config compiles)
if plan tune_se 150 60; then
  run_fg tune_se "$PY" bench/bench_groups.py --ops se --batches 128,64 --layout channels_last \
    --stages 1024x14x14,2048x7x7,256x56x56 --modes fwd,fwd+bwd \
    --configs "RESIDENT=1;RESIDENT=1,BLOCK_C=64;maxnreg=128;maxnreg=255;schedule=single;GROUP=1;NUM_STAGES=2;num_warps=4;BLOCK_C=64,BLOCK_HW=64" \
    --max-seconds $(( STEP_T - 40 )) --out "$RES"
fi
# csrc/'s CUDA kernels with and without their row loops + cp.async copies (off by default until this A/B
# and the tests_gpu_ext "-rows" cases have run)
if plan cuda_rows 120 45; then
  run_fg cuda_rows "$PY" bench/bench_groups.py --ops se_cuda,eca_cuda --batches 128,8 --layout channels_last \
    --stages 1024x14x14,256x56x56 --modes fwd,fwd+bwd --configs "rows=0;rows=1" \
    --max-seconds $(( STEP_T - 30 )) --out "$RES"
fi
if plan profile 150 75; then
  run_fg profile "$PY" -m attn_kernels.cli profile --models se_resnet50,eca_resnet50,efficientnet_b0 \
    --variants plain,eager,fused,fused_residual --dtypes bf16 --layouts channels_last --steps 10 --warmup 3 \
    --active 2 --no-trace --max-seconds $(( STEP_T - 45 )) --out "$RES"
fi

# The same fused ECA-ResNet-50 run with eager calls through the registered ops (ATTN_KERNELS_EAGER_FAST=0):
# the training-step cost of the per-call host time the eager path saves (its own folder: not a variant)
if plan profile_op_path 90 60; then
  run_fg profile_op_path env ATTN_KERNELS_EAGER_FAST=0 "$PY" -m attn_kernels.cli profile --models eca_resnet50 \
    --variants fused --dtypes bf16 --layouts channels_last --steps 10 --warmup 3 --active 2 --no-trace \
    --max-seconds $(( STEP_T - 30 )) --out "$RES/eager_fast_off"
fi

# ---- 4. the other two sanitizer tools, if time is left --------------------------------------------------
if [ -n "$CS" ]; then
  plan synccheck 90 40 && run_fg synccheck "${SAN[@]}" --tool synccheck "$PY" bench/sanitize_check.py --se-schedules single
  plan initcheck 90 40 && run_fg initcheck "${SAN[@]}" --tool initcheck "$PY" bench/sanitize_check.py
fi

# ---- summary ----------------------------------------------------------------------------------------------
FAILS=$(cat "$RES"/tests_*.log 2>/dev/null | grep -E "^(FAILED|ERROR) " | sort -u)
if [ -n "$FAILS" ]; then
  note "test failures ($(echo "$FAILS" | wc -l)):"
  echo "$FAILS" | head -n 40 | sed 's/^/  /' | tee -a "$SUMMARY"
fi
note "total $(( $(date +%s) - START ))s of ${BUDGET_S}s; results in $RES${ARCHIVE:+ (packed: $ARCHIVE)}"
pack
