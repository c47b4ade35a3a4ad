"""How much of timm and torchvision ``swap()`` covers: blocks replaced per fused kind, and every reason a
block was left alone, with example models. Random weights, nothing downloaded, CPU only (no kernels run:
``swap(..., backend="reference")`` recognises and probes each block, which is what decides coverage).

    python bench/swap_coverage.py [--timm-per-family 3] [--no-torchvision] [--out bench/out]

timm: the ``--timm-per-family`` smallest-looking models of each family (name up to the first ``_`` or
digit); torchvision: every classification model but the few that take minutes to build on a CPU. A model
that fails to build within ``--build-timeout`` seconds is counted as skipped. Writes
``<out>/swap_coverage_<timestamp>.json`` (versions, date, per-model results).
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn_kernels as ak  # noqa: E402

_SMALL = ("atto", "femto", "pico", "nano", "tiny", "small", "18", "b0", "050", "_s", "xxs", "lite0", "002", "26")
_TV_SLOW = ("vit_h", "vit_l", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf", "efficientnet_b7",
            "efficientnet_b6", "convnext_large", "swin_v2_b")


class _BuildTimeout(Exception):
    pass


def _on_alarm(*_):
    raise _BuildTimeout()


def timm_models(per_family: int):
    import timm

    families = collections.defaultdict(list)
    for name in timm.list_models():
        families[re.split(r"[_\d]", name)[0]].append(name)
    picked = []
    for names in families.values():
        names.sort(key=lambda s: (not any(t in s for t in _SMALL), len(s), s))
        picked += [("timm", n) for n in names[:per_family]]
    return picked


def torchvision_models():
    import torchvision

    return [("torchvision", n) for n in torchvision.models.list_models(module=torchvision.models)
            if not any(s in n for s in _TV_SLOW)]


def build(source: str, name: str):
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timm-per-family", type=int, default=3)
    ap.add_argument("--no-torchvision", action="store_true")
    ap.add_argument("--build-timeout", type=int, default=20, help="seconds to build one model")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = ap.parse_args(argv)
    models = timm_models(args.timm_per_family) + ([] if args.no_torchvision else torchvision_models())
    previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    per_model, skipped, errors = [], [], []
    replaced = collections.Counter()
    reasons, examples = collections.Counter(), collections.defaultdict(set)
    for source, name in models:
        signal.alarm(args.build_timeout)
        try:
            model = build(source, name)
        except Exception as exc:  # a model that cannot be built (or not within the timeout) is skipped
            signal.alarm(0)
            skipped.append(f"{source}:{name} ({type(exc).__name__})")
            continue
        signal.alarm(0)
        try:
            report = ak.swap(model, backend="reference")
        except Exception as exc:  # a bug of ours, not the model's: recorded, and the scan goes on
            errors.append(f"{source}:{name} ({type(exc).__name__}: {exc})")
            continue
        kinds = report.kinds()
        replaced.update(kinds)
        for e in report.left_alone:
            key = re.sub(r"\d+", "N", e.reason)
            reasons[key] += 1
            examples[key].add(f"{source}:{name}")
        per_model.append(dict(model=f"{source}:{name}", replaced=kinds,
                              left_alone=[dict(name=e.name, original=e.original, reason=e.reason)
                                          for e in report.left_alone]))
    signal.signal(signal.SIGALRM, previous_handler)
    print(f"models scanned: {len(per_model)} ({len(skipped)} skipped: could not be built)")
    for e in errors:
        print(f"  swap() raised on {e}")
    print("blocks replaced: " + ", ".join(f"{k} {v}" for k, v in replaced.most_common()))
    print(f"blocks left alone: {sum(reasons.values())}")
    for key, count in reasons.most_common():
        print(f"  {count:5d}  {key}  (e.g. {', '.join(sorted(examples[key])[:3])})")
    import timm

    meta = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
                timm=timm.__version__, attn_kernels=ak.__version__, timm_per_family=args.timm_per_family)
    try:
        import torchvision

        meta["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"swap_coverage_{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, replaced=dict(replaced), left_alone=dict(reasons), skipped=skipped,
                       swap_errors=errors, models=per_model), f, indent=1)
    print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
