"""Turn training runs into a checkpoint folder in Hub layout, measured with the weights it stores.

``export()`` takes Lightning checkpoints (files, or run folders of ``{epoch}-{metric}.ckpt``
files of which it keeps the best), averages them, optionally folds a temperature into an
image model's output layer (``zoo.calibrate``), stores the result in ``dtype`` and reloads
it from disk to measure it through ``zoo.evaluate``: the figures in config.json and the card
are those of the stored weights. ``scripts/make_checkpoint.py`` is its command line and
``zoo reproduce`` ends every chain with it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = ["average_state", "export", "model_cards_section", "pick_checkpoints"]


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def pick_checkpoints(run: Path, average: int = 1, higher_is_better: bool = False, last: bool = False) -> list[Path]:
    """``run`` itself if it is a file; else its ``last.ckpt`` (``last``) or its ``average`` best by the metric in the names."""
    run = Path(run)
    if run.is_file():
        return [run]
    if last:
        if not (run / "last.ckpt").is_file():
            raise FileNotFoundError(f"{run} has no last.ckpt; train with a ModelCheckpoint(save_last=True) or zoo fit's default")
        return [run / "last.ckpt"]
    scored = []
    for f in run.glob("*.ckpt"):
        try:
            scored.append((float(f.stem.rsplit("-", 1)[1]), f))
        except (IndexError, ValueError):
            continue  # last.ckpt and friends
    if not scored:
        raise FileNotFoundError(f"no '{{epoch}}-{{metric}}.ckpt' files in {run}")
    return [f for _, f in sorted(scored, reverse=higher_is_better)[: max(average, 1)]]


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point tensors of several Lightning checkpoints (local files zoo wrote)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        for k, v in state.items():
            total[k] = total.get(k, 0) + v.double() if v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def datamodule_spec(hparams: dict[str, Any]) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a data module from the hyperparameters Lightning saved with it."""
    return {"class_path": hparams["_class_path"],
            "init_args": {k: v for k, v in hparams.items() if not k.startswith("_")}}


def describe_data(paths: list[Path], tokenizers: Any, limit: int | None) -> tuple[Any, dict[str, Any]]:
    """The first checkpoint's data module (to measure on) and what the data was for all of them:
    an entry that differs between averaged checkpoints (one run with shift augmentation, one
    without) becomes ``{"per checkpoint": {file name: value}}``."""
    from zoo.evaluate import data_module

    settings = [torch.load(p, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"] for p in paths]
    keys = [json.dumps(hp, sort_keys=True, default=str) for hp in settings]
    built: dict[str, tuple[Any, dict]] = {}
    for key, hp in zip(keys, settings):
        if key not in built:
            dm = data_module(datamodule_spec(hp), tokenizers, limit=limit)
            built[key] = dm, dm.describe()
    described = [built[key][1] for key in keys]
    data: dict[str, Any] = {}
    for name in dict.fromkeys(k for d in described for k in d):
        values = [d.get(name) for d in described]
        data[name] = values[0] if all(v == values[0] for v in values) else \
            {"per checkpoint": {p.name: v for p, v in zip(paths, values)}}
    data["datamodule"] = datamodule_spec(settings[0])
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


# -- what a checkpoint records --------------------------------------------------------
HEAD = {"translation": ("test", 100), "text": ("test", 100), "music": ("val", 10), "image": ("test", 100),
        "qa": ("test", 100)}  # qa: the first 100 questions of each task
HEAD_STREAM = 5000  # text measured as one stream (PTB): the first 5,000 targets


def measure_stored(stored: Any, dm: Any, out: Path, limit: int | None) -> dict[str, Any]:
    """Metrics, the figure of the first items (which the test suite reproduces), extras and timings."""
    from zoo.evaluate import kind_of, measure, nll_by_position

    kind = kind_of(stored, dm)
    stream = kind == "text" and getattr(dm, "scores_stream", False)  # PTB: validation is recorded too, as val_ppl
    splits = ("val", "test") if kind == "music" or stream else ("test",)
    runs = [measure(stored, dm, split, limit) for split in splits]
    metrics = {(f"val_{k}" if kind == "text" and r["split"] == "val" else k): v
               for r in runs for k, v in r["metrics"].items()}
    split, first = HEAD[kind]
    first = HEAD_STREAM if stream else first
    first = first if limit is None else min(first, limit)
    head = measure(stored, dm, split, first, quick=True)["metrics"]
    names = {"sacrebleu/greedy": "sacrebleu", f"{split}_nll": "nll"}
    reproduce: dict[str, Any] = {"split": split_label(stored, dm) if kind in ("translation", "text") else split,
                                 "first": first}
    if stream:
        reproduce["items"] = "tokens"
    if kind == "qa":
        reproduce["items"] = "questions of each task"
    if kind == "translation":
        reproduce["beam_size"] = 1
    reproduce.update({names.get(k, k): v for k, v in head.items()})
    extra: dict[str, Any] = {}
    if kind == "music":
        extra["val_nll_by_position"] = nll_by_position(stored, dm.eval_batches("val", first=limit))
    if kind == "image":
        extra["baselines"] = image_baselines(stored, dm)
        if limit is None:  # sampling 16 images a pixel at a time is minutes of a deep model
            write_samples(stored, dm, out)
    return {"metrics": metrics, "reproduce": reproduce, "extra": extra,
            "seconds": {r["split"]: r["seconds"] for r in runs}}


def image_baselines(stored: Any, dm: Any) -> dict[str, float]:
    """Bits/dim of each position's intensity histogram over the training images (per class, if conditional)."""
    from zoo.tasks.image import independent_pixel_bpd

    tok = stored.tokenizers[1]
    train, test = tok.encode_array(dm.images("train")), tok.encode_array(dm.images("test"))
    out = {"independent_pixels_bpd": round(independent_pixel_bpd(train, test, tok.levels), 4)}
    if stored.net.config.num_classes:
        out["independent_pixels_per_class_bpd"] = round(
            independent_pixel_bpd(train, test, tok.levels, dm.labels("train"), dm.labels("test")), 4)
    return out


def write_samples(stored: Any, dm: Any, out: Path) -> None:
    """samples.png: samples of seed 0 (super-resolution: rows of inputs, samples and targets)."""
    import numpy as np

    from zoo.data.pixels import save_grid

    c, tok = stored.net.config, stored.tokenizers[1]
    scale = 4 if c.height < 16 else 2
    if c.src_height:
        n = 10
        low, images = dm.low_res("test")[:n], dm.images("test")[:n]
        samples = stored.generate(src=low, seed=0)
        factor = c.height // c.src_height
        up = low.repeat(factor, axis=1).repeat(factor, axis=2)
        save_grid(out / "samples.png", np.concatenate([up, samples, images]), max_value=tok.max_value, ncols=n, scale=scale)
    else:
        samples = stored.generate(20 if c.num_classes else 16, seed=0)  # class-conditional: the classes in turn
        save_grid(out / "samples.png", samples, max_value=tok.max_value, ncols=10 if c.num_classes else 8, scale=scale)


# -- export ---------------------------------------------------------------------------
def export(
    runs: Path | str | Iterable[Path | str],
    name: str,
    out: Path | str,
    *,
    average: int = 1,
    last: bool = False,
    dtype: str = "float16",
    calibrate: bool = False,
    temperature: float | None = None,
    description: str = "",
    card: str | None = None,
    recipe: str | None = None,
    limit: int | None = None,
    measure: bool = True,
) -> dict[str, Any]:
    """Average, calibrate, store and measure; returns what was written and measured.

    Args:
        runs: Lightning checkpoints or run folders; from each folder its ``average`` best
            (or its last.ckpt with ``last``).
        name: ``arch.tag`` of the checkpoint.
        out: the folder to write (Hub layout).
        calibrate / temperature: image models: fit a temperature on the validation split, or
            fold the one given, into the output layer before storing.
        card: Markdown body of the model card (default: the '## NAME' section of MODEL_CARDS.md).
        recipe: what rebuilds it, recorded in config.json (default: ``zoo reproduce NAME``).
        limit: measure on the first ``limit`` items of each split only (smoke runs).
        measure: False stores the weights without measuring them (a step of a chain that
            only starts the next one).
    """
    import zoo
    from zoo.hub import CARD, CONFIG, read_config, save_pretrained
    from zoo.card import write_card
    from zoo.io import write_text

    sources = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    calibrating = calibrate or temperature is not None
    if calibrate and temperature is not None:
        raise ValueError("give --calibrate (fit a temperature on validation) or --temperature T (fold T), not both")
    probe = next(iter(sorted(sources[0].glob("*.ckpt")))) if sources[0].is_dir() else sources[0]
    meta = torch.load(probe, map_location="cpu", weights_only=True)
    task_cls = _import(meta["hyper_parameters"].get("_class_path", "zoo.tasks.translation.TranslationTask"))
    if calibrating and task_cls.task_name != "image":
        raise ValueError("--calibrate and --temperature are for image models (a softmax over intensities); this run is not one")
    higher = task_cls.task_name == "translation"  # BLEU; the others name a loss
    paths = [p for s in sources for p in pick_checkpoints(s, average, higher, last)]
    model = task_cls.load_from_checkpoint(paths[0], map_location="cpu")
    if model.tokenizers is None:
        raise ValueError(f"{paths[0]} carries no tokenizer; train it with the zoo CLI")
    if len(paths) > 1:
        model.load_state_dict(average_state(paths))

    dm, data = describe_data(paths, model.tokenizers, limit)
    calibration = None
    if calibrating:
        from zoo.calibrate import calibrate_image_model

        calibration = calibrate_image_model(model, dm, temperature)
    out = Path(out)
    save_pretrained(model, out, dtype=dtype, data=data)
    if not measure:
        return {"folder": str(out), "averaged": [str(p) for p in paths], "calibration": calibration}

    stored = zoo.load(str(out))  # measure what was stored, not what was trained
    measured = measure_stored(stored, dm, out, limit)
    config = read_config(out)
    config.update(name=name, description=description, metrics=measured["metrics"], reproduce=measured["reproduce"],
                  averaged=meta.get("averaged") or [p.name for p in paths], **measured["extra"])
    config["data"]["test_split"] = split_label(stored, dm)
    if calibration:
        config["calibration"] = calibration
    config["recipe"] = recipe or f"zoo reproduce {name}"
    body = card if card is not None else model_cards_section(name)
    write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    write_text(out / CARD, write_card(config, body=body))
    return {"folder": str(out), "size_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 1e6, 2),
            "num_params": config["num_params"], "metrics": measured["metrics"], "reproduce": measured["reproduce"],
            **measured["extra"], "calibration": calibration, "seconds": measured["seconds"],
            "sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}


def split_label(stored: Any, dm: Any) -> str:
    from zoo.evaluate import kind_of

    kind = kind_of(stored, dm)
    if kind == "image":
        return f"test ({len(dm.labels('test'))} held-out images)"
    if kind == "music":
        return "the data set's validation and test pieces, whole"
    return dm.describe().get("test_split", "test_2016_flickr")
