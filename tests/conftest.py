"""Test configuration.

Without a GPU, Triton kernels run under the Triton interpreter on CPU tensors: TRITON_INTERPRET must
be set before any ``@triton.jit`` function is defined, i.e. before attn_kernels.ops is imported, so
it is set here. Kernel outputs are pre-filled with NaN (ATTN_KERNELS_NAN_FILL) so unwritten elements
fail the comparisons. The measured ``auto`` table is switched off (see below).
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTN_KERNELS_NAN_FILL", "1")
# auto's measured table off: which backend a test's auto call gets must not depend on the machine running
# it (the packaged table has entries for the machines benchmarked). tests/test_autotable.py sets its own.
os.environ.setdefault("ATTN_KERNELS_AUTO_TABLE", "0")

import pytest  # noqa: E402

import attn_kernels  # noqa: E402


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


HAS_TRITON = _has_triton()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_report_header(config):
    """Say in every log how the Triton kernels ran: compiled on the GPU, or interpreted on the CPU."""
    where = "CUDA available" if HAS_CUDA else "no CUDA device"  # no device query: CUDA stays uninitialised here
    mode = "Triton interpreter (TRITON_INTERPRET=1)" if INTERPRET else "Triton compiled"
    return f"attn_kernels: {where}; {mode}"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="triton is not importable")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and not HAS_TRITON:
            item.add_marker(skip_triton)


@pytest.fixture
def device() -> str:
    """Where kernels run: the GPU when there is one, else the CPU (Triton through the interpreter)."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _restore_backend():
    """Tests that call set_backend must not leak their choice into the next test."""
    previous = attn_kernels.get_backend()
    yield
    attn_kernels.set_backend(previous)


@pytest.fixture(autouse=True)
def _no_tf32():
    """References in true fp32 on a GPU: cuDNN may run fp32 convolutions in TF32 by default (the ECA /
    DMK / BiECA / CBAM references use F.conv1d / F.conv2d), ~1e-3 relative off, far outside the fp32
    tolerances of tests that compare the fused op to the fp32 reference directly. No effect on the CPU.
    (Tests of what a user with TF32 on sees turn it back on inside: tests/test_swap.py.)"""
    from attn_kernels.swap import exact_fp32

    with exact_fp32():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def on_gpu() -> bool:
    """True when kernels run on a GPU: tests add their larger shapes only then (the interpreter is slow)."""
    return HAS_CUDA
