"""Translation models side by side: training target tokens/s, decoding sentences/s.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python benchmarks/bench_translation.py [--models A B ...] [--repeats 5]

Every model is timed on the same inputs, and the models take turns within each repeat
(A, B, A, B, ...), so a slow spell of the shared machine hits all of them alike; each
figure is the median over the repeats, with min and max beside it.

Training: real Multi30k batches of 4,096 padded tokens (as in the recipes), forward +
backward + AdamW step, bf16 autocast (the recipes' precision) and fp32. Decoding: the
first N test_2016_flickr sentences in batches of 100, greedy and beam 4, bf16 autocast.
Prints a Markdown table and writes benchmarks/results/translation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch

import zoo
from zoo.data.text import TextDataModule


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def train_rate(model, opt, batches, dtype: str) -> float:
    """Target tokens/s over ``batches`` (forward, backward, optimiser step)."""
    model.train()
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        with autocast(dtype):
            loss, ntok = model._loss(batch, 0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(ntok)
    return tokens / (time.perf_counter() - start)


def decode_rate(model, sentences, beam: int) -> float:
    model.eval()
    with autocast("bf16"):
        start = time.perf_counter()
        model.translate(sentences, beam_size=beam, batch_size=100)
    return len(sentences) / (time.perf_counter() - start)


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, LD_PRELOAD={os.environ.get('LD_PRELOAD', '') or 'none'}")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["transformer_small.multi30k", "convs2s_small.multi30k"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="training steps timed per repeat")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "translation.json"))
    args = p.parse_args()
    torch.manual_seed(0)

    batches = {}
    for name in args.models:  # each model's own vocabulary; the same sentences in the same order
        dm = TextDataModule(tokenizer=name, max_tokens=4096)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        batches[name] = [next(it) for _ in range(args.steps)]
    sentences = dm.texts("test")[0][: args.sentences]

    trainees = {name: zoo.load(name) for name in args.models}
    optimisers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in trainees.items()}
    decoders = {name: zoo.load(name) for name in args.models}
    tasks = [("train_bf16_tok_s", lambda n: train_rate(trainees[n], optimisers[n], batches[n], "bf16")),
             ("train_fp32_tok_s", lambda n: train_rate(trainees[n], optimisers[n], batches[n], "fp32")),
             ("greedy_sent_s", lambda n: decode_rate(decoders[n], sentences, 1)),
             ("beam4_sent_s", lambda n: decode_rate(decoders[n], sentences, 4))]

    for name in args.models:  # warm-up: first calls allocate and pick kernels
        train_rate(trainees[name], optimisers[name], batches[name][:2], "bf16")
        decode_rate(decoders[name], sentences[:20], 4)
    samples = {name: {key: [] for key, _ in tasks} for name in args.models}
    for r in range(args.repeats):
        for key, run in tasks:
            for name in args.models:
                samples[name][key].append(run(name))
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)

    results = {name: {key: summary(vals) for key, vals in per.items()} for name, per in samples.items()}
    for name in args.models:
        results[name]["params"] = sum(p.numel() for p in decoders[name].net.parameters())
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "settings": vars(args),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    keys = [key for key, _ in tasks]
    print("| model | params | " + " | ".join(keys) + " |")
    print("| --- | --- |" + " --- |" * len(keys))
    for name, r in results.items():
        cells = [f"{r[k]['median']:,} ({r[k]['min']:,}–{r[k]['max']:,})" for k in keys]
        print(f"| {name} | {r['params'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    base = args.models[0]
    for name in args.models[1:]:
        ratios = [f"{k} {results[name][k]['median'] / results[base][k]['median']:.2f}x" for k in keys]
        print(f"{name} / {base}: " + ", ".join(ratios))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
