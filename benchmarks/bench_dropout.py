"""zoo.nn.Dropout against F.dropout inside real training steps, interleaved.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python benchmarks/bench_dropout.py [--models A B ...] [--repeats 5]

For each model and repeat, the same 8 Multi30k batches (4,096 padded tokens) are trained
once with zoo's fast bf16 dropout and once with ``F.dropout``'s own path, in turn, under
bf16 autocast; medians of target tokens/s and the ratio. Writes
benchmarks/results/dropout.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_translation import machine, train_rate  # noqa: E402

import zoo  # noqa: E402
import zoo.nn.dropout as zdrop  # noqa: E402
from zoo.data.text import TextDataModule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["transformer_small.multi30k", "convs2s_small.multi30k"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    fast = zdrop._SLOW_BERNOULLI
    results = {}
    for name in args.models:
        dm = TextDataModule(tokenizer=name, max_tokens=4096)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        batches = [next(it) for _ in range(args.steps)]
        model = zoo.load(name)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        train_rate(model, opt, batches[:2], "bf16")  # warm-up
        rates = {"F.dropout": [], "zoo.nn.Dropout": []}
        for _ in range(args.repeats):
            for label, kinds in (("F.dropout", ()), ("zoo.nn.Dropout", fast)):
                zdrop._SLOW_BERNOULLI = kinds
                rates[label].append(train_rate(model, opt, batches, "bf16"))
        zdrop._SLOW_BERNOULLI = fast
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[name] = {k: round(v) for k, v in med.items()} | {"ratio": round(med["zoo.nn.Dropout"] / med["F.dropout"], 3)}
        print(f"{name}: F.dropout {med['F.dropout']:,.0f} tok/s, zoo.nn.Dropout {med['zoo.nn.Dropout']:,.0f} tok/s, "
              f"{results[name]['ratio']:.2f}x", flush=True)
    out = Path(__file__).parent / "results" / "dropout.json"
    out.write_text(json.dumps({"date": date.today().isoformat(), "machine": machine(), "settings": vars(args),
                               "results": results}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
