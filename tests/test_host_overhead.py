"""bench/host_overhead.py: the host-time script gpu_check runs on a GPU, here with the Triton stand-in driver
(kernels compiled for sm_90, launches no-ops) -- in a subprocess, as the stand-in replaces Triton's driver."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stand_in_run_times_every_provider(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # --stand-in is for machines without a GPU: hide one where there is
    proc = subprocess.run([sys.executable, "bench/host_overhead.py", "--stand-in", "--ops", "eca", "--iters", "5",
                           "--repeats", "1", "--cprofile", "--top", "5", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    data = json.load(open(tmp_path / path))
    assert data["meta"]["stand_in"] and "stand-in" in data["meta"]["device"]
    rows = {(r["mode"], r["provider"]): r for r in data["rows"]}
    for mode in ("fwd", "fwd+bwd"):
        for prov in ("eager", "timm", "triton", "triton:launches"):
            assert rows[(mode, prov)]["host_us"] > 0 and not rows[(mode, prov)]["error"], rows[(mode, prov)]
        # one launch forward, one backward; the launches alone cost less than the whole call
        assert rows[(mode, "triton:launches")]["launches"] == (1 if mode == "fwd" else 2)
        assert rows[(mode, "triton:launches")]["host_us"] < rows[(mode, "triton")]["host_us"]
        top = rows[(mode, "triton")]["top"]
        assert len(top) == 5 and all(len(t) == 4 for t in top)
    md = open(tmp_path / path.replace(".json", ".md")).read()
    assert "| eca | 2x64x4x4 | bf16 | channels_last | fwd+bwd | triton |" in md and "top functions" in md
