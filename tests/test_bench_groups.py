"""bench/bench_groups.py (the launch-parameter sweep for a GPU) in its --quick form: the forced
configurations reach the launchers."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_groups", os.path.join(REPO, "bench", "bench_groups.py"))
bench_groups = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_groups)


def test_quick_sweep_forces_each_group(tmp_path):
    assert bench_groups.main(["--quick", "--ops", "se,cbam", "--modes", "fwd", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("groups_*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [r["op"] for r in rows] == ["se", "cbam"]
    for r in rows:  # N = 4: groups 1, 2, 4 timed; 8 and 16 exceed the batch
        assert r["auto_group"] == int(r["auto_cfg"].split()[0].split("=")[1])
        for g in (1, 2, 4):
            assert r[f"GROUP={g}_cfg"].startswith(f"GROUP={g} ") and r[f"GROUP={g}_ms"] > 0
        assert "GROUP=8_ms" not in r and r["best"] in ("GROUP=1", "GROUP=2", "GROUP=4")
    # the launchers and the environment are restored after the sweep
    launch = bench_groups._split.launch
    assert bench_groups.S._launch is launch and bench_groups.CB._launch is launch
    assert "ATTN_KERNELS_SE_TUNE" not in os.environ


def test_other_parameters_reach_the_launcher(tmp_path, monkeypatch):
    """--configs beyond GROUP: tiles and warps forced through ATTN_KERNELS_SE_TUNE, the schedule through
    ATTN_KERNELS_SE_SCHEDULE; the recorded launch shows them."""
    monkeypatch.delenv("ATTN_KERNELS_SE_SCHEDULE", raising=False)
    se, schedules = bench_groups.functional.se, []

    def se_seen(*a, **k):
        schedules.append(os.environ.get("ATTN_KERNELS_SE_SCHEDULE"))
        return se(*a, **k)
    monkeypatch.setattr(bench_groups.functional, "se", se_seen)
    assert bench_groups.main(["--quick", "--ops", "se", "--modes", "fwd", "--out", str(tmp_path), "--configs",
                              "BLOCK_C=16,num_warps=2,NUM_STAGES=2;schedule=single,GROUP=2;PREFETCH=1,maxnreg=96"]) == 0
    (row,) = json.loads(next(tmp_path.glob("groups_*.json")).read_text())["rows"]
    ran = dict(item.split("=") for item in row["BLOCK_C=16,num_warps=2,NUM_STAGES=2_cfg"].split())
    # bf16 3x3 rows (18 bytes) cannot be pipelined: the forced NUM_STAGES gives way to the hand prefetch
    assert (ran["BLOCK_C"], ran["num_warps"], ran["NUM_STAGES"], ran["PREFETCH"]) == ("16", "2", "1", "1")
    assert row["schedule=single,GROUP=2_cfg"].startswith("GROUP=2 MULTI=0 P=1")
    ran = dict(item.split("=") for item in row["PREFETCH=1,maxnreg=96_cfg"].split())
    assert (ran["PREFETCH"], ran["maxnreg"]) == ("1", "96")
    assert "single" in schedules and schedules[0] is None  # auto first, then the forced schedule arrived
    assert "ATTN_KERNELS_SE_SCHEDULE" not in os.environ
    with pytest.raises(SystemExit):  # bad text is an argument error before anything runs
        bench_groups.main(["--quick", "--configs", "GROUP=3"])
    with pytest.raises(SystemExit):
        bench_groups.main(["--quick", "--configs", "schedule=fast"])


def test_failing_config_is_recorded_not_fatal(tmp_path, monkeypatch):
    """A configuration whose first call fails (here: the op raises under GROUP = 2) gets its error in the
    row; the others are still timed and the files written."""
    se = bench_groups.functional.se

    def flaky(*a, **k):
        if os.environ.get("ATTN_KERNELS_SE_TUNE") == "GROUP=2":
            raise RuntimeError("compile failed")
        return se(*a, **k)
    monkeypatch.setattr(bench_groups.functional, "se", flaky)
    assert bench_groups.main(["--quick", "--ops", "se", "--modes", "fwd", "--out", str(tmp_path)]) == 0
    (row,) = json.loads(next(tmp_path.glob("groups_*.json")).read_text())["rows"]
    assert row["GROUP=2_error"] == "RuntimeError: compile failed" and "GROUP=2_ms" not in row
    assert row["GROUP=1_ms"] > 0 and row["GROUP=4_ms"] > 0 and row["best"] in ("GROUP=1", "GROUP=4")


def test_cuda_row_loops_config(monkeypatch):
    """rows=0|1 (csrc/'s CUDA row loops) is switched through the extension for the block and restored."""
    calls = []
    state = {"rows": 0}

    def setter(on):
        calls.append(on)
        previous, state["rows"] = state["rows"], int(on)
        return previous
    monkeypatch.setattr(bench_groups, "_set_cuda_row_loops", setter)
    (label, env), = bench_groups.parse_configs("rows=1")
    assert label == "rows=1" and env == {"ATTN_KERNELS_CUDA_ROW_LOOPS": "1"}
    with bench_groups.environment(env):
        assert state["rows"] == 1
    assert state["rows"] == 0 and calls == [True, False] and "ATTN_KERNELS_CUDA_ROW_LOOPS" not in os.environ
    with pytest.raises(ValueError, match="rows is 0 or 1"):
        bench_groups.parse_configs("rows=2")


def test_resident_config_and_wrong_outputs(tmp_path, monkeypatch):
    """RESIDENT=1 reaches SE's forward (the recorded launch shows it) and agrees with auto's output; a
    configuration whose output disagrees with auto's on the same input is an error in the row, not a time."""
    se = bench_groups.functional.se

    def wrong_under_group2(*a, **k):
        y = se(*a, **k)
        return y * 1.1 if os.environ.get("ATTN_KERNELS_SE_TUNE") == "GROUP=2" else y
    monkeypatch.setattr(bench_groups.functional, "se", wrong_under_group2)
    assert bench_groups.main(["--quick", "--ops", "se", "--modes", "fwd", "--out", str(tmp_path),
                              "--configs", "RESIDENT=1;GROUP=2"]) == 0
    (row,) = json.loads(next(tmp_path.glob("groups_*.json")).read_text())["rows"]
    assert "RESIDENT=1" in row["RESIDENT=1_cfg"].split() and row["RESIDENT=1_ms"] > 0
    assert row["RESIDENT=1_max_diff"] <= 1e-2
    assert row["GROUP=2_error"].startswith("RuntimeError: output differs from auto's") and "GROUP=2_ms" not in row
