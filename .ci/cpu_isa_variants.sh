#!/usr/bin/env bash
# The README's test command builds the CPU kernels for one ISA (attn_kernels/_isa.py: on this machine
# usually AVX512). Build the other variants this CPU can run -- AVX2 and the portable baseline -- in a
# scratch copy of the tree and run the extension's tests against each, so no variant ships untested.
set -euo pipefail
cd "$(dirname "$0")/.."
main_isa=$(python3 -c "from attn_kernels.ops import ext; print(ext._C.cpu_isa())")
for isa in avx2 default; do
  [ "$isa" = "$main_isa" ] && continue
  missing=$(python3 -c "from attn_kernels import _isa
print(' '.join(_isa.missing_cpu_flags('$isa')) if _isa.cpu_flags() or '$isa' == 'default' else 'the /proc/cpuinfo flags (cannot tell)')")
  if [ -n "$missing" ]; then
    echo "cpu_isa_variants: this CPU lacks $missing; skipping the $isa variant"; continue
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$work"
  echo "+ build the CPU kernels for $isa in $work and run tests/ops/test_ext.py"
  (cd "$work" && ATTN_KERNELS_NO_CUDA=1 ATTN_KERNELS_CPU_ISA=$isa python3 setup.py -q build_ext --inplace >build.log 2>&1) \
    || { tail -30 "$work/build.log"; exit 1; }
  # setup.py turns a failed compile into a warning: check what was built, and show why if it is not it
  got=$(cd "$work" && PYTHONPATH="$work" python3 -c "from attn_kernels.ops import ext; print(ext._C.cpu_isa())" 2>&1) || true
  if [ "$(printf '%s' "$got" | tail -n 1)" != "$isa" ]; then
    echo "cpu_isa_variants: expected a $isa build of attn_kernels._C, got:" >&2
    printf '%s\n' "$got" | tail -n 5 >&2
    tail -n 30 "$work/build.log" >&2
    exit 1
  fi
  (cd "$work" && PYTHONPATH="$work" python3 -m pytest -q -p no:cacheprovider tests/ops/test_ext.py)
  rm -rf "$work"
done
