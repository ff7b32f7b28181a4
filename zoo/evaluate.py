"""How a checkpoint is measured: ``zoo evaluate NAME_OR_FOLDER``.

Every published figure comes from here, with the weights as stored: ``zoo evaluate`` prints
it beside the figure the checkpoint records, ``scripts/make_checkpoint.py`` records it, and
``zoo reproduce`` ends with it. The data is the checkpoint's own: config.json names the data
module and its settings (``data.datamodule``), read from ``--data-dir`` or where the data
modules look by default (``$ZOO_DATA_DIR``, ``../shared/data``, the download cache).

What is measured, by kind of model:

- translation: sacreBLEU and lowercased BLEU, greedy and beam 4, and the teacher-forced
  perplexity of the references;
- text language models: perplexity per token, ``</s>`` included, of whole sentences, or
  of the split as one stream where the data is measured so (PTB: every word and ``<eos>``);
- models of musical events: mean NLL per event (nats) of whole pieces;
- image models: bits per dimension;
- question answering (bAbI): the test error of each task, their mean and the tasks failed
  (error above 5%), in percent.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import time
from typing import Any

import torch

__all__ = ["data_module", "evaluate", "measure", "format_report", "nll_by_position"]

SPLITS = ("val", "test")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def data_module(spec: dict[str, Any], tokenizers: Any, *, data_dir: str | None = None,
                limit: int | None = None) -> Any:
    """The data module ``spec`` (``{"class_path", "init_args"}``) describes, with the model's tokenizers.

    Evaluation splits are read whole unless ``limit`` keeps their first N items.
    """
    cls = _import(spec["class_path"])
    accepted = inspect.signature(cls).parameters
    args = {k: v for k, v in spec.get("init_args", {}).items() if not k.startswith("_")}
    if data_dir is not None:
        args["data_dir"] = data_dir
    for split in SPLITS:
        if f"{split}_limit" in accepted:
            args[f"{split}_limit"] = limit
    dm = cls(**args)
    dm._tokenizers, dm._tokenizer = tokenizers, tokenizers[1]
    return dm


def datamodule_spec(config: dict[str, Any], name: str) -> dict[str, Any]:
    spec = (config.get("data") or {}).get("datamodule")
    if not spec:
        raise ValueError(
            f"{name}'s config.json does not say which data it was measured on (data.datamodule); "
            "re-export it with scripts/make_checkpoint.py, or measure it with zoo test --config RECIPE"
        )
    return spec


def kind_of(model: Any, dm: Any) -> str:
    """translation, text, music, image or qa: what measure() does with the model."""
    if model.task_name in ("translation", "image", "qa"):
        return model.task_name
    return "music" if hasattr(dm, "eval_batches") else "text"


# -- measuring ----------------------------------------------------------------------
def measure(model: Any, dm: Any, split: str = "test", limit: int | None = None, quick: bool = False) -> dict[str, Any]:
    """The figures of ``model`` on ``split`` of ``dm`` (its first ``limit`` items), and the seconds they took.

    ``quick``: translation models are scored by greedy sacreBLEU alone."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} cannot be measured; use one of {', '.join(SPLITS)}")
    start = time.perf_counter()
    kind = kind_of(model, dm)
    with torch.no_grad():
        if kind == "translation":
            metrics = _translation(model, dm, split, limit, quick)
        elif kind == "qa":
            metrics = _qa(model, dm, split, limit, quick)
        else:
            metrics = {"text": _text, "music": _music, "image": _image}[kind](model, dm, split, limit)
    return {"kind": kind, "split": split, "first": limit, "metrics": metrics,
            "seconds": round(time.perf_counter() - start, 1)}


def _head(items: list[Any], limit: int | None) -> list[Any]:
    return items if limit is None else items[:limit]


def _translation(model: Any, dm: Any, split: str, limit: int | None, quick: bool = False) -> dict[str, float]:
    from zoo.metrics import TokenNLL, translation_scores

    src, ref = (_head(t, limit) for t in dm.texts(split))
    metrics: dict[str, float] = {}
    if quick:
        return {"sacrebleu/greedy": translation_scores(model.translate(src, beam_size=1, batch_size=100), ref)["sacrebleu"]}
    for beam, label in ((1, "greedy"), (4, "beam4")):
        scores = translation_scores(model.translate(src, beam_size=beam, batch_size=100), ref)
        metrics.update({f"{k}/{label}": v for k, v in scores.items()})
    dm.setup("test" if split == "test" else "validate")
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    nll, seen = TokenNLL(), 0
    for batch in loader:  # teacher-forced: the perplexity of the references
        if limit is not None and seen >= limit:
            break
        target = batch["tgt_out"]
        logp = model(batch["src"], batch["tgt_in"]).float().log_softmax(-1)
        nll.update(logp.gather(-1, target[..., None]).squeeze(-1), target.ne(model.hparams.pad_id))
        seen += target.size(0)
    metrics["ppl"] = round(float(torch.exp(nll.compute())), 2)
    return metrics


def _text(model: Any, dm: Any, split: str, limit: int | None) -> dict[str, float]:
    if getattr(dm, "scores_stream", False):  # the split as one stream; limit: its first targets
        return {"ppl": round(math.exp(model.mean_nll(dm.stream_batches(split, first=limit))), 2)}
    return {"ppl": round(model.perplexity(_head(dm.texts(split), limit)), 2)}


def _qa(model: Any, dm: Any, split: str, limit: int | None, quick: bool = False) -> dict[str, float]:
    """Test error per task (its first ``limit`` questions), the mean and the failed tasks; ``quick``: the mean alone."""
    from zoo.tasks.qa import error_summary

    summary = error_summary(model.task_errors(dm.question_batches(split, first=limit)))
    return {"mean_error": summary["mean_error"]} if quick else summary


def _music(model: Any, dm: Any, split: str, limit: int | None) -> dict[str, float]:
    return {f"{split}_nll": round(model.mean_nll(dm.eval_batches(split, first=limit)), 4)}


def _image(model: Any, dm: Any, split: str, limit: int | None) -> dict[str, float]:
    if limit is None:
        return {"bpd": round(model.bits_per_dim(dm, split=split), 4)}
    images = dm.images(split)[:limit]
    cond = {"labels": dm.labels(split)[:limit]} if model.net.config.num_classes else {}
    return {"bpd": round(model.bits_per_dim(images, **cond), 4)}


POSITION_EDGES = (0, 128, 256, 512, 1024)  # the ranges of positions the music cards report


@torch.no_grad()
def nll_by_position(model: Any, batches: Any, edges: tuple[int, ...] = POSITION_EDGES) -> dict[str, float]:
    """Mean NLL of the targets at positions [edges[i], edges[i+1]) of each piece (the last: to its end).

    Shows what a model makes of positions and distances longer than its training windows."""
    total, count = [0.0] * len(edges), [0] * len(edges)
    model.eval()
    for batch in batches:
        tokens, targets = batch["tokens"], batch["targets"]
        nll, real = -model.net.score(tokens, targets).double(), targets.ne(model.hparams.pad_id)
        bounds = [*edges, tokens.shape[1]]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            total[i] += float((nll[:, a:b] * real[:, a:b]).sum())
            count[i] += int(real[:, a:b].sum())
    names = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    return {n: round(t / c, 4) for n, t, c in zip(names, total, count) if c}


# -- the command --------------------------------------------------------------------
def recorded_figures(config: dict[str, Any], split: str, limit: int | None) -> dict[str, float]:
    """What the checkpoint records for this split (whole), or for its first ``limit`` items."""
    if limit is None:
        metrics = config.get("metrics") or {}
        if split == "test":
            return {k: v for k, v in metrics.items() if not k.startswith("val_")}
        return {k: v for k, v in metrics.items() if k.startswith(f"{split}_")}
    head = config.get("reproduce") or {}
    if head.get("first") != limit or str(head.get("split", "test")).split("_")[0] != split:
        return {}
    names = {"sacrebleu": "sacrebleu/greedy", "nll": f"{split}_nll"}  # the head figure is greedy BLEU, NLL per event
    return {names.get(k, k): v for k, v in head.items()
            if isinstance(v, (int, float)) and k not in ("first", "beam_size")}


def evaluate(name_or_folder: str, *, split: str = "test", data_dir: str | None = None,
             limit: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Measure a checkpoint on its own data; returns the figures beside those it records.

    ``quick``: translation models by greedy sacreBLEU alone (the figure the first 100 items record)."""
    import zoo

    model = zoo.load(name_or_folder)
    config = model.pretrained_config
    dm = data_module(datamodule_spec(config, name_or_folder), model.tokenizers, data_dir=data_dir, limit=limit)
    result = measure(model, dm, split, limit, quick)
    recorded = recorded_figures(config, split, limit)
    recorded.update({k[len(split) + 1 :]: v for k, v in recorded.items() if k.startswith(f"{split}_")})  # val_ppl: ppl
    result["recorded"] = {k: recorded[k] for k in result["metrics"] if k in recorded}
    result["name"] = name_or_folder
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures as a small table: measured, recorded, difference."""
    split = result["split"] + ("" if result["first"] is None else f", first {result['first']}")
    lines = [f"{result['name']} ({result['kind']}) on {split}, {result['seconds']} s", "",
             f"{'metric':22s} {'measured':>10s} {'recorded':>10s}"]
    recorded = result.get("recorded") or {}
    for key, value in result["metrics"].items():
        other = recorded.get(key)
        lines.append(f"{key:22s} {value:10.4g} {'' if other is None else format(other, '10.4g'):>10s}")
    if result["kind"] == "qa":
        from zoo.tasks.qa import FAILED_ABOVE

        failed = [k.rsplit("_", 1)[1] for k, v in result["metrics"].items() if k.startswith("error/task_") and v > FAILED_ABOVE]
        lines.append(f"\nfailed tasks (error above {FAILED_ABOVE:g}%): {', '.join(failed) or 'none'}")
    return "\n".join(lines)


def main(args: Any) -> None:
    result = evaluate(args.name, split=args.split, data_dir=args.data_dir, limit=args.limit)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if any(isinstance(v, float) and math.isnan(v) for v in result["metrics"].values()):
        raise ValueError(f"{args.name} scored NaN on {args.split}; the weights or the data are broken")
