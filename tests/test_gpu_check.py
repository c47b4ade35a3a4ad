"""bench/gpu_check.sh's plan (DRY_RUN=1: every step's command, nothing run) and bench/cpu_diag.sh on this
machine's build: the scripts a lent GPU runs first must not fail on a typo there."""
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_plan_lists_every_step(tmp_path):
    env = dict(os.environ, DRY_RUN="1", RESULTS_DIR=str(tmp_path), PYTHON=sys.executable, BUDGET_S="2000")
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("OK ", "SKIP "))]
    for step in ("env", "install", "tests_gpu_triton", "tests_triton", "info", "cpu_diag", "tests_gpu_ext",
                 "tests_rest", "host", "bench_quick", "bench_key_shapes", "auto_table", "tune_se", "cuda_rows",
                 "profile", "profile_op_path"):
        assert step in steps, (step, proc.stdout)
    assert "bench/bench_groups.py --ops se" in proc.stdout and "bash bench/cpu_diag.sh" in proc.stdout
    assert "bench/host_overhead.py --cprofile" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("attn_kernels._C") is None,
                    reason="needs the built C++ extension (attn_kernels._C)")
def test_cpu_diag_passes_on_a_working_build():
    proc = subprocess.run(["bash", "bench/cpu_diag.sh", sys.executable], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "cpu_diag: the installed CPU kernels run" in proc.stdout and "build_info:" in proc.stdout
