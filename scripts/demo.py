"""The whole path a user walks, on embedded defaults (run by `make demo`).

1. load the pretrained Transformer by name and translate a few sentences;
2. fine-tune it for a few steps with the Lightning Trainer (through `zoo fit`) on a
   slice of Multi30k, or on the bundled sample when Multi30k is neither local nor
   downloadable, logging the run to W&B (offline without credentials);
3. load the fine-tuned checkpoint and translate again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Kinder spielen im Schnee.",
    "Eine Frau in einem roten Mantel geht mit ihrem Hund spazieren.",
]


def main() -> None:
    os.chdir(REPO)
    import zoo
    from zoo.cli import run as zoo_run
    from zoo.data.text import find_multi30k

    t = time.perf_counter()
    model = zoo.load("transformer_small.multi30k")
    print(f"\n== loaded transformer_small.multi30k in {time.perf_counter() - t:.1f}s")
    for de, en in zip(SENTENCES, model.translate(SENTENCES, beam_size=4)):
        print(f"  {de}\n    -> {en}")

    args = ["fit", "--config", "configs/transformer_small.finetune.yaml"]
    try:
        print(f"\n== fine-tuning on a 2,000-pair slice of Multi30k from {find_multi30k()}")
    except FileNotFoundError as err:
        sample = REPO / "zoo" / "data" / "samples" / "de_en.tsv"
        print(f"\n== {err}\n== so fine-tuning on the bundled sample {sample} instead (40 pairs)")
        args += ["--data.init_args.dataset", "files", "--data.init_args.train_files", f"[{sample}]",
                 "--data.init_args.val_fraction", "0.2", "--trainer.val_check_interval", "1.0"]
    cli = zoo_run(args)

    out = Path(cli.trainer.log_dir or cli.trainer.default_root_dir) / "pretrained"
    tuned = zoo.load(str(out))
    print("\n== the fine-tuned model:")
    for de, en in zip(SENTENCES, tuned.translate(SENTENCES, beam_size=4)):
        print(f"  {de}\n    -> {en}")
    print(f"\nfine-tuned checkpoint: {out}\nW&B run: {cli.trainer.logger.experiment.dir.rsplit('/files', 1)[0]}")


if __name__ == "__main__":
    sys.exit(main())
