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
