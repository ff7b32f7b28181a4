"""Relative self-attention, forward + backward: skewing against plain causal SDPA and Shaw's L x L x D tensor.

    python benchmarks/bench_relative_attention.py [--lengths 512 1024 2048] [--repeats 5]

Three ways to compute one causal self-attention over 8 heads of 64 channels (batch 1, fp32):

* ``sdpa``: ``scaled_dot_product_attention(is_causal=True)``, no relative positions: the floor;
* ``skewed``: ``zoo.nn.relative.RelativeSelfAttention`` (Q Er^T, skewed: O(L D + L^2) memory);
* ``naive``: Shaw et al.'s formulation, gathering an (L, L, D) tensor of distance embeddings
  (one table shared by the heads, as Shaw et al. did; per head it would be 8x bigger).

Only the attention itself is timed (the projections are the same for all three); ``skewed``
is ``RelativeSelfAttention``'s own code path (queries in chunks of 256 above that length).
Time: the median of ``--repeats`` runs after a warm-up, the three methods interleaved. Peak
memory: for each method and length, one run in a fresh process under glibc malloc with a
64 KiB mmap threshold (so freed tensors leave the resident set): the rise of its peak
resident set (VmHWM, reset through /proc/self/clear_refs) over the resident set before the
run; it counts everything the run allocated, the inputs' gradients included. Prints a Markdown table and writes benchmarks/results/relative_attention.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.nn.attention import causal_mask
from zoo.nn.relative import RelativeSelfAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # Shaw's formulation is the tests' reference
from reference_attention import naive_relative_attention  # noqa: E402

try:
    from benchmarks.bench_translation import machine
except ImportError:  # run as a script from benchmarks/
    from bench_translation import machine  # type: ignore[no-redef]

HEADS, HEAD_DIM = 8, 64


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rise(fn) -> int:
    """Bytes the peak resident set rose above the resident set while ``fn`` ran."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def peak_in_fresh_process(method: str, length: int) -> int:
    """:func:`peak_rise` of one run in a new process under glibc malloc with a low mmap threshold,
    so that every tensor's pages come from and go back to the system (a caching allocator such as
    tcmalloc keeps freed pages resident, and the peak of a later run would not show)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_relative_attention as b; "
            f"t = b.make({length}); print(b.peak_rise(lambda: b.METHODS[{method!r}](t)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def make(length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, HEADS, length, HEAD_DIM)
    t = {n: torch.randn(*shape, generator=g).requires_grad_() for n in "qkv"}
    t["rel"] = (torch.randn(1, length, HEAD_DIM, generator=g) * HEAD_DIM**-0.5).requires_grad_()
    t["rel_param"] = torch.nn.Parameter(t["rel"].detach().clone())
    return t


def run_sdpa(t: dict[str, torch.Tensor]) -> None:
    F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True).sum().backward()


def run_skewed(t: dict[str, torch.Tensor]) -> None:
    q = t["q"]
    att = RelativeSelfAttention(HEADS * HEAD_DIM, HEADS, q.size(2), share_heads=True)
    att.rel_emb = t["rel_param"]  # the same table as the naive run's
    att._global(q, t["k"], t["v"], 0).sum().backward()


def run_naive(t: dict[str, torch.Tensor]) -> None:
    length = t["q"].size(2)
    naive_relative_attention(t["q"], t["k"], t["v"], t["rel"], causal_mask(length, length)).sum().backward()


METHODS = {"sdpa": run_sdpa, "skewed": run_skewed, "naive": run_naive}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-max", type=int, default=1024,
                   help="run the naive L x L x D version only up to this length (at 2048 it needs about 16 GB)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "relative_attention.json"))
    args = p.parse_args()

    rows = []
    for length in args.lengths:
        methods = {m: fn for m, fn in METHODS.items() if m != "naive" or length <= args.naive_max}
        tensors = {m: make(length) for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        peaks: dict[str, int] = {}
        for m, fn in methods.items():  # the peak memory of one run, then a warm-up here
            peaks[m] = peak_in_fresh_process(m, length)
            fn(tensors[m])
            for x in tensors[m].values():
                x.grad = None
        for _ in range(args.repeats):
            for m, fn in methods.items():
                start = time.perf_counter()
                fn(tensors[m])
                times[m].append(time.perf_counter() - start)
                for x in tensors[m].values():
                    x.grad = None
        row: dict = {"length": length, "naive": None}
        for m in methods:
            row[m] = {"ms": round(1000 * statistics.median(times[m]), 1),
                      "min_ms": round(1000 * min(times[m]), 1), "max_ms": round(1000 * max(times[m]), 1),
                      "peak_mb": round(peaks[m] / 2**20, 1)}
        row["skewed_over_sdpa"] = round(row["skewed"]["ms"] / row["sdpa"]["ms"], 2)
        if row["naive"]:
            row["naive_over_skewed_memory"] = round(row["naive"]["peak_mb"] / max(row["skewed"]["peak_mb"], 0.1), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{machine()}, {date.today()}, batch 1, {HEADS} heads x {HEAD_DIM}, fp32, forward + backward\n")
    print("| L | SDPA causal ms | skewed ms | naive ms | skewed / SDPA | SDPA MB | skewed MB | naive MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = r["naive"] or {"ms": "not run", "peak_mb": "not run"}
        print(f"| {r['length']} | {r['sdpa']['ms']} | {r['skewed']['ms']} | {naive['ms']} | "
              f"{r['skewed_over_sdpa']} | {r['sdpa']['peak_mb']} | {r['skewed']['peak_mb']} | {naive['peak_mb']} |")
    Path(args.out).write_text(json.dumps({"machine": machine(), "date": str(date.today()), "heads": HEADS,
                                          "head_dim": HEAD_DIM, "batch": 1, "dtype": "float32", "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
