"""The measured table behind ``auto`` (attn_kernels/_autotable.py) and its writer (bench/auto_table.py)."""
import glob
import importlib.util
import json
import os
import warnings

import pytest
import torch

from attn_kernels import _autotable as T, _backend, functional as F, reference as R
from attn_kernels._backend import AUTO_ORDER, _IMPLS
from tests.helpers import assert_close

CPU = torch.device("cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("auto_table", os.path.join(REPO, "bench", "auto_table.py"))
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """write(entries) -> path of a table that ``auto`` reads from now on (caches reset before and after)."""
    path = tmp_path / "table.json"

    def write(entries):
        path.write_text(json.dumps({"schema": T.SCHEMA, "entries": entries}))
        monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", str(path))
        T.reset()
        return str(path)

    yield write
    T.reset()


def _row(op="se", n=16, c=64, hw=49, dtype="float32", layout="nchw", mode="fwd", best="reference"):
    return {"op": op, "variant": op, "n": n, "c": c, "hw": hw, "dtype": dtype, "layout": layout, "mode": mode,
            "best": best, "ms": {best: 1.0}}


def _entry(rows, **device):
    return {"device": {**T.device_key(CPU), **device}, "date": "2026-12-03T00:00:00Z", "rows": rows}


def _bench_row(provider, ms, op="se", n=16, c=64, h=7, w=7, dtype="fp32", layout="nchw", mode="fwd", error=""):
    return {"op": op, "n": n, "c": c, "h": h, "w": w, "dtype": dtype, "layout": layout, "mode": mode,
            "provider": provider, "median_ms": ms, "error": error}


CPU_META = {"device": "CPU Test Model", "device_type": "cpu", "threads": 4, "date": "2026-12-03T00:00:00Z",
            "torch": "2.14.1", "triton": "3.8.0", "cuda": None, "attn_kernels": "0.1.0", "commit": "abc"}


# ---- choosing ------------------------------------------------------------------------------------------
def test_nearest_row_decides_and_far_shapes_fall_back(table_file):
    table_file([_entry([_row(n=16, c=64, hw=49, best="reference"), _row(n=16, c=64, hw=3136, best="cpu")])])
    pick = lambda *shape: T.choose("se", torch.empty(*shape), training=False)  # noqa: E731
    assert pick(16, 64, 7, 7) == "reference"
    assert pick(16, 64, 8, 8) == "reference"  # 64 px: nearer 49 than 3136
    assert pick(16, 64, 56, 56) == "cpu"
    assert pick(8, 64, 40, 40) == "cpu"
    assert pick(1, 64, 1, 1) is None  # 784x fewer bytes than the nearest row: too far to say
    assert T.choose("eca", torch.empty(16, 64, 7, 7), training=False) is None  # no row for the op


def test_dtype_layout_and_mode_select_rows(table_file):
    table_file([_entry([_row(best="reference"), _row(dtype="bfloat16", best="cpu"),
                        _row(layout="channels_last", best="cpu"), _row(mode="fwd+bwd", best="cpu")])])
    x = torch.empty(16, 64, 7, 7)
    assert T.choose("se", x, training=False) == "reference"
    assert T.choose("se", x.bfloat16(), training=False) == "cpu"
    assert T.choose("se", x.to(memory_format=torch.channels_last), training=False) == "cpu"
    assert T.choose("se", x, training=True) == "cpu"
    assert T.choose("se", x.double(), training=False) is None


def test_rows_of_the_same_form_of_the_op_come_first(table_file):
    silu = dict(_row(best="cpu"), variant="se_silu")
    table_file([_entry([_row(best="reference"), silu])])
    x = torch.empty(16, 64, 7, 7)
    assert T.choose("se", x, training=False) == "reference"
    assert T.choose("se", x, training=False, variant="se_silu") == "cpu"
    assert T.choose("se", torch.empty(16, 64, 9, 9), training=False, variant="se_silu") == "cpu"
    # functional.se names its form from its arguments
    params = [torch.randn(4, 64), torch.randn(4), torch.randn(64, 4), torch.randn(64)]
    assert _backend.resolve_for("se", x, None, *params, variant=F._se_variant(params[0], "relu", "sigmoid")) \
        is _backend._load("se", "reference")
    if _backend.unavailable_reason("cpu", "cpu") is None:
        assert _backend.resolve_for("se", x, None, *params, variant=F._se_variant(params[0], "silu", "sigmoid")) \
            is _backend.resolve("se", "cpu", "cpu")
    assert [F._se_variant(None, "relu", "hardsigmoid"), F._se_variant(params[0], "relu", "hardsigmoid"),
            F._se_variant(params[0], "silu", "sigmoid"), F._se_variant(params[0], "relu", "sigmoid")] == \
        ["ese", "se_hsig", "se_silu", "se"]


def test_layout_of():
    x = torch.empty(2, 8, 3, 3)
    assert T.layout_of(x) == "nchw"
    assert T.layout_of(x.to(memory_format=torch.channels_last)) == "channels_last"
    assert T.layout_of(torch.empty(2, 5, 8).transpose(1, 2)) == "channels_last"  # 1-D map, channels innermost
    assert T.layout_of(torch.empty(2, 8, 1, 1).to(memory_format=torch.channels_last)) == "nchw"  # HW = 1
    assert T.layout_of(torch.empty(2, 8, 2, 3, 3).to(memory_format=torch.channels_last_3d)) == "channels_last"


def test_other_devices_entries_are_not_used(table_file):
    key = T.device_key(CPU)
    table_file([_entry([_row(best="reference")], threads=key["threads"] + 1),
                _entry([_row(best="reference")], name="cpu-some-other-model")])
    assert T.device_entry(CPU) is None
    assert T.choose("se", torch.empty(16, 64, 7, 7), training=False) is None
    assert "no measured entry for this device" in T.describe(CPU)


def test_gpu_entry_matching_by_name_then_capability():
    key = {"type": "cuda", "name": "nvidia-h100-80gb-hbm3", "capability": "9.0"}
    own = {"device": {"type": "cuda", "name": "nvidia-h100-80gb-hbm3", "capability": "9.0"}}
    sibling = {"device": {"type": "cuda", "name": "nvidia-h200", "capability": "9.0"}}
    other = {"device": {"type": "cuda", "name": "nvidia-a100", "capability": "8.0"}}
    assert T._match(own, key) == 2 and T._match(sibling, key) == 1 and T._match(other, key) == 0
    assert T._match({"device": {"type": "cpu", "name": "nvidia-h200"}}, key) == 0


# ---- dispatch through functional ----------------------------------------------------------------------
def test_functional_auto_follows_the_table(table_file):
    """The table names triton (the interpreter runs it here), which the CPU's fixed order never picks."""
    m = R.SEBlock(16, reduction=4)
    params = [p.detach() for p in m.se_params()]
    x = torch.randn(2, 16, 3, 3)
    fixed = _backend.resolve("se", "cpu", "auto")
    triton_se = _backend.resolve("se", "cpu", "triton")
    assert fixed is not triton_se
    table_file([_entry([_row(n=2, c=16, hw=9, best="triton")])])
    assert _backend.resolve_for("se", x, None, *params) is triton_se
    assert_close(F.se(x, *params), m(x), name="se on the table's backend")
    # training (an input requires grad): the table has no fwd+bwd row -> the fixed order
    assert _backend.resolve_for("se", x.clone().requires_grad_(), None, *params) is fixed
    assert _backend.resolve_for("se", x, None, *m.se_params()) is fixed  # the module's weights require grad
    with torch.no_grad():  # nothing is recorded: the inference row again
        assert _backend.resolve_for("se", x, None, *m.se_params()) is triton_se
    assert _backend.resolve_for("se", x, "reference", *params) is _backend._load("se", "reference")  # pinned


def test_unavailable_or_unknown_choice_falls_back(table_file, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton cannot run CPU tensors now
    table_file([_entry([_row(best="triton"), _row(op="cbam", best="cuda")])])
    x = torch.randn(16, 64, 7, 7)
    _backend._resolved.pop(("se", "triton", "cpu"), None)
    try:
        assert _backend.resolve_for("se", x, None) is _backend.resolve("se", "cpu", "auto")
        assert _backend.resolve_for("cbam", x, None) is _backend.resolve("cbam", "cpu", "auto")  # no cuda impl
    finally:
        _backend._resolved.pop(("se", "triton", "cpu"), None)  # resolved without the interpreter


def test_broken_table_warns_once_and_uses_the_fixed_order(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", str(bad))
    monkeypatch.setattr(_backend, "_table_warned", False)
    T.reset()
    x = torch.randn(2, 8, 3, 3)
    try:
        with pytest.warns(RuntimeWarning, match="auto backend table is unusable.*not valid JSON"):
            impl = _backend.resolve_for("eca", x, None)
        assert impl is _backend.resolve("eca", "cpu", "auto")
        assert "unreadable" in T.describe(CPU)
        monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", str(tmp_path / "missing.json"))
        T.reset()
        with pytest.raises(FileNotFoundError, match="missing.json"):
            T.load()
        assert T.load()["entries"] == [] and "missing.json" in T.describe(CPU)  # raised once, then empty
        monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", "0")
        T.reset()
        assert T.load()["entries"] == [] and "disabled" in T.describe(CPU)
    finally:
        T.reset()


def test_compiled_calls_take_the_fixed_order(table_file):
    """While dynamo traces, auto does not look at the table: no graph break, and no guard on the shape (one
    graph for every shape with dynamic=True), even after eager calls made table decisions."""
    from torch._dynamo.testing import CompileCounter

    table_file([_entry([_row(n=n, c=64, hw=49, best="reference") for n in (2, 3, 4)])])
    params = [torch.randn(4, 64), torch.randn(4), torch.randn(64, 4), torch.randn(64)]
    shapes = [(n, 64, 7, 7) for n in (2, 3, 4)]
    with torch.no_grad():
        for shape in shapes:  # eager: decided from the table
            assert T.choose("se", torch.empty(shape), training=False) == "reference"
            F.se(torch.randn(shape), *params)
        torch._dynamo.reset()
        counter = CompileCounter()
        f = torch.compile(lambda t: F.se(t, *params), fullgraph=True, backend=counter, dynamic=True)
        for shape in shapes:
            x = torch.randn(shape)
            assert_close(f(x), R.se(x, *params, "relu", "sigmoid"), name=f"compiled {shape}")
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_malformed_tables_never_break_an_op(tmp_path, monkeypatch):
    x = torch.randn(2, 8, 3, 3)
    taps = torch.randn(3)
    bad_row = {k: v for k, v in _row().items() if k != "hw"}
    for i, entries in enumerate(([_entry([bad_row])], ["oops"], [{"device": {"type": "cpu"}, "rows": [1]}])):
        path = tmp_path / f"t{i}.json"
        path.write_text(json.dumps({"schema": T.SCHEMA, "entries": entries}))
        monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", str(path))
        monkeypatch.setattr(_backend, "_table_warned", False)
        T.reset()
        try:
            with pytest.warns(RuntimeWarning, match="auto backend table is unusable"):
                assert_close(F.eca(x, taps), R.eca(x, taps), name=f"eca with malformed table {i}")
            assert "unreadable" in T.describe(CPU)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                F.eca(x, taps)  # warned once; the empty table stays
        finally:
            T.reset()


# ---- writing --------------------------------------------------------------------------------------------
def test_build_entry_picks_winners_with_a_margin():
    rows = [
        _bench_row("eager", 1.00), _bench_row("cpu", 0.50), _bench_row("compile", 0.10),  # compile: no backend
        _bench_row("eager", 1.00, c=128), _bench_row("cpu", 1.03, c=128),  # within 5 %: the fixed order (cpu)
        _bench_row("eager", 1.00, c=256), _bench_row("cpu", 1.20, c=256),  # eager clearly faster
        _bench_row("eager", 1.00, c=512), _bench_row("cpu", 0.1, c=512, error="RuntimeError: x"),  # error row out
        _bench_row("eager", 1.00, mode="bwd"), _bench_row("cpu", 2.0, mode="bwd"),  # bwd rows out
        _bench_row("eager", 2.00, op="se_silu", dtype="bf16"), _bench_row("cpu", 1.00, op="se_silu", dtype="bf16"),
        _bench_row("cpu", 0.8, op="se_silu", dtype="bf16"),  # a second run: the fastest median counts
    ]
    entry = T.build_entry(rows, CPU_META, ["b.json", "a.json"])
    got = {(r["variant"], r["c"], r["dtype"]): (r["best"], r["ms"]) for r in entry["rows"]}
    assert got == {
        ("se", 64, "float32"): ("cpu", {"cpu": 0.5, "reference": 1.0}),
        ("se", 128, "float32"): ("cpu", {"cpu": 1.03, "reference": 1.0}),
        ("se", 256, "float32"): ("reference", {"cpu": 1.2, "reference": 1.0}),
        ("se_silu", 64, "bfloat16"): ("cpu", {"cpu": 0.8, "reference": 2.0}),
    }
    assert all(r["op"] == "se" and r["hw"] == 49 and r["mode"] == "fwd" for r in entry["rows"])
    assert entry["device"] == {"type": "cpu", "name": "cpu-test-model", "threads": 4}
    assert entry["sources"] == ["a.json", "b.json"] and entry["versions"]["commit"] == "abc"


def test_writer_groups_runs_by_device_identity(tmp_path, capsys):
    def run(name, threads, capability, ms):
        meta = {**CPU_META, "device": "NVIDIA H200", "device_type": "cuda", "threads": threads,
                "capability": capability}
        rows = [{**meta, **r} for r in (_bench_row("triton", ms), _bench_row("cuda", 1.0), _bench_row("eager", 3.0),
                                        {**_bench_row("cuda", 1.0), "op": "renamed_op"}, {"provider": "cuda"})]
        (tmp_path / f"bench_{name}.json").write_text(json.dumps({"schema": [], "meta": meta, "rows": rows}))

    run("a", 16, "9.0", 2.0)
    run("b", 8, "9.0", 0.5)  # other host threads, same GPU: the same entry (triton's fastest median: 0.5)
    run("c", 16, None, 0.1)  # an old file without the capability: left out unless --capability
    out = tmp_path / "table.json"
    assert writer.main([str(tmp_path), "--table", str(out)]) == 0
    err = capsys.readouterr().err
    assert "bench_c.json: a CUDA run without the GPU's compute capability" in err
    assert "row(s) left out, e.g. renamed_op cuda" in err
    entries = json.loads(out.read_text())["entries"]
    assert len(entries) == 1 and entries[0]["device"] == {"type": "cuda", "name": "nvidia-h200", "capability": "9.0"}
    (row,) = entries[0]["rows"]
    assert row["best"] == "triton" and row["ms"] == {"cuda": 1.0, "reference": 3.0, "triton": 0.5}
    assert sorted(entries[0]["sources"]) == ["bench_a.json", "bench_b.json"]
    assert writer.main([str(tmp_path), "--table", str(out), "--capability", "9.0"]) == 0
    (row,) = json.loads(out.read_text())["entries"][0]["rows"]
    assert row["ms"]["triton"] == 0.1


def test_merge_replaces_the_same_device_only():
    a = {"device": {"type": "cpu", "name": "m", "threads": 2}, "rows": [1]}
    b = {"device": {"type": "cpu", "name": "m", "threads": 4}, "rows": [2]}
    a2 = {"device": {"type": "cpu", "name": "m", "threads": 2}, "rows": [3]}
    table = T.merge_entry(T.merge_entry({"entries": []}, a), b)
    table = T.merge_entry(table, a2)
    assert table["schema"] == T.SCHEMA
    assert sorted(e["rows"][0] for e in table["entries"]) == [2, 3]


def test_writer_end_to_end(tmp_path, monkeypatch, capsys):
    meta = {**CPU_META, **{"device": f"CPU {T.cpu_model()}", "threads": torch.get_num_threads()}}
    run = {"schema": [], "meta": meta, "rows": [{**meta, **r} for r in (
        _bench_row("eager", 1.0, c=64, h=7, w=7), _bench_row("cpu", 3.0, c=64, h=7, w=7),
        _bench_row("eager", 9.0, op="eca", c=64, h=7, w=7), _bench_row("cpu", 1.0, op="eca", c=64, h=7, w=7))]}
    (tmp_path / "bench_x.json").write_text(json.dumps(run))
    (tmp_path / "other.json").write_text("[]")  # not matched by the folder glob
    out = tmp_path / "table.json"
    assert writer.main([str(tmp_path), "--table", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 cases from 1 file(s)" in printed and "1 override the fixed order" in printed
    monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", str(out))
    T.reset()
    try:
        x = torch.randn(16, 64, 7, 7)
        assert T.choose("se", x, training=False) == "reference"
        assert T.choose("eca", x, training=False) == "cpu"
        assert "cpu-" in T.describe(CPU) and "2 rows" in T.describe(CPU)
    finally:
        T.reset()
    assert writer.main([str(tmp_path / "other.json"), "--table", str(out), "--dry-run"]) == 1


# ---- the packaged table ---------------------------------------------------------------------------------
def test_packaged_table_is_consistent_and_traceable():
    """Every choice is the one its recorded times give (no hand edits) and names a committed bench file."""
    with open(T.TABLE_PATH) as f:
        table = json.load(f)
    assert table["schema"] == T.SCHEMA
    committed = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "bench", "results", "*", "bench_*.json"))}
    for entry in table["entries"]:
        assert entry["sources"] and set(entry["sources"]) <= committed, entry["sources"]
        order = AUTO_ORDER[entry["device"]["type"]]
        for r in entry["rows"]:
            assert r["best"] in _IMPLS[r["op"]] and r["best"] in r["ms"], r
            fastest = min(r["ms"], key=r["ms"].get)
            default = next(b for b in order if b in r["ms"])
            expect = default if r["ms"][default] <= r["ms"][fastest] * (1 + entry["margin"]) else fastest
            assert r["best"] == expect, r


def test_packaged_table_runs_through_functional(monkeypatch):
    """With the packaged table on (whatever this machine is), auto calls still give the reference's values."""
    monkeypatch.setenv("ATTN_KERNELS_AUTO_TABLE", T.TABLE_PATH)
    T.reset()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x = torch.randn(2, 16, 5, 5)
            taps = torch.randn(3)
            assert_close(F.eca(x, taps), R.eca(x, taps), name="eca (auto, packaged table)")
        assert not [w for w in seen if "auto backend table" in str(w.message)]
        assert "unreadable" not in T.describe(CPU)
    finally:
        T.reset()
