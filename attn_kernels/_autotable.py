"""The measured table behind ``auto``: which backend was fastest, per device, op, dtype, layout and shape.

``auto`` first looks here; where the table has nothing for the call it falls back to the fixed order of
``_backend.AUTO_ORDER``. The table is data (``attn_kernels/auto_table.json``), written by
``bench/auto_table.py`` from the JSON files of ``attn-kernels bench`` runs — never edited by hand, so
every choice it makes traces back to a measured row (each entry names its source files, date, versions).

Lookup for one call (x of shape (N, C, *spatial)):
- the device entry: on CUDA the GPU's name (``nvidia-h200``), else one measured on a GPU of the same compute
  capability (an H100 uses an H200's table); on the CPU the same CPU model *and* thread count (a table
  measured on another CPU, or with other threads, says nothing about this one). No entry: fixed order.
- the rows of that entry for the op, dtype and layout (``nchw`` or ``channels_last``; other strides count
  as ``nchw``), and the mode: ``fwd+bwd`` when autograd will record the call (grad mode on and an input
  requires grad), ``fwd`` otherwise;
- the nearest measured shape, by |log2| distances of N·C·HW (bytes moved), HW and C, plus a penalty for a
  row of another form of the op (``se_silu``/``ese`` for ``se``, ``ceca`` for ``eca``); farther than
  ``MAX_DISTANCE`` (e.g. 8× the bytes): no choice, fixed order;
- that row's winner, if it is available here (else the fixed order).

A row's winner is chosen when the table is written: the fastest backend, unless the fixed order's first
measured backend is within ``margin`` (default 5 %) of it — a noisy near-tie never overrides the order.

``ATTN_KERNELS_AUTO_TABLE``: ``0`` disables the table (fixed order only); a path reads that table instead of
the packaged one (e.g. one written from your own ``attn-kernels bench`` run: see README). Read on the first
call; ``reset()`` makes the next call read it again; a malformed table warns once and leaves the fixed order.
Decisions are cached per call signature (op, form, device, threads, dtype, shape, strides, mode), so a
repeated call costs one dict lookup after the key.
While ``torch.compile`` traces, ``auto`` takes the fixed order: a lookup keyed on the shape would make dynamo
guard on (specialise) every shape, defeating dynamic shapes, and recompile on every new eager decision.

A CPU is identified by the "model name" of /proc/cpuinfo (in a VM that can be generic, e.g. "AMD EPYC" for
several generations) and the thread count; a GPU by its name and compute capability.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Dict, Optional, Tuple

import torch

__all__ = ["TABLE_PATH", "SCHEMA", "MAX_DISTANCE", "VARIANT_PENALTY", "slug", "cpu_model", "device_key", "load",
           "reset", "active", "device_entry", "layout_of", "shape_distance", "choose", "describe", "entry_device",
           "build_entry", "merge_entry"]

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_table.json")
MAX_DISTANCE = 3.0  # log2 units: 8x the bytes, or a mix of bytes / spatial / channel differences
VARIANT_PENALTY = 1.0  # log2 units added for a row of another form of the op (se_silu for se, ceca for eca)
SCHEMA = 1

_table: Optional[dict] = None
_table_src: Optional[str] = None
_entries: Dict[tuple, Optional[dict]] = {}  # (device type, index, CPU threads) -> matching entry or None
_choices: Dict[tuple, Optional[str]] = {}
_active: Dict[str, bool] = {}  # device type -> the table has an entry of that type


def slug(text: str) -> str:
    """File-name form of a device name: ``NVIDIA H200`` -> ``nvidia-h200`` (bench/results/<slug>/ too)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def device_key(device: torch.device) -> dict:
    """What identifies a device for the table: ``name`` (the slug of the GPU or CPU model), and
    ``capability`` (CUDA) or ``threads`` (CPU). The bench records the same fields."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return {"type": "cuda", "name": slug(torch.cuda.get_device_name(idx)), "capability": f"{major}.{minor}"}
    return {"type": device.type, "name": slug(f"cpu {cpu_model()}") if device.type == "cpu" else device.type,
            "threads": torch.get_num_threads()}


def _source() -> Optional[str]:
    env = os.environ.get("ATTN_KERNELS_AUTO_TABLE", "")
    if env == "0":
        return None
    return env or TABLE_PATH


def load() -> dict:
    """The table (``{"schema": 1, "entries": [...]}``); empty when disabled or absent."""
    global _table, _table_src
    src = _source()
    if _table is None or src != _table_src:
        _entries.clear()
        _choices.clear()
        _active.clear()
        table = {"schema": SCHEMA, "entries": []}
        try:
            if src is not None and os.path.isfile(src):
                with open(src) as f:
                    try:
                        table = json.load(f)
                    except ValueError as exc:
                        raise ValueError(f"auto table {src} is not valid JSON: {exc}") from None
                if not isinstance(table, dict) or table.get("schema") != SCHEMA:
                    raise ValueError(f"{src}: not an auto table of schema {SCHEMA} (rewrite it with "
                                     "bench/auto_table.py)")
                _validate(table, src)
            elif src is not None and src != TABLE_PATH:
                raise FileNotFoundError(f"ATTN_KERNELS_AUTO_TABLE={src}: no such file")
        except (OSError, ValueError) as exc:  # raised once; later calls see an empty table saying why
            _table, _table_src = {"schema": SCHEMA, "entries": [], "error": str(exc)}, src
            raise
        _table, _table_src = table, src
    return _table


_ROW_KEYS = {"op": str, "n": int, "c": int, "hw": int, "dtype": str, "layout": str, "mode": str, "best": str}


def _validate(table: dict, src: str) -> None:
    """ValueError naming the first malformed entry or row (a bad table must not break op calls later)."""
    entries = table.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{src}: 'entries' must be a list")
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("device"), dict) and isinstance(e["device"].get("type"), str)
                and isinstance(e.get("rows"), list)):
            raise ValueError(f"{src}: entry {i} needs a device {{type, name, ...}} and a list of rows")
        for j, r in enumerate(e["rows"]):
            if not (isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in _ROW_KEYS.items())):
                raise ValueError(f"{src}: entry {i} row {j} needs {', '.join(_ROW_KEYS)} ({r!r:.120})")


def active(device_type: str) -> bool:
    """Whether the table has an entry for any device of this type (cheap: the per-call gate of ``auto``)."""
    flag = _active.get(device_type)
    if flag is None:
        table = load()
        flag = _active[device_type] = any(e["device"]["type"] == device_type for e in table["entries"])
    return flag


def reset() -> None:
    """Forget the loaded table and every cached decision (after changing ATTN_KERNELS_AUTO_TABLE)."""
    global _table, _table_src
    _table = _table_src = None
    _entries.clear()
    _choices.clear()
    _active.clear()


def _match(entry: dict, key: dict) -> int:
    """2: this device; 1: a GPU of the same compute capability; 0: no."""
    dev = entry.get("device", {})
    if dev.get("type") != key["type"]:
        return 0
    if key["type"] == "cuda":
        if dev.get("name") == key["name"]:
            return 2
        return 1 if dev.get("capability") == key["capability"] else 0
    return 2 if dev.get("name") == key["name"] and dev.get("threads") == key.get("threads") else 0


def device_entry(device: torch.device) -> Optional[dict]:
    """The table entry used for ``device`` (this device's own, else the same capability's), or None."""
    table = load()
    idx = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    cache_key = (device.type, idx, torch.get_num_threads() if device.type == "cpu" else 0)
    if cache_key not in _entries:
        key = device_key(device)
        best, best_score = None, 0
        for entry in table.get("entries", []):
            score = _match(entry, key)
            if score > best_score:
                best, best_score = entry, score
        _entries[cache_key] = best
    return _entries[cache_key]


def layout_of(x: torch.Tensor) -> str:
    """``channels_last`` when the channels are the unit-stride axis of a map with C > 1 and HW > 1 (what the
    kernels see as channels-last, any spatial rank), else ``nchw``."""
    if x.dim() >= 3 and x.stride(1) == 1 and x.shape[1] > 1 and math.prod(x.shape[2:]) > 1:
        return "channels_last"
    return "nchw"


def shape_distance(a: Tuple[int, int, int], b: Tuple[int, int, int]) -> float:
    """log2 distance between (N, C, HW) shapes: the bytes moved weigh most, then the map size and C."""
    (na, ca, ha), (nb, cb, hb) = a, b
    lg = lambda v: math.log2(max(v, 1))  # noqa: E731
    return (abs(lg(na * ca * ha) - lg(nb * cb * hb)) + 0.5 * abs(lg(ha) - lg(hb)) + 0.25 * abs(lg(ca) - lg(cb)))


def choose(op: str, x: torch.Tensor, training: bool, variant: Optional[str] = None,
           device_type: Optional[str] = None) -> Optional[str]:
    """The measured winner for this call, or None (no entry, no row near enough). ``variant``: the bench's
    name for this form of the op (``se_silu``, ``ese``, ``ceca``, ...; default the op's own name); rows of
    another variant count ``VARIANT_PENALTY`` farther. ``device_type``: x.device.type, if the caller has it
    (the property costs ~0.5 us). Eager calls only (see the module docstring on torch.compile).
    Host cost, measured on the 2-core CPU VM (timeit): ~2 us per call where the table has an entry for this
    kind of device (key + lookup; ~4-5 us for all of ``_backend.resolve_for``), ~0.1 us where it has none."""
    device = x.device
    if not active(device_type or device.type):
        return None
    # the key from what tensors give cheaply (~1 us): a repeated call is one dict lookup
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = (op, variant, device, threads, x.dtype, x.shape, x.stride(), training)
    choice = _choices.get(key, _MISSING)
    if choice is _MISSING:
        choice = _choices[key] = _choose_uncached(op, x, training, variant or op)
    return choice


_MISSING = object()


def _choose_uncached(op: str, x: torch.Tensor, training: bool, variant: str) -> Optional[str]:
    shape = x.shape
    if x.dim() < 2 or not all(isinstance(s, int) for s in shape):
        return None  # symbolic shapes
    n, c, hw = shape[0], shape[1], math.prod(shape[2:])
    dtype = str(x.dtype).replace("torch.", "")
    layout = layout_of(x)
    mode = "fwd+bwd" if training else "fwd"
    entry = device_entry(x.device)
    choice = None
    if entry is not None:
        best_d = MAX_DISTANCE
        for row in entry.get("rows", []):
            if row["op"] != op or row["dtype"] != dtype or row["layout"] != layout or row["mode"] != mode:
                continue
            d = shape_distance((n, c, hw), (row["n"], row["c"], row["hw"]))
            d += VARIANT_PENALTY * (row.get("variant", op) != variant)
            if d <= best_d:
                best_d, choice = d, row["best"]
    return choice


def describe(device: torch.device) -> str:
    """One line for ``attn-kernels info``: which table entry ``auto`` uses on this device."""
    src = _source()
    if src is None:
        return "disabled (ATTN_KERNELS_AUTO_TABLE=0): fixed order"
    try:
        entry = device_entry(device)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc}): fixed order"
    error = load().get("error")
    if error:
        return f"unreadable ({error}): fixed order"
    where = "packaged table" if src == TABLE_PATH else src
    if entry is None:
        have = ", ".join(sorted({_entry_label(e) for e in load().get("entries", [])})) or "none"
        return f"no measured entry for this device in the {where} (entries: {have}): fixed order"
    return (f"{_entry_label(entry)}, {len(entry.get('rows', []))} rows, measured {entry.get('date', '?')} "
            f"({where})")


def _entry_label(entry: dict) -> str:
    dev = entry.get("device", {})
    extra = dev.get("capability") or (f"{dev.get('threads')} threads" if dev.get("threads") else "")
    return f"{dev.get('name', '?')} ({extra})" if extra else dev.get("name", "?")




# ----------------------------------------------------------------------------------------------
# Writing the table (bench/auto_table.py) from the rows of `attn-kernels bench` JSON files
# ----------------------------------------------------------------------------------------------
PROVIDER_BACKEND = {"eager": "reference", "triton": "triton", "cuda": "cuda", "cpu": "cpu"}
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def entry_device(meta: dict) -> dict:
    """The device identity of a bench run's metadata, as ``device_key`` gives it for a live device."""
    device = {"type": meta["device_type"], "name": slug(meta["device"])}
    if meta["device_type"] == "cuda":
        device["capability"] = meta.get("capability")
    else:
        device["threads"] = meta.get("threads")
    return device


def build_entry(rows: list, meta: dict, sources: list, margin: float = 0.05, skipped: Optional[list] = None) -> dict:
    """One device's table entry from bench rows (all of one device; several runs are merged: each
    backend keeps its fastest median per case). Rows in ``bwd`` mode, with errors, or of providers that are
    no backend (``compile*``) are left out. A case's ``best`` is its fastest backend, unless the fixed
    order's first measured backend is within ``margin`` of it."""
    from ._backend import AUTO_ORDER, _IMPLS
    from .benchmark import OPS

    dev_type = meta["device_type"]
    order = AUTO_ORDER.get(dev_type, ("reference",))
    cases: Dict[tuple, Dict[str, float]] = {}
    for r in rows:
        backend = PROVIDER_BACKEND.get(r.get("provider"))
        ms = r.get("median_ms")
        if backend is None or r.get("mode") not in ("fwd", "fwd+bwd") or r.get("error") or not ms:
            continue
        try:
            op = OPS[r["op"]].impl_op
            key = (op, r["op"], int(r["n"]), int(r["c"]), int(r["h"]) * int(r["w"]),
                   DTYPE_NAMES.get(r["dtype"], r["dtype"]), r["layout"], r["mode"])
        except (KeyError, TypeError, ValueError) as exc:  # an op renamed since, a row without its shape, ...
            if skipped is not None:
                skipped.append(f"{r.get('op')} {r.get('provider')}: {type(exc).__name__} {exc}")
            continue
        if backend not in _IMPLS[op]:
            continue
        times = cases.setdefault(key, {})
        times[backend] = min(float(ms), times.get(backend, math.inf))
    out_rows = []
    for (op, variant, n, c, hw, dtype, layout, mode), times in sorted(cases.items()):
        if len(times) < 2:
            continue  # nothing to choose between
        fastest = min(times, key=times.get)
        default = next((b for b in order if b in times), fastest)
        best = default if times[default] <= times[fastest] * (1.0 + margin) else fastest
        out_rows.append({"op": op, "variant": variant, "n": n, "c": c, "hw": hw, "dtype": dtype, "layout": layout,
                         "mode": mode, "best": best, "ms": {b: round(t, 5) for b, t in sorted(times.items())}})
    return {"device": entry_device(meta), "date": meta.get("date"), "margin": margin,
            "versions": {k: meta.get(k) for k in ("torch", "triton", "cuda", "attn_kernels", "commit")},
            "sources": sorted(sources), "rows": out_rows}


def merge_entry(table: dict, entry: dict) -> dict:
    """``table`` with ``entry`` replacing the entry of the same device (type, name, capability / threads)."""
    same = lambda e: e.get("device") == entry["device"]  # noqa: E731
    entries = [e for e in table.get("entries", []) if not same(e)] + [entry]
    entries.sort(key=lambda e: (e["device"]["type"], e["device"]["name"], str(e["device"])))
    return {"schema": SCHEMA, "about": ("auto backend table, written by bench/auto_table.py from attn-kernels "
                                        "bench runs; see attn_kernels/_autotable.py"), "entries": entries}
