"""Command line: ``attn-kernels bench|profile|demo|info|swap-check`` (also ``python -m attn_kernels.cli``).

    attn-kernels info                      # versions, device, every backend's availability and why not
    attn-kernels bench --quick             # microbenchmarks (markdown table + JSON/CSV/PNG in --out)
    attn-kernels profile --models se_resnet50 --steps 20
    attn-kernels demo --epochs 8           # CNN vs CNN_SE (eager and fused) on a bundled dataset
    attn-kernels swap-check timm:seresnet50
    attn-kernels swap-check CNN_SE         # the probe input fits the model (or --input-size NxCxHxW)

Each subcommand's module is imported only when it runs, so ``info`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _info(args) -> int:
    import attn_kernels

    data = attn_kernels.info()
    print(f"attn_kernels {data.get('attn_kernels')}")
    for key in ("torch", "triton"):
        print(f"  {key:12s} {data.get(key)}")
    import torch

    print(f"  {'cuda device':12s} {data.get('cuda_device')}"
          + (f" (CUDA {torch.version.cuda})" if torch.cuda.is_available() else ""))
    print(f"  {'cpu threads':12s} {torch.get_num_threads()}")
    print(f"  {'cpu kernels':12s} {data.get('cpu_kernels')}")
    print(f"  {'backend':12s} {attn_kernels.get_backend()} (current selection)")
    for dev, line in data.get("auto_table", {}).items():
        print(f"  {'auto table':12s} {dev}: {line}")
    print("\nbackends (per device type: available, or why not):")
    for backend, row in data.get("backends", {}).items():
        print(f"  {backend}:  ops: {row.get('ops', '-')}")
        for dev, status in row.items():
            if dev != "ops":
                print(f"      {dev:5s} {status}")
    shown = ("attn_kernels", "torch", "triton", "cuda_device", "cpu_kernels", "backends", "auto_table")
    extra = {k: v for k, v in data.items() if k not in shown}
    for k, v in extra.items():
        print(f"  {k}: {v}")
    return 0


def _swap_check(args) -> int:
    try:
        import importlib

        swap_mod = importlib.import_module("attn_kernels.swap")  # attn_kernels.swap (attribute) is the function
    except ImportError as exc:
        print(f"swap-check: attn_kernels.swap is not available in this build ({exc})", file=sys.stderr)
        return 1
    fn = getattr(swap_mod, "swap_check", None)
    if fn is None:
        print("swap-check: attn_kernels.swap has no swap_check()", file=sys.stderr)
        return 1
    print(fn(args.model, input_size=args.input_size))
    return 0


def _input_size(text: str):
    """``NxCxHxW`` (as ``bench --shape``) → a 4-tuple of positive ints."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW, e.g. 2x3x224x224; got {text!r}")
    return dims


def _bench(args) -> int:
    from attn_kernels import benchmark

    return benchmark.main(args)


def _profile(args) -> int:
    from attn_kernels import profile

    return profile.main(args)


def _demo(args) -> int:
    from attn_kernels import demo

    return demo.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attn-kernels", description="Fused channel-attention kernels: "
                                     "benchmarks, training profiler, demo, backend info.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="versions, device and backend availability")
    p.set_defaults(func=_info)

    p = sub.add_parser("bench", help="microbenchmark every op against eager and torch.compile",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from attn_kernels import benchmark  # light: imports torch and the package only

    benchmark.add_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("profile", help="training-step profiler: plain vs eager vs compile vs fused",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from attn_kernels import profile

    profile.add_arguments(p)
    p.set_defaults(func=_profile)

    p = sub.add_parser("demo", help="CNN vs CNN_SE (eager and fused) on a bundled dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from attn_kernels import demo

    demo.add_arguments(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("swap-check", help="which attention modules of a model swap() would replace")
    p.add_argument("model", help="model name, e.g. timm:seresnet50, torchvision:efficientnet_b0, CNN_SE")
    p.add_argument("--input-size", type=_input_size, default=None, metavar="NxCxHxW",
                   help="probe input (default: one that fits the model: 2x3x32x32 for CNN_SE, timm's "
                        "pretrained_cfg input size for fixed-size timm models, else 2x3x128x128)")
    p.set_defaults(func=_swap_check)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
