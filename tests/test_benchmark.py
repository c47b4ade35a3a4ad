"""attn_kernels.benchmark: the CPU timer that interleaves a case's providers."""
import time

import pytest

from attn_kernels import benchmark as B


def test_interleaved_providers_take_turns_in_rotating_order():
    calls = []

    def provider(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    # one call per 10 ms round each (a call lasts longer than the round)
    fns = {"a": provider("a", 0.011), "b": provider("b", 0.011), "c": provider("c", 0.011)}
    out = B.time_cpu_interleaved(fns, min_time=0.0, min_reps=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    for median, p20, p80 in out.values():
        assert p20 <= median <= p80 and median >= 11.0


def test_a_failing_provider_is_reported_and_the_others_are_timed():
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] > 3:  # after the warm-up and one timed call
            raise RuntimeError("boom")

    out = B.time_cpu_interleaved({"ok": lambda: None, "flaky": flaky, "broken": lambda: 1 / 0},
                                 min_time=0.0, min_reps=4, warmup=2)
    assert isinstance(out["broken"], ZeroDivisionError)
    assert isinstance(out["flaky"], RuntimeError)
    median, p20, p80 = out["ok"]
    assert 0 <= p20 <= median <= p80


def test_every_provider_gets_min_time_and_min_reps():
    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1

    def slow():
        counts["slow"] += 1
        time.sleep(0.002)

    B.time_cpu_interleaved({"fast": fast, "slow": slow}, min_time=0.03, min_reps=5, warmup=0, round_ms=5.0)
    assert counts["slow"] >= 0.03 / 0.0025  # >= 30 ms of 2 ms calls (sleep may overshoot)
    assert counts["fast"] >= 5


def test_cpu_bench_rows_and_copy_come_from_one_interleaved_timing(monkeypatch):
    seen = []
    real = B.time_cpu_interleaved

    def spy(fns, *args, **kwargs):
        seen.append(sorted(fns))
        return real(fns, *args, **kwargs)

    monkeypatch.setattr(B, "time_cpu_interleaved", spy)
    case = B.build_cases(["se"], ["fwd"], ["fp32"], ["nchw"], "cpu", quick=False, batch=2,
                         shapes=[(2, 16, 4, 4)], sweep=False)[0]
    st = B.Settings(device=B.torch.device("cpu"), min_time=0.0, launches=False, budget_bytes=1 << 24)
    fused = B.fused_backends("se", "cpu")  # ["cpu"] where the extension is built
    rows = B.run_case(case, ["eager", *fused, "cuda"], st, {})  # cuda: no such backend for CPU tensors
    copy = B._COPY
    assert [sorted(keys) for keys in seen] == [sorted(["eager", "cuda", copy, *fused])]
    by_provider = {r["provider"]: r for r in rows}
    for prov in ("eager", *fused):
        assert by_provider[prov]["median_ms"] > 0 and by_provider[prov]["error"] == "", by_provider[prov]
    assert by_provider["cuda"]["error"] and by_provider["cuda"].get("median_ms") is None
    # the copy was timed in the same rounds: its bandwidth is the rows' reference
    assert all(r["copy_gbps"] > 0 for r in rows)
    assert by_provider["eager"]["frac_copy"] == pytest.approx(by_provider["eager"]["gbps"]
                                                              / by_provider["eager"]["copy_gbps"], rel=1e-2)
