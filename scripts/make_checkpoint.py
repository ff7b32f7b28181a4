"""Turn a training run into a published checkpoint folder, measuring it with the stored weights.

    python scripts/make_checkpoint.py runs/transformer_small.multi30k/checkpoints/last.ckpt \
        --name transformer_small.multi30k --dtype float16

Writes checkpoints/NAME/ (config.json, model.safetensors, tokenizer.json, README.md),
then reloads that folder and measures sacreBLEU and lowercased BLEU on the test split,
greedy and beam 4, plus greedy sacreBLEU on the first 100 test sentences (which the
test suite reproduces). Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import zoo
from zoo.data.text import TextDataModule
from zoo.hub import CARD, CONFIG, _write_text, read_config, save_pretrained
from zoo.card import write_card
from zoo.metrics import translation_scores
from zoo.tasks.translation import TranslationTask


def measure(model, sources, references, beam: int) -> tuple[dict, float]:
    t = time.perf_counter()
    hyps = model.translate(sources, beam_size=beam, batch_size=100)
    return translation_scores(hyps, references), time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="Lightning checkpoint of the run")
    p.add_argument("--name", required=True, help="arch.tag of the checkpoint")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--card", default=None, help="Markdown file with the card's body")
    p.add_argument("--out", default=None, help="folder (default checkpoints/NAME)")
    args = p.parse_args()
    torch.manual_seed(0)

    model = TranslationTask.load_from_checkpoint(args.ckpt, map_location="cpu")
    if model.tokenizers is None:
        raise SystemExit(f"{args.ckpt} carries no tokenizer; train it with the zoo CLI")
    dm = TextDataModule(data_dir=args.data_dir, tokenizer=None)
    dm._tokenizers = model.tokenizers
    out = Path(args.out or zoo.hub.checkpoints_dir() / args.name)
    save_pretrained(model, out, dtype=args.dtype, data={**dm.describe(), "test_split": "test_2016_flickr"})

    stored = zoo.load(str(out))  # measure what was stored, not what was trained
    src, ref = dm.texts("test")
    metrics, timing = {}, {}
    for beam, label in ((1, "greedy"), (4, "beam4")):
        scores, secs = measure(stored, src, ref, beam)
        for k, v in scores.items():
            metrics[f"{k}/{label}"] = v
        timing[label] = round(secs, 1)
    slice_scores, _ = measure(stored, src[:100], ref[:100], 1)

    config = read_config(out)
    config["name"] = args.name
    config["metrics"] = metrics
    config["reproduce"] = {"split": "test_2016_flickr", "first": 100, "beam_size": 1, "sacrebleu": slice_scores["sacrebleu"]}
    body = Path(args.card).read_text(encoding="utf-8") if args.card else None
    _write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    _write_text(out / CARD, write_card(config, body=body))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({"folder": str(out), "size_mb": round(size / 1e6, 2), "metrics": metrics,
                      "slice100": slice_scores, "decode_seconds": timing, "num_params": config["num_params"]}, indent=2))


if __name__ == "__main__":
    main()
