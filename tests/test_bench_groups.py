"""bench/bench_groups.py (the GROUP sweep for a GPU) in its --quick form: the forced groups reach the launcher."""
import importlib.util
import json
import os

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
            assert r[f"g{g}_cfg"].startswith(f"GROUP={g} ") and r[f"g{g}_ms"] > 0
        assert "g8_ms" not in r and r["best_group"] in (1, 2, 4)
    # the launch config is restored after the sweep
    assert bench_groups.S.launch_config.__name__ == "launch_config"
    assert bench_groups.CB._launch_cfg.__name__ == "_launch_cfg"


def test_failing_group_is_recorded_not_fatal(tmp_path, monkeypatch):
    """A GROUP whose first call fails (here: the op raises under GROUP = 2) gets its error in the row; the
    other groups are still timed and the files written."""
    forced_group = bench_groups.forced_group
    se = bench_groups.functional.se

    @bench_groups.contextlib.contextmanager
    def failing(op, group):
        with forced_group(op, group):
            if group == 2:
                def boom(*a, **k):
                    raise RuntimeError("compile failed")
                monkeypatch.setattr(bench_groups.functional, "se", boom)
            try:
                yield
            finally:
                monkeypatch.setattr(bench_groups.functional, "se", se)
    monkeypatch.setattr(bench_groups, "forced_group", failing)
    assert bench_groups.main(["--quick", "--ops", "se", "--modes", "fwd", "--out", str(tmp_path)]) == 0
    (row,) = json.loads(next(tmp_path.glob("groups_*.json")).read_text())["rows"]
    assert row["g2_error"] == "RuntimeError: compile failed" and "g2_ms" not in row
    assert row["g1_ms"] > 0 and row["g4_ms"] > 0 and row["best_group"] in (1, 4)
