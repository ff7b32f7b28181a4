"""Turn a training run into a published checkpoint folder, measuring it with the stored weights.

    python scripts/make_checkpoint.py runs/transformer_small.multi30k/checkpoints \
        --name transformer_small.multi30k --average 5 --dtype float16

RUN is a Lightning .ckpt file, or a folder of them named ``{epoch}-{metric}.ckpt``: then
the best one, or with ``--average N`` the mean of the N best (highest BLEU, lowest
perplexity). Image models can be calibrated first (``--calibrate``): a temperature fitted on
the validation split is folded into the output layer (zoo/calibrate.py); a run that trained
on its validation images folds one fitted by an earlier run instead (``--temperature T``).

Writes checkpoints/NAME/ (config.json, model.safetensors, tokenizer.json, README.md), then
reloads that folder and measures it on the test split with the data settings the run was
trained with: translation models, sacreBLEU and lowercased BLEU, greedy and beam 4, and the
teacher-forced perplexity of the references; language models, perplexity (MIDI-event models:
mean NLL per event of the validation and test pieces); image models,
bits per dimension of the held-out test images (with, beside it, the per-pixel independent
baseline, and a PNG of samples: for super-resolution, inputs / samples / targets). It also
records the figure for the first 100 test items, which the test suite reproduces. Prints
everything as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.card import write_card
from zoo.hub import CARD, CONFIG, read_config, save_pretrained
from zoo.io import atomic_write, write_text
from zoo.metrics import TokenNLL, translation_scores


def pick_checkpoints(run: Path, average: int, higher_is_better: bool) -> list[Path]:
    """The checkpoint file, or the ``average`` best of a folder by the metric in their names."""
    if run.is_file():
        return [run]
    scored = []
    for f in run.glob("*.ckpt"):
        try:
            scored.append((float(f.stem.split("-", 1)[1]), f))
        except (IndexError, ValueError):
            continue  # last.ckpt and friends
    if not scored:
        raise SystemExit(f"no '{{epoch}}-{{metric}}.ckpt' files in {run}")
    return [f for _, f in sorted(scored, reverse=higher_is_better)[: max(average, 1)]]


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point tensors of several Lightning checkpoints (our own local files)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        for k, v in state.items():
            total[k] = total.get(k, 0) + v.double() if v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def write_slim(paths: list[Path], dest: Path, dtype: str) -> None:
    """The (averaged) weights of ``paths`` as a small Lightning checkpoint: the first one's
    settings and tokenizers, its weights in ``dtype``, no optimizer or loop state. The GPU
    plan writes these so that measuring can happen on a machine whose time costs less."""
    ckpt = torch.load(paths[0], map_location="cpu", weights_only=True)
    slim = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    slim["state_dict"] = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
                          for k, v in average_state(paths).items()}
    slim["averaged"] = [p.name for p in paths]
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: torch.save(slim, tmp))
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB) from", *map(str, paths), sep="\n  ")


def data_module(hparams: dict, tokenizers):
    """The run's data module, as it was configured, with the model's tokenizers and the whole test split."""
    cls = import_path(hparams["_class_path"])
    hp = {k: v for k, v in hparams.items() if not k.startswith("_")}
    dm = cls(**hp) if "test_limit" not in hp else cls(**{**hp, "test_limit": None})
    dm._tokenizers, dm._tokenizer = tokenizers, tokenizers[1]
    return dm


def data_modules(paths: list[Path], tokenizers) -> tuple[Any, dict]:
    """The first checkpoint's data module (to measure on) and what the data was for all of
    them: a description entry that differs between averaged checkpoints (say, one run with
    shift augmentation, one without) becomes ``{"per checkpoint": {file name: value}}``."""
    settings = [torch.load(p, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"] for p in paths]
    keys = [json.dumps(hp, sort_keys=True, default=str) for hp in settings]
    built: dict[str, tuple[Any, dict]] = {}
    for key, hp in zip(keys, settings):
        if key not in built:
            dm = data_module(hp, tokenizers)
            built[key] = dm, dm.describe()
    described = [built[key][1] for key in keys]
    data: dict[str, Any] = {}
    for name in dict.fromkeys(k for d in described for k in d):
        values = [d.get(name) for d in described]
        data[name] = values[0] if all(v == values[0] for v in values) else \
            {"per checkpoint": {p.name: v for p, v in zip(paths, values)}}
    return built[keys[0]][0], data


def model_cards_section(name: str, path: Path = Path("MODEL_CARDS.md")) -> str | None:
    """The '## NAME' section of MODEL_CARDS.md, so the card and the catalogue say the same."""
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    start = text.find(f"\n## {name}\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return "## Details\n" + text[start + len(name) + 5 : end if end > 0 else None].strip() + "\n"


def import_path(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def measure_translation(stored, dm) -> tuple[dict, dict, dict]:
    src, ref = dm.texts("test")
    metrics, timing = {}, {}
    for beam, label in ((1, "greedy"), (4, "beam4")):
        t = time.perf_counter()
        scores = translation_scores(stored.translate(src, beam_size=beam, batch_size=100), ref)
        timing[label] = round(time.perf_counter() - t, 1)
        metrics.update({f"{k}/{label}": v for k, v in scores.items()})
    nll = TokenNLL()
    with torch.no_grad():
        for batch in dm.test_dataloader():  # teacher-forced: the perplexity of the references
            target = batch["tgt_out"]
            logp = stored(batch["src"], batch["tgt_in"]).float().log_softmax(-1)
            nll.update(logp.gather(-1, target[..., None]).squeeze(-1), target.ne(stored.hparams.pad_id))
    metrics["ppl"] = round(float(torch.exp(nll.compute())), 2)
    head = translation_scores(stored.translate(src[:100], beam_size=1, batch_size=100), ref[:100])
    reproduce = {"split": "test_2016_flickr", "first": 100, "beam_size": 1, "sacrebleu": head["sacrebleu"]}
    return metrics, reproduce, timing


def measure_lm(stored, dm) -> tuple[dict, dict, dict]:
    texts = dm.texts("test")
    t = time.perf_counter()
    ppl = round(stored.perplexity(texts), 2)
    timing = {"perplexity": round(time.perf_counter() - t, 1)}
    reproduce = {"split": "test_2016_flickr", "first": 100, "ppl": round(stored.perplexity(texts[:100]), 2)}
    return {"ppl": ppl}, reproduce, timing


def measure_music(stored, dm) -> tuple[dict, dict, dict]:
    """Mean NLL per event (nats) of whole validation and test pieces, and of the first 10 validation pieces."""
    t = time.perf_counter()
    metrics = {"val_nll": round(stored.mean_nll(dm.val_dataloader()), 4),
               "test_nll": round(stored.mean_nll(dm.test_dataloader()), 4)}
    timing = {"nll": round(time.perf_counter() - t, 1)}
    first = stored.mean_nll(dm.eval_batches("val", first=10))
    by_position = nll_by_position(stored, dm.eval_batches("val"), (0, 512, 1024))
    return metrics, {"split": "val", "first": 10, "nll": round(first, 4), "val_nll_by_position": by_position}, timing


@torch.no_grad()
def nll_by_position(stored, batches, edges: tuple[int, ...]) -> dict[str, float]:
    """Mean NLL of the targets at positions [edges[i], edges[i+1]) of each piece (last: to its end).

    Shows what a model makes of positions and distances longer than its training windows."""
    total, count = [0.0] * len(edges), [0] * len(edges)
    stored.eval()
    for batch in batches:
        tokens, targets = batch["tokens"], batch["targets"]
        nll, real = -stored.net.score(tokens, targets).double(), targets.ne(stored.hparams.pad_id)
        bounds = [*edges, tokens.shape[1]]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            total[i] += float((nll[:, a:b] * real[:, a:b]).sum())
            count[i] += int(real[:, a:b].sum())
    names = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    return {n: round(t / c, 4) for n, t, c in zip(names, total, count) if c}


def measure_image(stored, dm, out: Path) -> tuple[dict, dict, dict]:
    """Test bits/dim of the stored model, the first 100 test images' figure, baselines and a PNG of samples."""
    import numpy as np

    from zoo.data.pixels import save_grid
    from zoo.tasks.image import independent_pixel_bpd

    t = time.perf_counter()
    bpd = round(stored.bits_per_dim(dm, split="test"), 4)
    timing = {"bits_per_dim": round(time.perf_counter() - t, 1)}
    images, labels = dm.images("test"), dm.labels("test")
    c = stored.net.config
    cond = {"labels": labels[:100]} if c.num_classes else {}
    reproduce = {"split": "test", "first": 100, "bpd": round(stored.bits_per_dim(images[:100], **cond), 4)}
    tok = stored.tokenizers[1]
    train = tok.encode_array(dm.images("train"))
    test = tok.encode_array(images)
    baselines = {"independent_pixels_bpd": round(independent_pixel_bpd(train, test, tok.levels), 4)}
    if c.num_classes:
        baselines["independent_pixels_per_class_bpd"] = round(
            independent_pixel_bpd(train, test, tok.levels, dm.labels("train"), labels), 4)
    t = time.perf_counter()
    if c.src_height:  # rows: low-resolution inputs (scaled up), samples, targets
        n = 10
        low = dm.low_res("test")[:n]
        samples = stored.generate(src=low, seed=0)
        factor = c.height // c.src_height
        up = low.repeat(factor, axis=1).repeat(factor, axis=2)
        grid = np.concatenate([up, samples, images[:n]])
        save_grid(out / "samples.png", grid, max_value=tok.max_value, ncols=n, scale=4 if c.height < 16 else 2)
    else:
        n = 20 if c.num_classes else 16
        samples = stored.generate(n, seed=0)  # class-conditional: the classes in turn
        save_grid(out / "samples.png", samples, max_value=tok.max_value, ncols=10 if c.num_classes else 8,
                  scale=4 if c.height < 16 else 2)
    timing["samples"] = round(time.perf_counter() - t, 1)
    return {"bpd": bpd}, {**reproduce, "baselines": baselines}, timing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", help="Lightning checkpoint, or a folder of them")
    p.add_argument("--name", required=True, help="arch.tag of the checkpoint")
    p.add_argument("--average", type=int, default=1, help="average the N best checkpoints of the folder")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--description", default="", help="one paragraph for the card")
    p.add_argument("--card", default=None,
                   help="Markdown file with more of the card's body (default: the '## NAME' section of MODEL_CARDS.md)")
    p.add_argument("--out", default=None, help="folder (default checkpoints/NAME)")
    p.add_argument("--recipe", default=None,
                   help="the config that trained it, last stage of several (default configs/NAME.yaml)")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite the folder's README.md card from its config.json and MODEL_CARDS.md")
    p.add_argument("--calibrate", action="store_true",
                   help="image models: fit a temperature on the validation split and fold it into the output "
                        "layer before storing (zoo/calibrate.py); config.json records it")
    p.add_argument("--temperature", type=float, default=None,
                   help="image models: fold this temperature (fitted by an earlier run) into the output layer "
                        "instead of fitting one, for a run that trained on its validation images")
    p.add_argument("--slim", type=Path, default=None,
                   help="only write the (averaged) weights to this small .ckpt (--dtype, no optimizer state), "
                        "to publish and measure later with this script")
    args = p.parse_args()
    torch.manual_seed(0)
    out = Path(args.out or zoo.hub.checkpoints_dir() / args.name)
    if args.card_only:
        config = read_config(out)
        body = Path(args.card).read_text(encoding="utf-8") if args.card else model_cards_section(args.name)
        write_text(out / CARD, write_card(config, body=body))
        print(f"rewrote {out / CARD}")
        return
    if args.run is None:
        p.error("give the Lightning checkpoint or run folder to publish (or --card-only)")

    probe = sorted(args.run.glob("*.ckpt"))[0] if args.run.is_dir() else args.run
    meta = torch.load(probe, map_location="cpu", weights_only=True)
    task_cls = import_path(meta["hyper_parameters"].get("_class_path", "zoo.tasks.translation.TranslationTask"))
    is_lm = task_cls.task_name == "lm"
    is_image = task_cls.task_name == "image"
    calibrating = args.calibrate or args.temperature is not None
    if calibrating and not is_image:
        raise SystemExit("--calibrate and --temperature are for image models (a softmax over intensities); this run is not one")
    if args.calibrate and args.temperature is not None:
        raise SystemExit("give --calibrate (fit a temperature on validation) or --temperature T (fold T), not both")
    if calibrating and args.slim:
        raise SystemExit("--calibrate and --temperature apply when publishing the slim checkpoint, not with --slim")
    paths = pick_checkpoints(args.run, args.average, higher_is_better=not (is_lm or is_image))
    if args.slim:
        write_slim(paths, args.slim, args.dtype)
        return
    print("from:", *map(str, paths), sep="\n  ")
    model = task_cls.load_from_checkpoint(paths[0], map_location="cpu")
    if model.tokenizers is None:
        raise SystemExit(f"{paths[0]} carries no tokenizer; train it with the zoo CLI")
    if len(paths) > 1:
        model.load_state_dict(average_state(paths))

    dm, data = data_modules(paths, model.tokenizers)
    calibration = None
    if calibrating:
        from zoo.calibrate import calibrate_image_model

        try:
            calibration = calibrate_image_model(model, dm, args.temperature)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        print("calibrated:", json.dumps(calibration))
    is_music = type(dm).__name__ == "MIDIDataModule"
    test_split = f"test ({len(dm.labels('test'))} held-out images)" if is_image else "test_2016_flickr"
    if is_music:
        test_split = "the data set's validation and test pieces, whole"
    save_pretrained(model, out, dtype=args.dtype, data={**data, "test_split": test_split})

    stored = zoo.load(str(out))  # measure what was stored, not what was trained
    if is_image:
        metrics, reproduce, timing = measure_image(stored, dm, out)
    elif is_music:
        metrics, reproduce, timing = measure_music(stored, dm)
    else:
        metrics, reproduce, timing = (measure_lm if is_lm else measure_translation)(stored, dm)

    config = read_config(out)
    recipe = Path(args.recipe or Path("configs") / f"{args.name}.yaml")
    config.update(name=args.name, description=args.description, metrics=metrics, reproduce=reproduce,
                  averaged=meta.get("averaged") or [p.name for p in paths])
    if calibration:
        config["calibration"] = calibration
    for key in ("baselines", "val_nll_by_position"):  # beside the metrics: baselines, diagnostics
        if key in reproduce:
            config[key] = reproduce.pop(key)
    if recipe.exists():
        config["recipe"] = str(recipe)
    body = Path(args.card).read_text(encoding="utf-8") if args.card else model_cards_section(args.name)
    write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    write_text(out / CARD, write_card(config, body=body))
    size = sum(f.stat().st_size for f in out.iterdir())
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    extra = {k: config[k] for k in ("baselines", "val_nll_by_position") if k in config}
    print(json.dumps({"folder": str(out), "size_mb": round(size / 1e6, 2), "num_params": config["num_params"],
                      "metrics": metrics, "reproduce": reproduce, **extra, "seconds": timing, "sha256": digest},
                     indent=2))
    print("register it with sha256=" + repr(digest))


if __name__ == "__main__":
    main()
