"""Training-speed profiler behind ``attn-kernels profile``.

Trains K steps (synthetic images and labels from a fixed seed by default, SGD with momentum, cross-entropy)
of SE-ResNet-50, ECA-ResNet-50, EfficientNet-B0 and MobileNetV3-Large, each in the variants

- ``plain``: no attention (ResNet-50 for the ResNets; EfficientNet/MobileNetV3 with their SE modules
  replaced by ``nn.Identity``),
- ``eager``: the attention modules as the model library defines them,
- ``compile``: ``torch.compile(model)``,
- ``fused``: ``attn_kernels.swap.swap(model)`` (the attention modules on the fused kernels),
- ``fused_residual``: ``swap(model, fuse_residual=True)`` (attention + residual add + ReLU in one op),
- ``fused_compile``: ``torch.compile(swap(model))``,
- (``--models cnn_se``: the package's small ``CNN_SE`` / ``CNN`` at 32×32, for smoke runs on a CPU.)

in AMP bf16 (``torch.autocast``) and fp32, NCHW and channels_last. Model definitions: timm when installed
(``seresnet50``, ``resnet50`` with ``block_args={"attn_layer": "eca"}``, ``efficientnet_b0``,
``mobilenetv3_large_100``), else torchvision (EfficientNet-B0, MobileNetV3-Large), else the package's own
``se_resnet50`` (the ResNets only); ``--source`` picks one.

Per run: step time (median, p20, p80 of ``--steps`` synchronised steps after ``--warmup``), images/s,
peak device memory, the time per step spent in attention and its share of the step, a chrome trace, and
the loss of every step; for fused runs what ``swap`` did (``swapped`` of ``attn_modules``, and the blocks
it left alone with the reason: such a run times those original blocks, so the table flags it); from the
profiled steps the device's busy time, the largest kernels (``top_kernels``), and the kernels -- and on
CUDA the host-side ops -- whose time per step changed most against the baseline run (``kernel_deltas``:
eager for the other attention variants, plain for eager), which says where a variant's extra step time
went. Runs of one (model, dtype, layout) start from the same seed, weights and batches,
so every non-plain variant's loss curve is compared with eager's (compiled variants use
``torch._inductor.config.fallback_random = True`` so dropout draws the same masks): max relative difference over all steps
≤ ``--tol`` (default 2e-3 fp32, 5e-2 bf16) → ``follows_eager``.

Attention time (torch.profiler, schedule wait=1, warmup=1, active=``--active``, after the timed steps):
forward hooks open a ``record_function("attn::<module path>")`` range around every attention module; an
op is attention work when it runs inside such a range, when it is one of this package's custom ops
(``attn_kernels*::``, found by name: covers fused tails that no longer sit in a module), or when it is the
backward (``autograd::engine::evaluate_function``) of a forward op recorded in a range, matched through
the autograd sequence number. The outermost such events are summed: device (kernel) time on CUDA, CPU
time on CPU; the share divides that by the wall time of the same profiled steps (``ProfilerStep`` ranges,
each step synchronised), not by the timed median, so load changes between phases cannot skew it. With
``fuse_residual`` the fused tail is found by name only when it runs as an ``attn_kernels`` custom op (a
reference fallback of ``se_residual`` runs as plain aten ops and is not counted). Compiled variants: hooks would be traced away, so only the name match applies (fused custom
ops stay visible under ``torch.compile``); for ``compile`` the attention share is reported as n/a because
inductor fuses the attention ops into their neighbours.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from . import benchmark

MODELS = ("se_resnet50", "eca_resnet50", "efficientnet_b0", "mobilenetv3_large", "cnn_se")
DEFAULT_MODELS = MODELS[:4]  # cnn_se: the package's small CIFAR-size CNN_SE (plain: CNN), 32×32, for smoke runs
VARIANTS = ("plain", "eager", "compile", "fused", "fused_residual", "fused_compile")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = ("nchw", "channels_last")
TOL = {"fp32": 2e-3, "bf16": 5e-2}

# Attention module classes of timm, torchvision and this package (Fused* subclasses included).
ATTN_CLASSES = {
    "SEModule", "SqueezeExcite", "EffectiveSEModule", "EcaModule", "CecaModule", "CbamModule", "LightCbamModule",
    "SqueezeExcitation", "SEBlock", "EffectiveSE", "ECA", "AdaptiveSE", "CBAM", "DynamicMultiKernelECA",
    "BidirectionalECA",
}


def is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return name in ATTN_CLASSES or (type(module).__module__.startswith("attn_kernels")
                                    and (name.startswith("Fused") or name in ("SwappedSE", "SwappedECA")))


def strip_attention(model: nn.Module) -> int:
    """Replace every attention module by nn.Identity (its output shape is its input's); returns the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_attention(child):
                setattr(parent, name, nn.Identity())
                count += 1
    return count


def _have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:
        return False


def resolve_source(source: str, model: str) -> str:
    if model == "cnn_se":
        return "package"
    if source != "auto":
        return source
    if _have("timm"):
        return "timm"
    if model in ("efficientnet_b0", "mobilenetv3_large") and _have("torchvision"):
        return "torchvision"
    return "package"


def build_model(name: str, plain: bool, source: str, num_classes: int) -> nn.Module:
    """The model (or its attention-free twin when ``plain``) from ``source``: timm, torchvision or package."""
    if name == "cnn_se":
        from .reference import CNN, CNN_SE

        return CNN(num_classes=num_classes) if plain else CNN_SE(num_classes=num_classes)
    if source == "timm":
        import timm

        if name == "se_resnet50":
            return timm.create_model("resnet50" if plain else "seresnet50", num_classes=num_classes)
        if name == "eca_resnet50":
            if plain:
                return timm.create_model("resnet50", num_classes=num_classes)
            return timm.create_model("resnet50", num_classes=num_classes, block_args={"attn_layer": "eca"})
        tname = {"efficientnet_b0": "efficientnet_b0", "mobilenetv3_large": "mobilenetv3_large_100"}[name]
        m = timm.create_model(tname, num_classes=num_classes)
    elif source == "torchvision":
        import torchvision

        if name == "efficientnet_b0":
            m = torchvision.models.efficientnet_b0(num_classes=num_classes)
        elif name == "mobilenetv3_large":
            m = torchvision.models.mobilenet_v3_large(num_classes=num_classes)
        else:
            raise ValueError(f"torchvision has no {name}; use --source timm or package")
    elif source == "package":
        from .reference import se_resnet50

        if name in ("se_resnet50", "eca_resnet50"):
            return se_resnet50(attn=None if plain else {"se_resnet50": "se", "eca_resnet50": "eca"}[name],
                               num_classes=num_classes)
        raise ValueError(f"the package has no {name} definition; install timm or torchvision")
    else:
        raise ValueError(f"unknown source {source!r}")
    if plain:
        strip_attention(m)
    return m


def load_swap():
    """(swap function, None) or (None, why it is unavailable)."""
    try:
        import importlib

        swap_mod = importlib.import_module("attn_kernels.swap")  # the package attribute ``swap`` is the function
    except ImportError as exc:
        return None, f"attn_kernels.swap is not available ({exc})"
    fn = getattr(swap_mod, "swap", None)
    if fn is None:
        return None, "attn_kernels.swap has no swap()"
    return fn, None


def apply_swap(model: nn.Module, fuse_residual: bool):
    """(model, swap report) -- the report says which blocks were left alone and why."""
    fn, why = load_swap()
    if fn is None:
        raise RuntimeError(why)
    report = fn(model, fuse_residual=fuse_residual) if fuse_residual else fn(model)
    return model, report


def swap_summary(report) -> dict:
    """Row fields from a swap report: ``swapped`` (attention blocks replaced; fused residual tails, which
    replace the block around an already swapped attention module, not counted), ``swap_kinds``
    (``"eca x16, eca_residual x16"``), ``left_alone`` ("name: reason" of each attention block left alone,
    "" when none) -- a fused run that left blocks alone times the original blocks there, so the table
    flags it -- and ``tails_left_alone``: the residual tails ``fuse_residual`` did not fuse (their
    attention blocks are fused; only the add + activation after them runs eagerly), noted, not flagged."""
    kinds = report.kinds()
    blocks = [e for e in report.left_alone if not getattr(e, "tail", False)]
    tails = [e for e in report.left_alone if getattr(e, "tail", False)]
    return {"swapped": sum(v for k, v in kinds.items() if not k.endswith("_residual")),
            "swap_kinds": ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())),
            "left_alone": "; ".join(f"{e.name}: {e.reason}" for e in blocks),
            "tails_left_alone": "; ".join(f"{e.name}: {e.reason}" for e in tails)}


class AttentionRanges:
    """Forward hooks that wrap every attention module's forward in ``record_function("attn::<path>")``."""

    def __init__(self, model: nn.Module):
        self.handles = []
        for path, mod in model.named_modules():
            if is_attention(mod):
                self.handles.append(mod.register_forward_pre_hook(self._enter(path)))
                self.handles.append(mod.register_forward_hook(self._exit))

    @staticmethod
    def _enter(path):
        def hook(mod, args):
            rf = torch.autograd.profiler.record_function(f"attn::{path}")
            rf.__enter__()
            mod.__dict__.setdefault("_ak_ranges", []).append(rf)
        return hook

    @staticmethod
    def _exit(mod, args, out):
        stack = mod.__dict__.get("_ak_ranges")
        if stack:
            stack.pop().__exit__(None, None, None)

    def remove(self):
        for h in self.handles:
            h.remove()


def attention_time_us(events, device_type: str, use_ranges: bool) -> float:
    """Outermost attention events' time (device time on CUDA, CPU time on CPU), see module docstring."""
    seqs = set()

    def collect(e):
        for ch in e.cpu_children:
            if ch.sequence_nr is not None and ch.sequence_nr >= 0:
                seqs.add(ch.sequence_nr)
            collect(ch)

    if use_ranges:
        for e in events:
            if e.name.startswith("attn::"):
                collect(e)

    def is_attn(e):
        n = e.name
        if use_ranges and n.startswith("attn::"):
            return True
        if n.startswith("attn_kernels"):
            return True
        return (use_ranges and n.startswith("autograd::engine::evaluate_function")
                and e.sequence_nr is not None and e.sequence_nr in seqs)

    total = 0.0
    for e in events:
        if not is_attn(e):
            continue
        p, nested = e.cpu_parent, False
        while p is not None:
            if is_attn(p):
                nested = True
                break
            p = p.cpu_parent
        if not nested:
            total += e.device_time_total if device_type == "cuda" else e.cpu_time_total
    return total


def device_busy_us(events) -> float:
    """Sum of the GPU kernels' and copies' own time in ``events`` (0 off CUDA): the device's busy time when
    one stream runs at a time (kernels overlapping on several streams count twice). Against the step's
    wall time it tells a GPU-bound step from one waiting on the host."""
    total = 0.0
    for e in events:
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            t = getattr(e, "self_device_time_total", None)  # (self_cuda_time_total: older torch, deprecated)
            total += t if t is not None else getattr(e, "self_cuda_time_total", 0.0)
    return total


def kernel_times(events, device_type: str) -> Dict[str, List[float]]:
    """{name: [total us, calls]}: the device kernels and copies on CUDA (each one's own time), the ops' self
    CPU time on the CPU -- what a step's time is made of, to compare one variant with another
    (``kernel_deltas``)."""
    out: Dict[str, List[float]] = {}
    for e in events:
        if device_type == "cuda":
            if not str(getattr(e, "device_type", "")).endswith("CUDA"):
                continue
            t = getattr(e, "self_device_time_total", None)
            t = t if t is not None else getattr(e, "self_cuda_time_total", 0.0)
        else:
            t = getattr(e, "self_cpu_time_total", 0.0)
        if not t:
            continue
        acc = out.setdefault(e.name, [0.0, 0])
        acc[0] += t
        acc[1] += 1
    return out


def top_kernels(times: Dict[str, List[float]], per: int, limit: int = 12) -> List[dict]:
    """The ``limit`` largest of ``kernel_times`` as rows {name, ms, calls}, per step (``per`` steps profiled)."""
    top = sorted(times.items(), key=lambda kv: -kv[1][0])[:limit]
    return [{"name": _short(name), "ms": round(us / per / 1e3, 4), "calls": round(n / per, 2)}
            for name, (us, n) in top]


def kernel_deltas(times: Dict[str, List[float]], base: Dict[str, List[float]], per: int, base_per: int,
                  limit: int = 8) -> List[dict]:
    """The ``limit`` kernels (or CPU ops) whose time per step changed most against ``base`` (another
    variant's ``kernel_times``), largest growth first: where a variant's extra step time went."""
    names = set(times) | set(base)
    rows = []
    for name in names:
        ms = times.get(name, [0.0, 0])[0] / per / 1e3
        base_ms = base.get(name, [0.0, 0])[0] / base_per / 1e3
        rows.append({"name": _short(name), "ms": round(ms, 4), "base_ms": round(base_ms, 4),
                     "delta_ms": round(ms - base_ms, 4)})
    rows.sort(key=lambda r: -abs(r["delta_ms"]))
    return sorted(rows[:limit], key=lambda r: -r["delta_ms"])


def _short(name: str, width: int = 100) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def attention_ops(events) -> str:
    """The package's ops that ran, with their counts ("attn_kernels_ext::se_fwd x16, ..."): which backend
    each attention block took (attn_kernels_ext: csrc/; attn_kernels: Triton)."""
    counts: Dict[str, int] = {}
    for e in events:
        if e.name.startswith("attn_kernels") and "::" in e.name:
            counts[e.name] = counts.get(e.name, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(model_name: str, variant: str, dtype: str, layout: str, args, device, trace_dir: Optional[str]) -> dict:
    res = 32 if model_name == "cnn_se" else args.res
    row = {"model": model_name, "variant": variant, "dtype": dtype, "layout": layout, "batch": args.batch,
           "res": res, "steps": args.steps, "source": resolve_source(args.source, model_name), "error": ""}
    torch.manual_seed(args.seed)
    model = build_model(model_name, variant == "plain", row["source"], args.num_classes)
    n_attn = sum(1 for m in model.modules() if is_attention(m))
    model = model.to(device)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if variant.startswith("fused"):
        model, report = apply_swap(model, fuse_residual=variant == "fused_residual")
        row.update(swap_summary(report))
    row["attn_modules"] = n_attn
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    run_model = torch.compile(model) if variant in ("compile", "fused_compile") else model
    g = torch.Generator().manual_seed(args.seed + 1)
    batches = []
    for _ in range(2):
        x = torch.randn(args.batch, 3, res, res, generator=g).to(device).contiguous(memory_format=fmt)
        y = torch.randint(0, args.num_classes, (args.batch,), generator=g).to(device)
        batches.append((x, y))
    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        x, y = batches[i % len(batches)]
        with amp():
            out = run_model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    losses, times = [], []
    i = 0
    torch.manual_seed(args.seed + 2)  # dropout masks: the same for every variant, whatever building consumed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step(i)
        _sync(device)
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(dt * 1e3)
    med, p20, p80 = benchmark._quantiles(times)
    row.update(step_ms=med, p20_ms=p20, p80_ms=p80, images_per_s=args.batch / (med * 1e-3),
               peak_mem_mb=(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
               losses=losses)
    # attention share, under the profiler
    compiled = variant in ("compile", "fused_compile")
    ranges = None if compiled or variant == "plain" else AttentionRanges(model)
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    active = max(1, args.active)
    sched = schedule(wait=1, warmup=1, active=active, repeat=1)
    trace_path = None
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        trace_path = os.path.join(trace_dir, f"{model_name}_{variant}_{dtype}_{layout}.json")
    try:
        with profile(activities=acts, schedule=sched) as prof:
            for k in range(2 + active):
                step(i + 1 + k)
                _sync(device)  # so each ProfilerStep range spans the whole step, kernels included
                prof.step()
        _sync(device)
        if trace_path:
            prof.export_chrome_trace(trace_path)
            row["trace"] = trace_path
        events = prof.events()
        if device.type == "cuda":
            row["gpu_busy_ms"] = device_busy_us(events) / active / 1e3
        row["_kernels"], row["_per"] = kernel_times(events, device.type), active
        row["top_kernels"] = top_kernels(row["_kernels"], active)
        if device.type == "cuda":  # the host side too: a step waiting on Python shows there, not in kernels
            row["_host"] = kernel_times(events, "cpu")
        if variant == "plain":
            row["attn_ms"], row["attn_share"] = 0.0, 0.0
        elif variant == "compile":
            row["attn_ms"], row["attn_share"] = None, None
        else:
            us = attention_time_us(events, device.type, use_ranges=not compiled) / active
            step_us = sum(e.cpu_time_total for e in events if e.name.startswith("ProfilerStep")) / active
            row["attn_ms"] = us / 1e3
            row["profiled_step_ms"] = step_us / 1e3 if step_us else None
            row["attn_ops"] = attention_ops(events)
            # share of the profiled steps' own wall time (the same steps the attention time comes from)
            row["attn_share"] = us / step_us if step_us else None
    finally:
        if ranges is not None:
            ranges.remove()
    return row


def compare_losses(rows: List[dict], tol: Dict[str, float]) -> None:
    """Mark each non-plain run against the eager run of the same (model, dtype, layout)."""
    eager = {(r["model"], r["dtype"], r["layout"]): r.get("losses") for r in rows if r["variant"] == "eager"}
    for r in rows:
        base = eager.get((r["model"], r["dtype"], r["layout"]))
        if r["variant"] in ("plain", "eager") or not base or not r.get("losses"):
            r["max_rel_loss_diff"], r["follows_eager"] = None, None
            continue
        diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(r["losses"], base))
        r["max_rel_loss_diff"] = diff
        r["follows_eager"] = bool(diff <= tol[r["dtype"]])


ROW_FIELDS = ["model", "variant", "source", "dtype", "layout", "batch", "res", "steps", "step_ms", "p20_ms", "p80_ms",
              "images_per_s", "vs_plain", "peak_mem_mb", "attn_ms", "profiled_step_ms", "gpu_busy_ms", "attn_share",
              "attn_ops", "attn_modules", "swapped", "swap_kinds", "left_alone", "tails_left_alone",
              "follows_eager", "max_rel_loss_diff", "losses", "top_kernels", "kernel_deltas", "trace", "error"]


def attach_deltas(rows: List[dict]) -> None:
    """``kernel_deltas`` of each run against its baseline of the same (model, dtype, layout): eager for the
    other attention variants, plain for eager -- where the step time went, kernel by kernel."""
    by = {(r["model"], r["variant"], r["dtype"], r["layout"]): r for r in rows}
    for r in rows:
        if r["variant"] == "plain" or not r.get("_kernels"):
            continue
        vs = "plain" if r["variant"] == "eager" else "eager"
        base = by.get((r["model"], vs, r["dtype"], r["layout"]))
        if base and base.get("_kernels"):
            r["kernel_deltas"] = {"vs": vs, "rows": kernel_deltas(r["_kernels"], base["_kernels"], r["_per"],
                                                                    base["_per"])}
            if r.get("_host") and base.get("_host"):
                r["kernel_deltas"]["host_rows"] = kernel_deltas(r["_host"], base["_host"], r["_per"], base["_per"])


def deltas_markdown(rows: List[dict], per_run: int = 5) -> List[str]:
    """The largest kernel-time changes of each run against its baseline, as markdown lines."""
    unit = "GPU kernel ms per step" if any(r.get("gpu_busy_ms") is not None for r in rows) else "CPU op ms per step"
    out = []
    for r in rows:
        d = r.get("kernel_deltas")
        if not d:
            continue
        if not out:
            out = ["", f"Largest changes against the baseline run ({unit}, profiled steps):"]
        line = lambda xs: "; ".join(f"{x['delta_ms']:+.3f} `{x['name'][:60]}` ({x['base_ms']:.3f} -> {x['ms']:.3f})"  # noqa: E731
                                    for x in xs[:per_run])
        out.append(f"- {r['model']} {r['variant']} {r['dtype']} {r['layout']} vs {d['vs']}: {line(d['rows'])}")
        if d.get("host_rows"):
            out.append(f"  - host (CPU op self ms per step): {line(d['host_rows'])}")
    return out


def markdown(rows: List[dict], meta: dict) -> str:
    cols = [("model", "model"), ("variant", "variant"), ("dtype", "dtype"), ("layout", "layout"),
            ("step_ms", "step ms"), ("images_per_s", "img/s"), ("vs_plain", "vs plain"), ("peak_mem_mb", "peak MB"),
            ("attn_ms", "attn ms"), ("attn_share", "attn share"), ("gpu_busy_ms", "GPU busy ms"),
            ("swapped", "swapped"), ("follows_eager", "follows eager")]
    out = [f"Device: {meta['device']} · torch {meta['torch']} · commit {meta['commit'] or 'n/a'} · {meta['date']}",
           "", "| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if k == "vs_plain" and isinstance(v, float):
                v = f"{100 * v:+.1f}%"
            elif k == "attn_share" and isinstance(v, float):
                v = f"{100 * v:.1f}%"
            elif k == "follows_eager" and v is not None:
                v = f"{'yes' if v else 'NO'} ({r.get('max_rel_loss_diff'):.1e})"
            elif k == "step_ms" and r.get("error") and v is None:
                v = "error"
            elif k == "swapped" and v is not None:
                v = f"{v}/{r.get('attn_modules')}" + (" (LEFT ALONE: see below)" if r.get("left_alone") else "")
            cells.append(benchmark._fmt(v))
        out.append("| " + " | ".join(cells) + " |")
    alone = [r for r in rows if r.get("left_alone")]
    if alone:
        out += ["", "Blocks swap() left alone (those runs timed the original blocks there):"]
        out += [f"- {r['model']} {r['variant']} {r['dtype']} {r['layout']}: {r['left_alone'][:600]}" for r in alone]
    tails = [r for r in rows if r.get("tails_left_alone")]
    if tails:
        out += ["", "Residual tails fuse_residual left as they were (attention fused, the add + activation eager):"]
        out += [f"- {r['model']} {r['variant']} {r['dtype']} {r['layout']}: {r['tails_left_alone'][:600]}"
                for r in tails]
    out += deltas_markdown(rows)
    errs = [r for r in rows if r.get("error")]
    if errs:
        out += ["", f"{len(errs)} run(s) not measured:"]
        out += [f"- {r['model']} {r['variant']} {r['dtype']} {r['layout']}: {r['error']}" for r in errs]
    return "\n".join(out)


def add_arguments(p) -> None:
    cuda = torch.cuda.is_available()
    p.add_argument("--models", help=f"comma list of: {', '.join(MODELS)} (default: all)")
    p.add_argument("--variants", help=f"comma list of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--dtypes", help="comma list of: bf16 (AMP), fp32 (default: both on CUDA, fp32 on CPU)")
    p.add_argument("--layouts", help="comma list of: nchw, channels_last (default: both on CUDA, nchw on CPU)")
    p.add_argument("--batch", type=int, default=128 if cuda else 4)
    p.add_argument("--res", type=int, default=224 if cuda else 64, help="input resolution")
    p.add_argument("--steps", type=int, default=20 if cuda else 3, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=5 if cuda else 1, help="untimed steps first (compiles here)")
    p.add_argument("--active", type=int, default=3 if cuda else 1, help="profiled steps")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None, help="loss-curve tolerance (default 2e-3 fp32, 5e-2 bf16)")
    p.add_argument("--source", default="auto", choices=["auto", "timm", "torchvision", "package"])
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="output directory (default bench/results/<device>/ in a checkout)")
    p.add_argument("--no-trace", action="store_true", help="do not write chrome traces")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no new run after this many seconds; the runs so far are written (as on SIGTERM), "
                        "in files named profile_partial_*")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = benchmark._split
    models = split(args.models) or list(DEFAULT_MODELS)
    variants = split(args.variants) or list(VARIANTS)
    dtypes = split(args.dtypes) or (list(DTYPES) if device.type == "cuda" else ["fp32"])
    layouts = split(args.layouts) or (["channels_last", "nchw"] if device.type == "cuda" else ["nchw"])
    for flag, vals, allowed in (("--models", models, MODELS), ("--variants", variants, VARIANTS),
                                ("--dtypes", dtypes, DTYPES), ("--layouts", layouts, LAYOUTS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            print(f"error: {flag}: unknown {', '.join(bad)}; expected from {', '.join(allowed)}", file=sys.stderr)
            return 2
    if any(v.startswith("fused") for v in variants):
        _, why = load_swap()
        if why:
            print(f"note: fused variants skipped: {why}", file=sys.stderr)
    if "eager" not in variants and any(v != "plain" for v in variants):
        print("note: without the eager variant the loss curves are not compared", file=sys.stderr)
    benchmark.configure_compile()
    # Dropout under torch.compile draws from inductor's own RNG by default, so compiled runs would not
    # replay eager's masks and the loss curves could not be compared; aten's RNG keeps them identical.
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    meta = benchmark.metadata(device)
    out_dir = args.out or benchmark.default_out_dir(device, kind="profile")
    stamp = meta["date"].replace("-", "").replace(":", "")
    trace_dir = None if args.no_trace else os.path.join(out_dir, f"traces_{stamp}")
    runs = [(m, v, d, l) for m in models for d in dtypes for l in layouts for v in variants]
    bar = benchmark.Progress(len(runs), "profile")
    rows = []
    t0 = time.time()
    max_seconds = getattr(args, "max_seconds", None)
    stopped = None
    with benchmark.stop_on_sigterm():
        try:
            for m, v, d, l in runs:
                if max_seconds is not None and time.time() - t0 > max_seconds:
                    stopped = f"--max-seconds {max_seconds:g} reached"
                    break
                try:
                    row = run_one(m, v, d, l, args, device, trace_dir)
                except Exception as exc:
                    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
                    row = {"model": m, "variant": v, "dtype": d, "layout": l, "batch": args.batch, "res": args.res,
                           "steps": args.steps, "error": f"{type(exc).__name__}: {msg}"}
                rows.append(row)
                bar.update(1, f"{m} {v} {d} {l}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        except benchmark.StopRun as exc:
            stopped = str(exc)
    bar.close()
    if stopped:
        print(f"note: stopped early ({stopped}): {len(rows)} of {len(runs)} runs done; writing those",
              file=sys.stderr)
        stamp = "partial_" + stamp
    plain = {(r["model"], r["dtype"], r["layout"]): r.get("step_ms") for r in rows if r["variant"] == "plain"}
    for r in rows:
        base = plain.get((r["model"], r["dtype"], r["layout"]))
        r["vs_plain"] = (r["step_ms"] / base - 1) if (base and r.get("step_ms")) else None
    compare_losses(rows, {k: (args.tol if args.tol is not None else v) for k, v in TOL.items()})
    attach_deltas(rows)
    os.makedirs(out_dir, exist_ok=True)
    full = [{**meta, **{k: r.get(k) for k in ROW_FIELDS}} for r in rows]
    fields = benchmark.META_FIELDS + ROW_FIELDS
    paths = {"json": os.path.join(out_dir, f"profile_{stamp}.json"), "csv": os.path.join(out_dir, f"profile_{stamp}.csv"),
             "md": os.path.join(out_dir, f"profile_{stamp}.md")}
    with open(paths["json"], "w") as f:
        json.dump({"schema": fields, "meta": meta, "rows": full}, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        for r in full:
            wr.writerow({**r, "losses": " ".join(f"{v:.6g}" for v in (r.get("losses") or [])),
                         **{k: json.dumps(r[k]) for k in ("top_kernels", "kernel_deltas") if r.get(k) is not None}})
    table = markdown(rows, meta)
    with open(paths["md"], "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\nattention share: {'device (kernel) time' if device.type == 'cuda' else 'CPU time'} of attention ops "
          f"/ wall time of the same profiled steps; see `python -c 'import attn_kernels.profile as p; help(p)'`")
    print("wrote " + ", ".join(paths.values()) + (f", traces in {trace_dir}" if trace_dir else ""))
    alone = [r for r in rows if r.get("left_alone")]
    if alone:
        print(f"WARNING: swap() left attention blocks alone in {len(alone)} fused run(s) (see the table's notes): "
              "those timings are not of a fully fused model", file=sys.stderr)
    bad = [r for r in rows if r.get("follows_eager") is False]
    if bad:
        print(f"WARNING: {len(bad)} run(s) do not follow eager's loss curve within tolerance", file=sys.stderr)
    return 1 if bad else 0
