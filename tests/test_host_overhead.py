"""bench/host_overhead.py: the host-time script gpu_check runs on a GPU, here with the Triton stand-in driver
(kernels compiled for sm_90, launches no-ops) -- in a subprocess, as the stand-in replaces Triton's driver."""
import json
import os

from tests.helpers import run_stand_in


def _stand_in(tmp_path, *args):
    run_stand_in(["bench/host_overhead.py", "--stand-in", "--iters", "5", "--repeats", "1", "--out", str(tmp_path),
                  *args])
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    return path, json.load(open(tmp_path / path))


def test_stand_in_run_times_every_provider(tmp_path):
    path, data = _stand_in(tmp_path, "--ops", "eca", "--cprofile", "--top", "5")
    assert data["meta"]["stand_in"] and "stand-in" in data["meta"]["device"]
    cal = data["meta"]["calibration"]  # the yardstick between machines (no GPU here: no CUDA row)
    assert cal["python_sum_range_100_us"] > 0 and cal["cpu_torch_add_us"] > 0 and "cuda_torch_add_enqueue_us" not in cal
    rows = {(r["mode"], r["provider"]): r for r in data["rows"]}
    for mode in ("fwd", "fwd+bwd"):
        for prov in ("eager", "timm", "triton", "triton:launches", "triton:jit-path", "triton:no-replay",
                     "timm:swapped"):
            assert rows[(mode, prov)]["host_us"] > 0 and not rows[(mode, prov)]["error"], rows[(mode, prov)]
        assert rows[(mode, "triton:jit-path")]["direct_us"] > 0  # the direct path, timed alternately with it
        assert rows[(mode, "triton:no-replay")]["replay_us"] > 0  # replays on, timed alternately with them off
        # one launch forward, one backward; the launches alone cost less than the whole call
        assert rows[(mode, "triton:launches")]["launches"] == (1 if mode == "fwd" else 2)
        assert rows[(mode, "triton:launches")]["host_us"] < rows[(mode, "triton")]["host_us"]
        top = rows[(mode, "triton")]["top"]
        assert len(top) == 5 and all(len(t) == 4 for t in top)
    md = open(tmp_path / path.replace(".json", ".md")).read()
    assert "| eca | 2x64x4x4 | bf16 | channels_last | fwd+bwd | triton |" in md and "top functions" in md
    assert "| triton:jit-path |" in md and "(direct launches, alternating: " in md
    assert "| triton:no-replay |" in md and "(replays, alternating: " in md
    assert "Host calibration (us per call): {'python_sum_range_100_us'" in md


def test_se_launches_and_schedule_b_replay(tmp_path):
    """SE: one launch forward, two backward (grad_x, the weight-gradient reduction); at 2x520x3x3 the
    stand-in's 132 SMs plan schedule (b) (MULTI=1): its replay, on fresh counters, runs."""
    _, data = _stand_in(tmp_path, "--ops", "se", "--shape", "2x520x3x3", "--dtype", "fp32", "--layout", "nchw",
                        "--providers", "triton")
    rows = {r["mode"]: r for r in data["rows"] if r["provider"] == "triton:launches"}
    assert rows["fwd"]["launches"] == 1 and rows["fwd+bwd"]["launches"] == 3
    assert all(not r["error"] and r["host_us"] > 0 for r in rows.values()), rows
