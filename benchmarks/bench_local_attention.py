"""Local 2D self-attention against full causal attention: time and peak memory of forward + backward.

    python benchmarks/bench_local_attention.py [--sizes 32 64 128] [--repeats 5] [--threads 1]

One attention layer (q/k/v/output projections included), d_model 256, 4 heads, batch 1,
fp32, on square greyscale images of 32x32, 64x64 and 128x128 pixels (1,024, 4,096 and
16,384 positions in raster order):

* **local 2D** (``zoo.nn.local.LocalSelfAttention``): query blocks of 8x16
  pixels, memory 8 rows above and 8 columns either side (128 queries, 512 keys a block);
* **full causal** (``zoo.nn.attention.MultiHeadAttention(causal=True)``): SDPA with
  ``is_causal=True`` over all positions.

Time: the median of ``--repeats`` forward + backward passes after one warm-up pass, as
CPU time of the process (``time.process_time``: with one thread, what the pass itself
cost, unchanged when other jobs share the cores, as they did here) and as wall time. The
goal is judged on CPU time.
Memory: each case runs in a fresh Python process, which reports the growth of its peak
resident set (``ru_maxrss``) from just before the first pass to the end: everything the
forward and backward passes allocate, torch tensors included (tracemalloc does not see
them). The resident set also holds the allocator's cached pages, so it is an upper bound
of the tensors alive at the peak; the inputs, weights and index tables are allocated
before the baseline and not counted.

Prints a Markdown table and writes benchmarks/results/local_attention.json. The goal:
time(4,096) / time(1,024) <= 4.5 for local attention (it grows as T; full
attention grows as T^2, so 16x).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

D_MODEL, HEADS = 256, 4
BLOCK = dict(query_height=8, query_width=16, mem_above=8, mem_side=8)
OUT = Path(__file__).resolve().parent / "results" / "local_attention.json"


def run_case(kind: str, size: int, repeats: int, threads: int) -> dict:
    """Time and memory of one case, in this process (called in a fresh one by :func:`main`)."""
    import torch

    from zoo.nn.attention import MultiHeadAttention
    from zoo.nn.local import Local2DPattern, LocalSelfAttention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "local_2d":
        layer = LocalSelfAttention(D_MODEL, HEADS, Local2DPattern(size, size, 1, **BLOCK))
        fn = layer
    else:
        layer = MultiHeadAttention(D_MODEL, HEADS)
        fn = lambda x: layer(x, causal=True)[0]  # noqa: E731
    x = torch.randn(1, size * size, D_MODEL, requires_grad=True)
    grad = torch.randn(1, size * size, D_MODEL)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times, walls = [], []
    for i in range(repeats + 1):
        start, wall = time.process_time(), time.perf_counter()
        fn(x).backward(grad)
        if i:  # the first pass warms up
            times.append(time.process_time() - start)
            walls.append(time.perf_counter() - wall)
        x.grad = None
        layer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "side": size, "positions": size * size, "median_s": statistics.median(times),
            "median_wall_s": statistics.median(walls), "times_s": [round(t, 4) for t in times],
            "walls_s": [round(t, 4) for t in walls], "peak_rss_delta_mb": round((peak - base) / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sides (positions = side^2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", nargs=2, metavar=("KIND", "SIDE"), help=argparse.SUPPRESS)  # internal: one case
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.repeats, args.threads)))
        return
    import torch

    rows = []
    for kind in ("local_2d", "full_causal"):
        for size in args.sizes:
            repeats = args.repeats if kind == "local_2d" or size <= 64 else max(2, args.repeats // 2)
            out = subprocess.run([sys.executable, __file__, "--case", kind, str(size), "--repeats", str(repeats),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{kind:12s} {row['positions']:6d} positions: {row['median_s'] * 1e3:9.1f} ms CPU, "
                  f"{row['median_wall_s'] * 1e3:9.1f} ms wall, peak RSS +{row['peak_rss_delta_mb']:.1f} MB", flush=True)
    t = {(r["kind"], r["positions"]): r["median_s"] for r in rows}
    ratio = {k: round(t[(k, 4096)] / t[(k, 1024)], 2) for k in ("local_2d", "full_causal") if (k, 4096) in t and (k, 1024) in t}
    print("\n| attention | positions | fwd+bwd CPU (ms) | wall (ms) | peak RSS growth (MB) |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['kind']} | {r['positions']:,} | {r['median_s'] * 1e3:.1f} | {r['median_wall_s'] * 1e3:.1f} "
              f"| {r['peak_rss_delta_mb']:.1f} |")
    print(f"\ntime(4096) / time(1024): {ratio} (goal for local_2d: <= 4.5)")
    result = {
        "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "setup": {"d_model": D_MODEL, "heads": HEADS, "batch": 1, "dtype": "float32", "local_2d": BLOCK,
                  "time": "median CPU time (process_time) of forward+backward passes after one warm-up; wall too",
                  "memory": "peak RSS growth (ru_maxrss) of a fresh process over the passes"},
        "rows": rows,
        "ratio_4096_over_1024": ratio,
        "goal_met": ratio.get("local_2d", 99) <= 4.5,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
