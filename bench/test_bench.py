"""The CLI's benchmark cases through pytest-benchmark (see conftest.py for how to run and compare)."""
import pytest
import torch

pytest.importorskip("pytest_benchmark")

from attn_kernels import benchmark as B  # noqa: E402

B.configure_compile()


def test_op(benchmark, bench_case):
    case, provider = bench_case
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = int(torch.cuda.mem_get_info(device)[0] * 0.25) if device.type == "cuda" else 1 << 30
    inputs = B._Inputs(case, device, budget, B.cache_bytes(device))
    fn = B._make_callable(case, provider, inputs, {})
    fn()  # compile / first-call work outside the timing

    if device.type == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    call()
    elem = torch.empty((), dtype=B.DTYPES[case.dtype]).element_size()
    benchmark.group = f"{case.op} {case.shape} {case.dtype} {case.layout} {case.mode}"
    benchmark.extra_info.update(provider=provider, floor_bytes=B.floor_bytes(case, elem, B.OPS[case.op].residual),
                                device=B.device_name(device), rotation_sets=inputs.count)
    benchmark(call)
