"""bench/swap_coverage.py (the timm / torchvision coverage scan) on a hand-picked model list."""
import importlib.util
import json
import os

import pytest

pytest.importorskip("timm")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("swap_coverage", os.path.join(REPO, "bench", "swap_coverage.py"))
swap_coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swap_coverage)


def test_scan_counts_replaced_and_left_alone_blocks(tmp_path, monkeypatch, capsys):
    models = [("timm", "seresnet18"), ("timm", "rexnet_100"), ("timm", "sedarknet21"), ("timm", "no_such_model")]
    monkeypatch.setattr(swap_coverage, "timm_models", lambda per_family: models)
    assert swap_coverage.main(["--no-torchvision", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("swap_coverage_*.json")
    result = json.loads(path.read_text())
    # seresnet18: 8 SE; rexnet_100: 13 SE with a folded BatchNorm; sedarknet21: its SE use LeakyReLU
    assert result["replaced"] == {"se": 21}
    assert [m["model"] for m in result["models"]] == ["timm:seresnet18", "timm:rexnet_100", "timm:sedarknet21"]
    assert result["skipped"] == ["timm:no_such_model (RuntimeError)"] and result["swap_errors"] == []
    (reason,) = result["left_alone"]
    assert "LeakyReLU" in reason and result["left_alone"][reason] == len(result["models"][2]["left_alone"]) > 0
    assert "se 21" in capsys.readouterr().out


def test_a_swap_error_is_recorded_and_the_scan_goes_on(tmp_path, monkeypatch):
    models = [("timm", "seresnet18"), ("timm", "resnet18")]
    monkeypatch.setattr(swap_coverage, "timm_models", lambda per_family: models)
    real_swap = swap_coverage.ak.swap

    def swap(model, **kwargs):
        if type(model).__name__ == "ResNet" and any("SE" in type(m).__name__ for m in model.modules()):
            raise RuntimeError("recogniser bug")
        return real_swap(model, **kwargs)

    monkeypatch.setattr(swap_coverage.ak, "swap", swap)
    assert swap_coverage.main(["--no-torchvision", "--out", str(tmp_path)]) == 1
    (path,) = tmp_path.glob("swap_coverage_*.json")
    result = json.loads(path.read_text())
    assert result["swap_errors"] == ["timm:seresnet18 (RuntimeError: recogniser bug)"]
    assert [m["model"] for m in result["models"]] == ["timm:resnet18"]
