"""Transformer speed at the checkpoint's size: training target tokens/s, decoding sentences/s.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python benchmarks/bench_transformer.py [--steps 20] [--sentences 200]

Training: real Multi30k batches (4,096 padded tokens, as in the recipe), forward +
backward + AdamW step, after warm-up steps; fp32 and bf16 autocast. Decoding: the first
N test sentences, batches of 100, greedy and beam 4, fp32 and bf16 autocast. Prints a
Markdown table and writes benchmarks/results/transformer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch

import zoo
from zoo.data.text import TextDataModule


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def bench_training(model, batches, dtype: str, warmup: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            start, tokens = time.perf_counter(), 0
        with autocast(dtype):
            loss, ntok = model._loss(batch, 0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(ntok)
    return tokens / (time.perf_counter() - start)


def bench_decoding(model, sentences, beam: int, dtype: str) -> float:
    model.eval()
    with autocast(dtype):
        model.translate(sentences[:20], beam_size=beam, batch_size=100)  # warm-up
        start = time.perf_counter()
        model.translate(sentences, beam_size=beam, batch_size=100)
    return len(sentences) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="transformer_small.multi30k")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sentences", type=int, default=200)
    args = p.parse_args()
    torch.manual_seed(0)

    model = zoo.load(args.model)
    dm = TextDataModule(tokenizer=args.model, max_tokens=4096)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.warmup + args.steps)]
    sentences = dm.texts("test")[0][: args.sentences]

    rows = {}
    for dtype in ("fp32", "bf16"):
        rows[dtype] = {"train_tgt_tokens_per_s": round(bench_training(zoo.load(args.model), batches, dtype, args.warmup))}
        for beam, label in ((1, "greedy"), (4, "beam4")):
            rows[dtype][f"{label}_sentences_per_s"] = round(bench_decoding(model, sentences, beam, dtype), 1)

    result = {
        "model": args.model,
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}",
        "settings": vars(args),
        "results": rows,
    }
    out = Path(__file__).parent / "results" / "transformer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| precision | train tgt tok/s | greedy sent/s | beam-4 sent/s |\n| --- | --- | --- | --- |")
    for dtype, r in rows.items():
        print(f"| {dtype} | {r['train_tgt_tokens_per_s']} | {r['greedy_sentences_per_s']} | {r['beam4_sentences_per_s']} |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
