"""Turn a training run into a published checkpoint folder, measuring it with the stored weights.

    python scripts/make_checkpoint.py runs/transformer_small.multi30k/checkpoints \
        --name transformer_small.multi30k --average 5 --dtype float16

RUN is a Lightning .ckpt file, or a folder of them named ``{epoch}-{val_bleu}.ckpt``:
then the best one, or with ``--average N`` the mean of the N best (by validation BLEU).

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


def pick_checkpoints(run: Path, average: int) -> list[Path]:
    """The checkpoint file, or the ``average`` best of a folder by the BLEU in their names."""
    if run.is_file():
        return [run]
    scored = []
    for f in run.glob("*.ckpt"):
        try:
            scored.append((float(f.stem.split("-", 1)[1]), f))
        except (IndexError, ValueError):
            continue  # last.ckpt and friends
    if not scored:
        raise SystemExit(f"no '{{epoch}}-{{bleu}}.ckpt' files in {run}")
    return [f for _, f in sorted(scored, reverse=True)[: max(average, 1)]]


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point tensors of several Lightning checkpoints (our own local files)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        for k, v in state.items():
            total[k] = total.get(k, 0) + v.double() if v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="Lightning checkpoint, or a folder of them")
    p.add_argument("--average", type=int, default=1, help="average the N best checkpoints of the folder")
    p.add_argument("--name", required=True, help="arch.tag of the checkpoint")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--card", default=None, help="Markdown file with the card's body")
    p.add_argument("--out", default=None, help="folder (default checkpoints/NAME)")
    args = p.parse_args()
    torch.manual_seed(0)

    paths = pick_checkpoints(args.run, args.average)
    print("from:", *map(str, paths), sep="\n  ")
    model = TranslationTask.load_from_checkpoint(paths[0], map_location="cpu")
    if model.tokenizers is None:
        raise SystemExit(f"{paths[0]} carries no tokenizer; train it with the zoo CLI")
    if len(paths) > 1:
        model.load_state_dict(average_state(paths))
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
    config["averaged"] = [p.name for p in paths]
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
