"""The SE-vs-plain demo behind ``attn-kernels demo``: ``CNN`` vs ``CNN_SE`` vs fused ``CNN_SE``.

Data, offline only: scikit-learn's bundled digits (UCI optical digits, 1,797 8×8 images, read from the
file inside the sklearn package, no download) when scikit-learn is installed (the ``demo`` and
``test`` extras); otherwise — it is not a required dependency — a SYNTHETIC digit set: the glyphs 0–9
drawn with the fonts Pillow and the system carry, with random size, offset, rotation, stroke and noise
(real fonts, but not real handwriting; the output says which data set was used). Images are upsampled
to 32×32, normalised, split 80/20 with a fixed seed.

Training: Adam (lr 1e-3) + ReduceLROnPlateau on the validation loss (factor 0.5, patience 1), batch 64,
cross-entropy, the same seed for every model so data order and dropout masks agree. The fused model is
``CNN_SE`` with its ``SEBlock``s replaced by the fused modules — through ``attn_kernels.swap.swap`` when
that exists, else ``FusedSE`` built with the same parameters — starting from the eager ``CNN_SE``'s
weights. "Fused learns the same thing": the same computation — one training step's loss and every
parameter gradient, from the same weights on the same batch with the same dropout masks, within ``--tol``
(default 1e-4, relative to the loss and to the largest gradient) — and the same outcome — final
validation accuracy within 2 points. Per-batch losses during training are reported, not judged: ulp-level
differences grow exponentially through training. Measured once on the real digits (CPU, float32, default
settings): two *eager* ``CNN_SE`` runs that differ only in memory format (NCHW vs channels_last
convolutions) drift from 4e-7 at batch 0 to 1.2e-2 within the first 10 batches, fused vs eager to 3.4e-3,
so a per-batch-loss window says nothing about the kernels.

Outputs in ``--out``: ``demo_epochs.csv`` (model, epoch, train/val loss and accuracy, lr, seconds),
``demo_batches.csv`` (model, epoch, batch, loss, accuracy), ``demo_summary.json``, and with matplotlib:
``demo_curves.png``, ``demo_feature_maps.png`` (first block before and after SE, one colour scale per
channel), ``demo_attention.png`` (feature energy of the last block over input images, plain mean and
SE-gate-weighted, and the class-specific part of the mean SE gate per class).
"""
from __future__ import annotations

import copy
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import benchmark
from .reference import CNN, CNN_SE, SEBlock, se_excitation


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def load_sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, (1797, 8, 8) in [0, 1] and labels; ImportError without scikit-learn.

    ``load_digits`` reads ``sklearn/datasets/data/digits.csv.gz`` from the installed package: no network
    (checked: it loads inside ``unshare -n``, a process with no network interface)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _fonts(sizes) -> List:
    from PIL import ImageFont

    fonts = []
    paths = []
    for root in ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts"):
        if os.path.isdir(root):
            for dirpath, _, files in os.walk(root):
                paths += [os.path.join(dirpath, f) for f in files if f.lower().endswith((".ttf", ".otf"))]
    paths = sorted(p for p in paths if "math" not in p.lower())[:12]
    for size in sizes:
        for p in paths:
            try:
                fonts.append(ImageFont.truetype(p, size))
            except Exception:
                pass
        try:
            fonts.append(ImageFont.load_default(size=size))  # Pillow >= 10.1 (FreeType): a scalable font
        except TypeError:
            pass
    if not fonts:
        fonts.append(ImageFont.load_default())
    return fonts


def synthetic_digits(n: int, seed: int = 0, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Digits 0–9 rendered from fonts with random size/offset/rotation/stroke/noise, (n, size, size) in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.RandomState(seed)
    fonts = _fonts((18, 22, 26))
    images = np.zeros((n, size, size), np.float32)
    labels = rng.randint(0, 10, n).astype(np.int64)
    for i in range(n):
        img = Image.new("L", (size * 2, size * 2), 0)
        draw = ImageDraw.Draw(img)
        font = fonts[rng.randint(len(fonts))]
        stroke = int(rng.randint(0, 2))
        draw.text((size + rng.uniform(-3, 3), size + rng.uniform(-3, 3)), str(labels[i]), fill=255, font=font,
                  anchor="mm", stroke_width=stroke, stroke_fill=255)
        img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
        img = img.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))
        if rng.rand() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        a = np.asarray(img, np.float32) / 255.0
        a = np.clip(a + rng.normal(0, 0.1, a.shape).astype(np.float32), 0, 1)
        images[i] = a
    return images, labels


def load_data(dataset: str, n_synthetic: int, seed: int, limit: Optional[int] = None):
    """(train_x, train_y, val_x, val_y, description); x (N, 1, 32, 32) normalised."""
    data, why_synthetic = None, "asked for with --dataset synthetic"
    if dataset in ("auto", "digits"):
        try:
            data = load_sklearn_digits()
        except ImportError as exc:
            if dataset == "digits":
                raise RuntimeError("--dataset digits needs scikit-learn (its digits ship inside the package; "
                                   "pip install scikit-learn, or the package's demo extra)") from exc
            why_synthetic = (f"scikit-learn is not importable ({exc}); pip install scikit-learn (or the "
                             "package's demo extra) for the real digits")
    if data is not None:
        x, y = data
        desc = (f"scikit-learn digits (UCI optical digits, {len(y)} real 8x8 images, bundled; "
                "upsampled to 32x32)")
    else:
        x, y = synthetic_digits(n_synthetic, seed)
        desc = (f"SYNTHETIC digits ({n_synthetic} glyphs 0-9 rendered from installed fonts with random size, "
                f"offset, rotation, blur and noise): {why_synthetic}")
    xt = torch.from_numpy(x).unsqueeze(1)
    if xt.shape[-1] != 32:
        xt = F.interpolate(xt, size=(32, 32), mode="bilinear", align_corners=False)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(yt), generator=g)
    if limit:
        perm = perm[:limit]
    xt, yt = xt[perm], yt[perm]
    xt = (xt - xt.mean()) / xt.std().clamp_min(1e-6)
    n_val = max(1, len(yt) // 5)
    return xt[n_val:], yt[n_val:], xt[:n_val], yt[:n_val], desc


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def fuse(model: nn.Module) -> Tuple[nn.Module, str]:
    """The model with its SE blocks on the fused kernels: via swap() when available, else FusedSE."""
    model = copy.deepcopy(model)
    try:
        from .swap import swap

        out = swap(model)
        model = out if isinstance(out, nn.Module) else model
        how = "attn_kernels.swap.swap"
    except ImportError:
        from .modules import FusedSE

        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is SEBlock:
                    f = FusedSE(child.channels, rd_channels=child.rd_channels, act=child.act, gate=child.gate)
                    f.load_state_dict(child.state_dict())
                    setattr(parent, name, f.to(next(child.parameters()).device))
        how = "FusedSE (attn_kernels.swap not available)"
    n = sum(1 for m in model.modules() if type(m).__name__.startswith(("Fused", "Swapped")))
    return model, f"{how}: {n} fused modules"


def train(model: nn.Module, name: str, data, args, device, batch_log: List[dict], epoch_log: List[dict]):
    xtr, ytr, xva, yva = (t.to(device) for t in data)
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(ytr), generator=g).to(device)
        tot_loss = tot_correct = 0.0
        for b, start in enumerate(range(0, len(ytr), args.batch)):
            idx = perm[start:start + args.batch]
            x, y = xtr[idx], ytr[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = (out.argmax(1) == y).float().mean().item()
            batch_log.append({"model": name, "epoch": epoch, "batch": b, "loss": loss.item(), "acc": acc})
            tot_loss += loss.item() * len(y)
            tot_correct += acc * len(y)
        model.eval()
        with torch.no_grad():
            out = torch.cat([model(xva[i:i + 256]) for i in range(0, len(yva), 256)])
            vloss = F.cross_entropy(out, yva).item()
            vacc = (out.argmax(1) == yva).float().mean().item()
        sched.step(vloss)
        epoch_log.append({"model": name, "epoch": epoch, "train_loss": tot_loss / len(ytr),
                          "train_acc": tot_correct / len(ytr), "val_loss": vloss, "val_acc": vacc,
                          "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0})
        print(f"  {name:9s} epoch {epoch}: train loss {tot_loss / len(ytr):.4f} acc {tot_correct / len(ytr):.3f} · "
              f"val loss {vloss:.4f} acc {vacc:.3f} · lr {opt.param_groups[0]['lr']:.1e} · {time.time() - t0:.1f}s")


def first_step(eager: nn.Module, fused: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """One training-mode forward + backward of copies of both models (their BatchNorm statistics stay
    untouched) on the same batch, from the same RNG state (same dropout masks): the loss's relative
    difference and the largest parameter-gradient difference. Before any optimizer step, so nothing has
    had time to amplify rounding: this is the "same computation" test."""
    losses, grads = [], []
    for model in (eager, fused):
        model = copy.deepcopy(model).train()
        torch.manual_seed(seed)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    if set(grads[0]) != set(grads[1]):
        raise AssertionError(f"fused and eager differ in which parameters get a gradient: "
                             f"{sorted(set(grads[0]) ^ set(grads[1]))[:5]}")
    return {"loss_rel_diff": abs(losses[0] - losses[1]) / max(abs(losses[0]), 1e-6),
            "grad_max_abs_err": max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]),
            "grad_max_abs": max(g.abs().max().item() for g in grads[0].values())}


def compare(batch_log, epoch_log, a: str, b: str, tol: float, step: dict, first_batches: int = 10) -> dict:
    """Same computation: ``step`` (``first_step``) within ``tol``, the loss relatively, the gradients
    relative to the largest gradient; same outcome: final validation accuracy within 2 points. The
    per-batch loss differences of the first ``first_batches`` batches and of all are reported, not judged
    (rounding differences grow exponentially through training, as between two eager runs)."""
    la = [r["loss"] for r in batch_log if r["model"] == a][:first_batches]
    lb = [r["loss"] for r in batch_log if r["model"] == b][:first_batches]
    first = max((abs(x - y) / max(abs(x), 1e-6) for x, y in zip(la, lb)), default=None)
    all_a = [r["loss"] for r in batch_log if r["model"] == a]
    all_b = [r["loss"] for r in batch_log if r["model"] == b]
    overall = max((abs(x - y) / max(abs(x), 1e-6) for x, y in zip(all_a, all_b)), default=None)
    va = [r["val_acc"] for r in epoch_log if r["model"] == a][-1]
    vb = [r["val_acc"] for r in epoch_log if r["model"] == b][-1]
    same_step = step["loss_rel_diff"] <= tol and step["grad_max_abs_err"] <= tol * max(step["grad_max_abs"], 1e-6)
    ok = same_step and abs(va - vb) <= 0.02
    return {"first_step": step, "first_step_same": same_step,
            "first_batches": len(la), "first_batches_max_rel_loss_diff": first,
            "all_batches_max_rel_loss_diff": overall, "final_val_acc": {a: va, b: vb}, "same_learning": ok,
            "tol": tol}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _features(model: nn.Module, x: torch.Tensor):
    """Per conv block: (features before attention, after attention, SE gate or None)."""
    out = []
    h = x
    for block in model.features:
        conv, bn, relu, attn, pool = block
        f = relu(bn(conv(h)))
        gate = None
        if hasattr(attn, "se_params"):
            gate = se_excitation(f.mean((2, 3)), *attn.se_params(), act=attn.act, gate=attn.gate)
        a = attn(f)
        out.append((f, a, gate))
        h = pool(a)
    return out


def write_figures(models: Dict[str, nn.Module], xva, yva, out_dir: str, epoch_log, batch_log, device) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        print(f"PNG figures skipped: matplotlib is not importable ({type(exc).__name__}); "
              "`pip install matplotlib` to get them (the CSVs have every number)", file=sys.stderr)
        return []
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in models:
        ep = [r for r in epoch_log if r["model"] == name]
        e = [r["epoch"] for r in ep]
        axes[0].plot(e, [r["train_loss"] for r in ep], "--", label=f"{name} train")
        axes[0].plot(e, [r["val_loss"] for r in ep], label=f"{name} val")
        axes[1].plot(e, [r["val_acc"] for r in ep], label=name)
        axes[2].plot([r["loss"] for r in batch_log if r["model"] == name], lw=0.6, label=name)
    for ax, t in zip(axes, ("loss per epoch", "validation accuracy", "loss per batch")):
        ax.set_title(t)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "demo_curves.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    model = models.get("cnn_se")
    if model is None:
        return paths
    model.eval()
    x = xva[:6].to(device)
    with torch.no_grad():
        feats = _features(model, x)
    f0, a0, _ = feats[0]
    k = min(16, f0.shape[1])
    fig, axes = plt.subplots(3, k, figsize=(k * 1.0, 3.4))
    for j in range(k):
        axes[0, j].imshow(x[0, 0].cpu(), cmap="gray") if j == 0 else axes[0, j].axis("off")
        vmax = float(f0[0, j].max()) or 1.0  # one colour scale per channel: the SE scaling shows as dimming
        axes[1, j].imshow(f0[0, j].cpu(), cmap="viridis", vmin=0, vmax=vmax)
        axes[2, j].imshow(a0[0, j].cpu(), cmap="viridis", vmin=0, vmax=vmax)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[1, 0].set_ylabel("before SE", fontsize=7)
    axes[2, 0].set_ylabel("after SE", fontsize=7)
    fig.suptitle("CNN_SE block 1: input, feature maps before and after SE (first 16 channels)", fontsize=9)
    paths.append(os.path.join(out_dir, "demo_feature_maps.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    with torch.no_grad():
        xs = xva[:512].to(device)
        last = _features(model, xs)[-1]
    f, _, gate = last
    energy_plain = f.abs().mean(1)  # (N, H, W)
    energy_se = (f.abs() * gate[:, :, None, None]).sum(1) / gate.sum(1)[:, None, None]
    fig, axes = plt.subplots(3, 7, figsize=(14, 6))
    for j in range(6):
        img = xs[j, 0].cpu()
        for row, (m, t) in enumerate(((None, "input"), (energy_plain, "mean |feature|"), (energy_se, "SE-weighted"))):
            ax = axes[row, j]
            ax.imshow(img, cmap="gray")
            if m is not None:
                heat = F.interpolate(m[j][None, None], size=img.shape, mode="bilinear", align_corners=False)[0, 0]
                ax.imshow(heat.cpu(), cmap="jet", alpha=0.5)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(t, fontsize=8)
        axes[0, j].set_title(f"label {int(yva[j])}", fontsize=8)
    ys = yva[:512].to(device)
    per_class = torch.stack([gate[ys == c].mean(0) if (ys == c).any() else torch.zeros_like(gate[0])
                             for c in range(10)])
    gs = axes[0, 6].get_gridspec()
    for ax in axes[:, 6]:
        ax.remove()
    axc = fig.add_subplot(gs[:, 6])
    dev = per_class - per_class.mean(0, keepdim=True)  # class-specific part of the excitation
    lim = float(dev.abs().max()) or 1.0
    axc.imshow(dev.cpu(), aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
    axc.set_xlabel("channel (block 3)")
    axc.set_ylabel("class")
    axc.set_title(f"SE gate per class minus its mean\n(±{lim:.2f})", fontsize=8)
    fig.suptitle("CNN_SE last block: feature energy over the input, plain mean vs SE-weighted", fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "demo_attention.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def add_arguments(p) -> None:
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="auto", choices=["auto", "digits", "synthetic"],
                   help="digits = scikit-learn's bundled digits (needs scikit-learn); auto falls back to synthetic")
    p.add_argument("--n-synthetic", type=int, default=2500, help="size of the synthetic set")
    p.add_argument("--limit", type=int, default=None, help="use only this many samples (smoke runs)")
    p.add_argument("--models", default="cnn,cnn_se,cnn_se_fused", help="comma list of: cnn, cnn_se, cnn_se_fused")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="fused vs eager on one training step from the same weights: relative tolerance of the "
                        "loss and of every parameter gradient (relative to the largest)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", help="output directory (default bench/results/<device>/demo in a checkout)")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = benchmark._split(args.models) or ["cnn", "cnn_se", "cnn_se_fused"]
    bad = [n for n in names if n not in ("cnn", "cnn_se", "cnn_se_fused")]
    if bad:
        print(f"error: --models: unknown {', '.join(bad)}", file=sys.stderr)
        return 2
    t_start = time.time()
    xtr, ytr, xva, yva, desc = load_data(args.dataset, args.n_synthetic, args.seed, args.limit)
    print(f"data: {desc}\n  {len(ytr)} train / {len(yva)} validation images, 1x32x32, 10 classes")
    out_dir = args.out or os.path.join(benchmark.default_out_dir(device, kind="demo"), "demo")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    base = {"cnn": CNN(in_channels=1, num_classes=10)}
    torch.manual_seed(args.seed)
    base["cnn_se"] = CNN_SE(in_channels=1, num_classes=10)
    models, notes = {}, {}
    for n in names:
        if n == "cnn_se_fused":
            models[n], notes[n] = fuse(base["cnn_se"])
            print(f"fused model: {notes[n]}")
        else:
            models[n] = copy.deepcopy(base[n])
    step = None
    if "cnn_se" in models and "cnn_se_fused" in models:
        step = first_step(models["cnn_se"].to(device), models["cnn_se_fused"].to(device),
                          xtr[:args.batch].to(device), ytr[:args.batch].to(device), args.seed)
    batch_log, epoch_log = [], []
    for n, m in models.items():
        m.to(device)
        params = sum(p.numel() for p in m.parameters())
        print(f"training {n} ({params / 1e6:.2f} M parameters)")
        train(m, n, (xtr, ytr, xva, yva), args, device, batch_log, epoch_log)
    summary = {"dataset": desc, "device": benchmark.device_name(device), "torch": torch.__version__,
               "epochs": args.epochs, "batch": args.batch, "seed": args.seed, "fused_via": notes.get("cnn_se_fused"),
               "final": {n: [r for r in epoch_log if r["model"] == n][-1] for n in models}}
    if "cnn_se" in models and "cnn_se_fused" in models:
        summary["fused_vs_eager"] = compare(batch_log, epoch_log, "cnn_se", "cnn_se_fused", args.tol, step)
    for fname, rows in (("demo_epochs.csv", epoch_log), ("demo_batches.csv", batch_log)):
        with open(os.path.join(out_dir, fname), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    pngs = write_figures(models, xva, yva, out_dir, epoch_log, batch_log, device)
    summary["figures"] = pngs
    with open(os.path.join(out_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n| model | val acc | val loss | train acc |\n|---|---|---|---|")
    for n, r in summary["final"].items():
        print(f"| {n} | {r['val_acc']:.3f} | {r['val_loss']:.4f} | {r['train_acc']:.3f} |")
    cmp = summary.get("fused_vs_eager")
    if cmp:
        fa = cmp["final_val_acc"]
        st = cmp["first_step"]
        print(f"\nfused vs eager CNN_SE: one training step from the same weights: loss rel diff "
              f"{st['loss_rel_diff']:.2e}, parameter grads max abs err {st['grad_max_abs_err']:.2e} "
              f"(|grad| max {st['grad_max_abs']:.3g}) (tol {cmp['tol']:g}); final val acc "
              f"{fa['cnn_se']:.3f} vs {fa['cnn_se_fused']:.3f} (within 0.02 required); per-batch loss max rel "
              f"diff over training, first {cmp['first_batches']} batches {cmp['first_batches_max_rel_loss_diff']:.2e}, "
              f"all {cmp['all_batches_max_rel_loss_diff']:.2e} (rounding differences amplified by training, "
              f"reported only); same learning: {'yes' if cmp['same_learning'] else 'NO'}")
    print(f"data: {desc.split(':')[0]}")
    print(f"wrote {out_dir}/demo_epochs.csv, demo_batches.csv, demo_summary.json"
          + (", " + ", ".join(os.path.basename(p) for p in pngs) if pngs else "") + f" in {time.time() - t_start:.0f}s")
    return 0 if not cmp or cmp["same_learning"] else 1
