"""Smoke tests of every ``attn-kernels`` subcommand on CPU with tiny settings (in-process, via cli.main).

Speed is never asserted here (CLAUDE/COMMON rule: speed claims only from benchmarks); these check that
each command runs end to end and writes its files with the documented schema.
"""
import csv
import importlib.util
import json
import os
import sys

import pytest
import torch

from attn_kernels import benchmark, cli
from attn_kernels.benchmark import FIELDS

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_SWAP = importlib.util.find_spec("attn_kernels.swap") is not None
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None  # the `test` extra installs it


def _fused_cpu(op="se"):
    return benchmark.fused_backends(op, "cpu")


def _one(path_glob_dir, suffix):
    files = [f for f in os.listdir(path_glob_dir) if f.endswith(suffix)]
    assert len(files) == 1, (path_glob_dir, os.listdir(path_glob_dir))
    return os.path.join(path_glob_dir, files[0])


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "backends" in out and "cpu kernels" in out
    assert "auto table   cpu: disabled (ATTN_KERNELS_AUTO_TABLE=0)" in out  # conftest switches the table off
    for backend in ("reference", "triton", "cuda", "cpu"):
        assert f"{backend}:" in out


def test_module_entry_point(monkeypatch, capsys):
    """``python -m attn_kernels`` runs the same main (run in-process: a subprocess would re-import torch)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["attn-kernels", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("attn_kernels", run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("bench", "profile", "demo", "info", "swap-check"):
        assert cmd in out


def test_bench_quick_tiny_writes_json_csv_png(tmp_path, capsys):
    providers = ",".join(["eager"] + _fused_cpu())
    rc = cli.main(["bench", "--quick", "--ops", "se,eca,se_residual", "--shape", "2x16x4x4", "--providers", providers,
                   "--min-time", "0.002", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| op |" in out and "× eager" in out and "rotated" in out
    data = json.loads(open(_one(tmp_path, ".json")).read())
    assert data["schema"] == FIELDS
    rows = data["rows"]
    n_prov = {op: 1 + len(benchmark.fused_backends(op, "cpu")) for op in ("se", "eca", "se_residual")}
    # quick: modes fwd, fwd+bwd; layouts nchw, channels_last; fp32 on CPU
    assert len(rows) == 4 * sum(n_prov.values())
    for r in rows:
        assert set(r) == set(FIELDS)
        assert r["device_type"] == "cpu" and r["torch"] == torch.__version__ and r["date"]
        assert not r["error"], r
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["gbps"] > 0 and r["frac_copy"] > 0 and r["launches"] >= 1
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] is None  # compile not run here
    fwd = [r for r in rows if r["mode"] == "fwd" and r["op"] == "se"][0]
    assert fwd["floor_bytes"] == 2 * 2 * 16 * 4 * 4 * 4  # read x + write y, fp32
    res = [r for r in rows if r["mode"] == "fwd+bwd" and r["op"] == "se_residual"][0]
    assert res["floor_bytes"] == (3 + 5) * 2 * 16 * 4 * 4 * 4
    with open(_one(tmp_path, ".csv")) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == FIELDS
        assert len(list(reader)) == len(rows)
    pngs = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert len(pngs) == (2 if HAS_MPL else 0)


def test_bench_compile_provider(tmp_path):
    rc = cli.main(["bench", "--ops", "se", "--modes", "fwd", "--layouts", "nchw", "--shape", "2x16x4x4",
                   "--providers", "eager,compile", "--min-time", "0.002", "--no-progress", "--no-plots",
                   "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads(open(_one(tmp_path, ".json")).read())["rows"]
    comp = [r for r in rows if r["provider"] == "compile"][0]
    assert not comp["error"] and comp["median_ms"] > 0 and comp["launches"] is None  # n/a on CPU
    assert comp["speedup_vs_compile"] == pytest.approx(1.0)


def test_bench_list_and_filters(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "se_silu" in out and "efficientnet_b0[0]" in out and "sweep" in out
    assert "triton" not in out  # never the Triton interpreter as a provider on CPU
    assert cli.main(["bench", "--ops", "nope", "--list"]) == 2


def test_sites_match_the_documented_models():
    # SE-ResNet-50 stage widths and the ECA kernel sizes the paper's rule gives.
    assert [s[:3] for s in benchmark.SITES["se_resnet50"]] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14),
                                                               (2048, 7, 7)]
    assert [s[3] for s in benchmark.SITES["eca_resnet50"]] == [5, 5, 5, 7]
    assert len(benchmark.SITES["efficientnet_b0"]) == 10 and len(benchmark.SITES["mobilenetv3_large"]) == 6


@pytest.mark.skipif(not HAS_SWAP, reason="attn_kernels.swap is not available")
def test_profile_tiny(tmp_path, capsys):
    rc = cli.main(["profile", "--models", "cnn_se", "--variants", "plain,eager,fused", "--batch", "2",
                   "--steps", "2", "--warmup", "0", "--active", "1", "--num-classes", "10", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(open(_one(tmp_path, ".json")).read())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"plain", "eager", "fused"}
    for r in rows.values():
        assert not r["error"], r
        assert r["step_ms"] > 0 and r["images_per_s"] > 0 and os.path.exists(r["trace"])
        assert len(r["losses"]) == 2
    assert rows["eager"]["attn_ms"] > 0 and 0 < rows["eager"]["attn_share"] <= 1
    assert rows["plain"]["attn_share"] == 0
    assert rows["fused"]["swapped"] == rows["fused"]["attn_modules"] == 3 and rows["fused"]["left_alone"] == ""
    assert rows["fused"]["follows_eager"] is True
    # where the time went: the largest CPU ops, and the changes against the baseline run
    assert rows["eager"]["top_kernels"] and all(k["ms"] > 0 for k in rows["eager"]["top_kernels"])
    assert rows["fused"]["kernel_deltas"]["vs"] == "eager" and rows["eager"]["kernel_deltas"]["vs"] == "plain"
    deltas = rows["fused"]["kernel_deltas"]["rows"]
    assert deltas and all(d["delta_ms"] == pytest.approx(d["ms"] - d["base_ms"], abs=2e-4) for d in deltas)
    assert "plain" not in {r["variant"] for r in data["rows"] if r.get("kernel_deltas")}
    # which op (so which backend) each attention block took; the eager run calls none of the package's ops
    assert "se_fwd x" in rows["fused"]["attn_ops"] and rows["eager"]["attn_ops"] == ""


def test_device_busy_and_attention_ops():
    """profile's two diagnostics on synthetic events: device time summed over CUDA events only; the
    package's ops counted by name."""
    import attn_kernels.profile as prof

    class Ev:
        def __init__(self, name, device_type, self_device_time_total=0.0):
            self.name, self.device_type, self.self_device_time_total = name, device_type, self_device_time_total
    events = [Ev("k1", "DeviceType.CUDA", 5.0), Ev("k2", "DeviceType.CUDA", 7.5), Ev("aten::mm", "DeviceType.CPU", 99.0),
              Ev("attn_kernels_ext::se_fwd", "DeviceType.CPU"), Ev("attn_kernels_ext::se_fwd", "DeviceType.CPU"),
              Ev("attn_kernels::eca_bwd", "DeviceType.CPU"), Ev("attn::SEBlock", "DeviceType.CPU")]
    assert prof.device_busy_us(events) == 12.5
    assert prof.attention_ops(events) == "attn_kernels::eca_bwd x1, attn_kernels_ext::se_fwd x2"


def test_kernel_times_and_deltas():
    """Per-name totals (device kernels on CUDA, CPU self time otherwise), per step; the deltas against a
    baseline are the largest changes, growth first."""
    import attn_kernels.profile as prof

    class Ev:
        def __init__(self, name, device_type, dev=0.0, cpu=0.0):
            self.name, self.device_type, self.self_device_time_total, self.self_cpu_time_total = (
                name, device_type, dev, cpu)
    run = [Ev("conv", "DeviceType.CUDA", 3000.0), Ev("conv", "DeviceType.CUDA", 1000.0),
           Ev("eca_kernel", "DeviceType.CUDA", 500.0), Ev("aten::mul", "DeviceType.CPU", cpu=40.0)]
    base = [Ev("conv", "DeviceType.CUDA", 2000.0), Ev("mul_kernel", "DeviceType.CUDA", 1500.0),
            Ev("aten::mul", "DeviceType.CPU", cpu=10.0)]
    t, b = prof.kernel_times(run, "cuda"), prof.kernel_times(base, "cuda")
    assert t == {"conv": [4000.0, 2], "eca_kernel": [500.0, 1]}
    assert prof.kernel_times(run, "cpu") == {"aten::mul": [40.0, 1]}
    assert prof.top_kernels(t, per=2) == [{"name": "conv", "ms": 2.0, "calls": 1.0},
                                         {"name": "eca_kernel", "ms": 0.25, "calls": 0.5}]
    d = prof.kernel_deltas(t, b, per=2, base_per=1)
    assert [(x["name"], x["delta_ms"]) for x in d] == [("eca_kernel", 0.25), ("conv", 0.0), ("mul_kernel", -1.5)]
    assert prof.kernel_deltas(t, b, per=2, base_per=1, limit=1)[0]["name"] == "mul_kernel"  # largest |change|


def test_swap_summary_and_left_alone_in_the_table():
    """A fused run that left blocks alone says so in its row and in the table (it timed the originals)."""
    import attn_kernels.profile as prof
    from attn_kernels.swap import LeftAlone, SwapEntry, SwapReport

    report = SwapReport(replaced=[SwapEntry("a.se", "X", "eca", "current"), SwapEntry("a", "B", "eca_residual", "c")],
                        left_alone=[LeftAlone("b.se", "X", "probe mismatch (max abs err 0.002)"),
                                    LeftAlone("c", "B", "residual: drop_path", tail=True)])
    summary = prof.swap_summary(report)
    assert summary == {"swapped": 1, "swap_kinds": "eca x1, eca_residual x1",
                       "left_alone": "b.se: probe mismatch (max abs err 0.002)",
                       "tails_left_alone": "c: residual: drop_path"}
    row = {"model": "m", "variant": "fused", "dtype": "bf16", "layout": "nchw", "attn_modules": 2, **summary}
    table = prof.markdown([row], {"device": "d", "torch": "t", "commit": "c", "date": "x"})
    assert "| 1/2 (LEFT ALONE: see below) |" in table and "b.se: probe mismatch" in table
    assert "Residual tails fuse_residual left" in table and "c: residual: drop_path" in table
    # a fused_residual run whose attention blocks were all swapped but one tail refused: noted, not flagged
    report = SwapReport(replaced=[SwapEntry("a.se", "X", "eca", "current")],
                        left_alone=[LeftAlone("a", "B", "residual: drop_path", tail=True)])
    row = {"model": "m", "variant": "fused_residual", "dtype": "bf16", "layout": "nchw", "attn_modules": 1,
           **prof.swap_summary(report)}
    table = prof.markdown([row], {"device": "d", "torch": "t", "commit": "c", "date": "x"})
    assert "| 1/1 |" in table and "LEFT ALONE" not in table and "a: residual: drop_path" in table



def test_profile_without_swap_message(tmp_path, capsys, monkeypatch):
    """Fused variants need swap: with it hidden, the run records a clear reason instead of crashing."""
    import attn_kernels.profile as prof

    monkeypatch.setattr(prof, "load_swap", lambda: (None, "attn_kernels.swap is not available (test)"))
    rc = cli.main(["profile", "--models", "cnn_se", "--variants", "fused", "--batch", "2", "--steps", "1",
                   "--warmup", "0", "--active", "1", "--num-classes", "10", "--no-trace", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "attn_kernels.swap is not available" in captured.out + captured.err


def test_demo_tiny(tmp_path, capsys):
    rc = cli.main(["demo", "--epochs", "1", "--dataset", "synthetic", "--n-synthetic", "96", "--batch", "32",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "SYNTHETIC" in out
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["fused_vs_eager"]["same_learning"] is True
    with open(tmp_path / "demo_epochs.csv") as f:
        epochs = list(csv.DictReader(f))
    assert {r["model"] for r in epochs} == {"cnn", "cnn_se", "cnn_se_fused"}
    with open(tmp_path / "demo_batches.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * 3  # 77 train images / 32 = 3 batches, three models
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == (["demo_attention.png", "demo_curves.png", "demo_feature_maps.png"] if HAS_MPL else [])


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed (the `test` extra has it): "
                    "the demo's real data set ships inside it")
def test_demo_real_digits_tiny(tmp_path, capsys):
    """The real-data path: scikit-learn's bundled digits (160 of the 1797, one epoch)."""
    rc = cli.main(["demo", "--epochs", "1", "--dataset", "digits", "--limit", "160", "--batch", "32",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "data: scikit-learn digits" in out and "SYNTHETIC" not in out
    assert "128 train / 32 validation images" in out
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["dataset"].startswith("scikit-learn digits (UCI optical digits, 1797 real 8x8 images")
    cmp = summary["fused_vs_eager"]
    assert cmp["same_learning"] is True and cmp["first_step_same"] is True
    assert cmp["first_step"]["loss_rel_diff"] <= 1e-4 and 0 < cmp["first_step"]["grad_max_abs"]
    with open(tmp_path / "demo_batches.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * 4  # 128 train images / 32 = 4 batches, three models


def test_demo_falls_back_to_synthetic_without_sklearn(monkeypatch):
    """auto: no scikit-learn -> synthetic digits, and the description says so and why; digits: an error."""
    from attn_kernels import demo

    def no_sklearn():
        raise ImportError("No module named 'sklearn'")

    monkeypatch.setattr(demo, "load_sklearn_digits", no_sklearn)
    xtr, ytr, xva, yva, desc = demo.load_data("auto", n_synthetic=20, seed=0)
    assert desc.startswith("SYNTHETIC digits (20 glyphs") and "scikit-learn is not importable" in desc
    assert xtr.shape == (16, 1, 32, 32) and xva.shape == (4, 1, 32, 32) and len(ytr) == 16 and len(yva) == 4
    with pytest.raises(RuntimeError, match="needs scikit-learn"):
        demo.load_data("digits", n_synthetic=20, seed=0)


@pytest.mark.skipif(not HAS_SWAP, reason="attn_kernels.swap is not available")
def test_swap_check(capsys):
    name = "timm:seresnet18" if importlib.util.find_spec("timm") else "se_resnet50"  # the smallest at hand
    assert cli.main(["swap-check", name]) == 0
    assert f"swap-check {name}" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_SWAP, reason="attn_kernels.swap is not available")
def test_swap_check_cnn_se_gets_a_probe_that_fits(capsys):
    """CNN_SE's classifier is sized for 32x32: the default probe must be 32x32 (128x128 failed in the Linear)."""
    assert cli.main(["swap-check", "CNN_SE"]) == 0
    out = capsys.readouterr().out
    assert "swap-check CNN_SE (input (2, 3, 32, 32)" in out and "replaced 3 block(s)" in out
    assert "train float64: max abs err output" in out
    assert cli.main(["swap-check", "attn_kernels:CNN_SE", "--input-size", "4x3x32x32"]) == 0
    assert "(input (4, 3, 32, 32) [given]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["swap-check", "CNN_SE", "--input-size", "32x32"])
    assert exc.value.code == 2
    assert "expected NxCxHxW" in capsys.readouterr().err
