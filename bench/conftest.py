"""pytest-benchmark runs of the ``attn-kernels bench`` cases: ``pytest bench --benchmark-only``.

Track one commit against another:

    pytest bench --benchmark-only --benchmark-save=before      # on the old commit
    pytest bench --benchmark-only --benchmark-compare          # on the new one (compares with the last save)

By default the ``--quick`` set of the CLI runs (se, eca, se_residual at the key site, fwd and fwd+bwd, both
layouts; bf16 on CUDA, fp32 on CPU; eager, torch.compile and every fused backend available on the device,
never the Triton interpreter). ``--bench-full`` runs the whole suite (hours on a GPU), ``--bench-ops se,eca``
picks ops. Each timed call synchronises the device, so pytest-benchmark's wall-clock timer sees the kernel
time; inputs rotate through a working set larger than the cache, as in the CLI.
"""
import os

# The Triton interpreter is a test vehicle, not a performance path: never benchmark under it.
os.environ.pop("TRITON_INTERPRET", None)


def pytest_addoption(parser):
    group = parser.getgroup("attn_kernels bench")
    group.addoption("--bench-full", action="store_true", help="the whole suite instead of the --quick set")
    group.addoption("--bench-ops", default=None, help="comma list of ops (default: the quick set's)")


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    import torch

    from attn_kernels import benchmark as B

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    full = metafunc.config.getoption("--bench-full")
    ops = B._split(metafunc.config.getoption("--bench-ops")) or (list(B.OPS) if full else B.QUICK["ops"])
    if full:
        cases = B.build_cases(ops, list(B.MODES), list(B.DTYPES) if dev == "cuda" else ["fp32"], list(B.LAYOUTS),
                              dev, quick=False, batch=None)
        wanted = None
    else:
        cases = B.build_cases(ops, B.QUICK["modes"], B.QUICK["dtypes"][dev], B.QUICK["layouts"], dev, quick=True,
                              batch=None)
        wanted = B.QUICK["providers"]
    params, ids = [], []
    for case in cases:
        for prov in B.providers_for(case.op, dev, wanted):
            params.append((case, prov))
            ids.append(f"{case.op}-{case.shape}-{case.dtype}-{case.layout}-{case.mode}-{prov}")
    metafunc.parametrize("bench_case", params, ids=ids)
