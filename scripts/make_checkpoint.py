"""Turn a training run into a published checkpoint folder, measuring it with the stored weights.

    python scripts/make_checkpoint.py runs/transformer_small.multi30k/checkpoints \
        --name transformer_small.multi30k --average 5 --dtype float16

RUN is a Lightning .ckpt file, or a folder of them named ``{epoch}-{metric}.ckpt``: then
the best one, or with ``--average N`` the mean of the N best (highest BLEU, lowest
perplexity, NLL or bits/dim). Image models can be calibrated first (``--calibrate``): a
temperature fitted on the validation split is folded into the output layer; a run that
trained on its validation images folds one fitted by an earlier run (``--temperature T``).

Writes checkpoints/NAME/ (config.json, model.safetensors, tokenizer.json, README.md), reloads
it and measures it through ``zoo.evaluate`` on the data the run trained with, and prints the
figures as JSON (``zoo.export`` does the work; ``zoo reproduce`` calls it too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import zoo
from zoo.card import write_card
from zoo.export import export, model_cards_section
from zoo.hub import CARD, read_config
from zoo.io import write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="*", help="Lightning checkpoint, or a folder of them (several: averaged)")
    p.add_argument("--name", required=True, help="arch.tag of the checkpoint")
    p.add_argument("--average", type=int, default=1, help="average the N best checkpoints of each folder")
    p.add_argument("--last", action="store_true", help="take each folder's last.ckpt instead of its best")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--description", default="", help="one paragraph for the card")
    p.add_argument("--card", default=None,
                   help="Markdown file with more of the card's body (default: the '## NAME' section of MODEL_CARDS.md)")
    p.add_argument("--out", default=None, help="folder (default checkpoints/NAME)")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite the folder's README.md card from its config.json and MODEL_CARDS.md")
    p.add_argument("--calibrate", action="store_true",
                   help="image models: fit a temperature on the validation split and fold it into the output "
                        "layer before storing (zoo/calibrate.py); config.json records it")
    p.add_argument("--temperature", type=float, default=None,
                   help="image models: fold this temperature (fitted by an earlier run) into the output layer "
                        "instead of fitting one, for a run that trained on its validation images")
    args = p.parse_args()
    torch.manual_seed(0)
    out = Path(args.out or zoo.hub.checkpoints_dir() / args.name)
    body = Path(args.card).read_text(encoding="utf-8") if args.card else None
    if args.card_only:
        write_text(out / CARD, write_card(read_config(out), body=body or model_cards_section(args.name)))
        print(f"rewrote {out / CARD}")
        return
    if not args.run:
        p.error("give the Lightning checkpoint or run folder to publish (or --card-only)")
    try:
        result = export(args.run, args.name, out, average=args.average, last=args.last, dtype=args.dtype,
                        calibrate=args.calibrate, temperature=args.temperature, description=args.description,
                        card=body)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    print(json.dumps(result, indent=2))
    print("register it with sha256=" + repr(result["sha256"]))


if __name__ == "__main__":
    main()
