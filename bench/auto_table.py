"""Write the ``auto`` backend table (attn_kernels/auto_table.json) from ``attn-kernels bench`` results.

    python bench/auto_table.py bench/results/nvidia-h200/            # every bench_*.json in the folder
    python bench/auto_table.py run1.json run2.json --margin 0.05 --table attn_kernels/auto_table.json
    python bench/auto_table.py DIR --dry-run                          # print what it would write

Each device's rows replace that device's entry (other devices' entries stay). Several files of one device
are merged: per case each backend keeps its fastest median. Only ``fwd`` and ``fwd+bwd`` rows of the
providers that are backends (eager → reference, triton, cuda, cpu) count; ``compile`` is not a backend.
A case switches away from the fixed order (``_backend.AUTO_ORDER``) only when the winner is faster than
the order's first measured backend by more than ``--margin``. How ``auto`` uses the table:
attn_kernels/_autotable.py. A table written from your own run can be used without editing the package:
``ATTN_KERNELS_AUTO_TABLE=/path/to/table.json``.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_kernels import _autotable  # noqa: E402
from attn_kernels._backend import AUTO_ORDER  # noqa: E402


def bench_files(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "bench_*.json")))
        else:
            out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="bench JSON files, or folders holding bench_*.json")
    ap.add_argument("--table", default=_autotable.TABLE_PATH, help="table to update (default: the packaged one)")
    ap.add_argument("--margin", type=float, default=0.05,
                    help="leave the fixed order unless the winner is this much faster (default 0.05)")
    ap.add_argument("--capability", help="compute capability (e.g. 9.0) for CUDA bench files that lack it")
    ap.add_argument("--dry-run", action="store_true", help="print the entries, write nothing")
    args = ap.parse_args(argv)

    by_device = collections.defaultdict(lambda: {"rows": [], "meta": None, "sources": []})
    for path in bench_files(args.paths):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "rows" not in data or "meta" not in data:
            print(f"skip {path}: not an attn-kernels bench JSON file", file=sys.stderr)
            continue
        meta = dict(data["meta"])
        if meta.get("device_type") == "cuda" and not meta.get("capability"):
            if not args.capability:
                print(f"skip {path}: a CUDA run without the GPU's compute capability (bench files before "
                      "2026-12-03); pass --capability", file=sys.stderr)
                continue
            meta["capability"] = args.capability
        key = json.dumps(_autotable.entry_device(meta), sort_keys=True)  # one entry per device, as matched
        group = by_device[key]
        if group["meta"] is None or str(meta.get("date")) > str(group["meta"].get("date")):
            group["meta"] = meta  # the newest run's versions and date describe the entry
        group["rows"] += data["rows"]
        group["sources"].append(os.path.basename(path))
    if not by_device:
        print("no bench JSON files found", file=sys.stderr)
        return 1

    table = {"schema": _autotable.SCHEMA, "entries": []}
    if os.path.isfile(args.table):
        with open(args.table) as f:
            table = json.load(f)
    for group in by_device.values():
        skipped = []
        entry = _autotable.build_entry(group["rows"], group["meta"], group["sources"], args.margin, skipped)
        if skipped:
            print(f"{len(skipped)} row(s) left out, e.g. {skipped[0]}", file=sys.stderr)
        table = _autotable.merge_entry(table, entry)
        order = AUTO_ORDER.get(entry["device"]["type"], ("reference",))
        wins = collections.Counter(r["best"] for r in entry["rows"])
        overrides = [r for r in entry["rows"] if r["best"] != next(b for b in order if b in r["ms"])]
        print(f"{_autotable._entry_label(entry)}: {len(entry['rows'])} cases from {len(group['sources'])} file(s); "
              f"best: {dict(wins)}; {len(overrides)} override the fixed order {order}")
        for r in overrides:
            times = ", ".join(f"{b} {t:.4g} ms" for b, t in r["ms"].items())
            print(f"  {r['variant']} {r['n']}x{r['c']}x{r['hw']} {r['dtype']} {r['layout']} {r['mode']}: "
                  f"{r['best']} ({times})")
    if args.dry_run:
        return 0
    with open(args.table, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
