"""Backend selection and dispatch: names, scoping, clear errors for what is unavailable."""
import pytest
import torch

import attn_kernels as ak
from attn_kernels import _backend, functional as F, reference as R
from tests.helpers import assert_close


def test_default_is_auto_and_set_backend_validates():
    assert ak.get_backend() == "auto"
    ak.set_backend("reference")
    assert ak.get_backend() == "reference"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ak.set_backend("fast")
    assert ak.get_backend() == "reference"


def test_use_backend_is_scoped_and_restores_on_error():
    with ak.use_backend("reference"):
        assert ak.get_backend() == "reference"
        with ak.use_backend("auto"):
            assert ak.get_backend() == "auto"
        assert ak.get_backend() == "reference"
    assert ak.get_backend() == "auto"
    with pytest.raises(RuntimeError):
        with ak.use_backend("reference"):
            raise RuntimeError("boom")
    assert ak.get_backend() == "auto"


def test_functional_routes_to_reference():
    m = R.SEBlock(8, reduction=2)
    x = torch.randn(2, 8, 3, 3)
    with ak.use_backend("reference"):
        assert_close(F.se(x, *m.se_params()), m(x), name="functional.se")
        taps = torch.randn(3)
        assert_close(F.eca(x, taps), R.eca(x, taps), name="functional.eca")
    assert_close(F.se(x, *m.se_params(), backend="reference"), m(x), name="pinned backend")


def test_unavailable_backend_raises_with_reason(monkeypatch):
    x = torch.randn(2, 8, 3, 3)
    w = torch.randn(3)
    # a CUDA backend on a CPU tensor is never available
    with pytest.raises(ak.BackendUnavailableError, match="runs on cuda tensors"):
        F.eca(x, w, backend="cuda")
    # triton on a CPU tensor without the interpreter says how to enable it
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_backend, "_resolved", {})
    with pytest.raises(ak.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        F.se(x, torch.randn(2, 8), None, torch.randn(8, 2), None, backend="triton")


def test_missing_implementation_is_reported(monkeypatch):
    monkeypatch.setitem(_backend._IMPLS, "cbam", {"reference": "attn_kernels.reference:cbam"})
    monkeypatch.setattr(_backend, "_resolved", {})
    monkeypatch.setattr(_backend, "unavailable_reason", lambda b, d: None)
    with pytest.raises(ak.BackendUnavailableError, match="no 'triton' implementation"):
        _backend.resolve("cbam", "cpu", "triton")


def test_auto_on_cpu_never_picks_the_interpreter():
    impl = _backend.resolve("se", "cpu", "auto")
    assert impl.__module__ in ("attn_kernels.reference", "attn_kernels.ops.ext")


def test_validation_happens_before_dispatch():
    with pytest.raises(ValueError, match="unknown gate"):
        F.se(torch.randn(2, 4, 3), None, None, torch.randn(4, 4), None, gate="tanh", backend="cuda")
    with pytest.raises(TypeError, match="floating-point"):
        F.eca(torch.ones(2, 4, 3, dtype=torch.int64), torch.randn(3), backend="cuda")


def test_info_lists_every_backend_with_reason():
    info = ak.info()
    assert set(info["backends"]) == {"reference", "triton", "cuda", "cpu"}
    assert info["backends"]["reference"]["cpu"] == "available"
    for backend, row in info["backends"].items():
        for dev, status in row.items():
            assert status, f"{backend}/{dev} has an empty status"
    # how the C++ CPU kernels were built (ISA, OpenMP), or why they are missing
    assert info["cpu_kernels"].startswith(("avx512, ", "avx2, ", "default, ", "not available ("))
