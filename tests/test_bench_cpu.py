"""bench/bench_cpu.py (the cpu backend vs eager vs clone): interleaved timing and a reduced run."""
import importlib.util
import json
import os

import pytest

try:
    from attn_kernels.ops import ext  # noqa: F401
except ImportError as exc:
    pytest.skip(f"attn_kernels._C is not available: {exc}", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_cpu", os.path.join(REPO, "bench", "bench_cpu.py"))
bench_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cpu)


def test_providers_take_turns_block_by_block_in_rotating_order():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times = bench_cpu.interleaved_us(fns, rounds=4, block_ms=0.0)  # blocks of one call after the 2 sizing calls
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]
    assert order[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # the order rotates
    for median, p20, p80 in times.values():
        assert 0 < p20 <= median <= p80


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_reduced_run_writes_rows_for_every_case(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(bench_cpu, "SHAPES", [(32, 5, 7)])
    monkeypatch.setattr(bench_cpu, "BATCHES", [1, 3])
    assert bench_cpu.main(["--mode", mode, "--rounds", "3", "--block-ms", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob(f"cpu_se-eca_{mode}_float32_nchw_*.json")
    result = json.loads(path.read_text())
    assert [(r["op"], r["n"]) for r in result["rows"]] == [("se", 1), ("se", 3), ("eca", 1), ("eca", 3)]
    for r in result["rows"]:
        assert r["speedup_vs_eager"] == pytest.approx(r["eager_us"] / r["cpu_us"], rel=1e-2)
        assert r["cpu_p20_p80"][0] <= r["cpu_us"] <= r["cpu_p20_p80"][1]
    assert "interleaved" in result["meta"]["timing"]
    assert len(list(tmp_path.glob("*.csv"))) == 1
