"""Model cards (README.md of a checkpoint) written with huggingface_hub's ModelCard API.

The YAML header carries the model-index: one eval result per measured metric, so the
Hub shows the figures the card's table states.
"""

from __future__ import annotations

from typing import Any

METRIC_NAMES = {
    "sacrebleu": ("sacrebleu", "sacreBLEU (cased, detokenised, 13a)"),
    "bleu_lc": ("bleu", "BLEU (lowercased, 13a-tokenised)"),
    "ppl": ("perplexity", "perplexity per subword (</s> included)"),
    "bpd": ("bits_per_dim", "bits per dimension (NLL per sub-pixel, base 2)"),
    "mean_error": ("error", "test error (%), mean over the tasks"),
    "failed_tasks": ("failed_tasks", "tasks failed (test error above 5%)"),
    "error": ("error", "test error (%)"),  # error/task_N
}


TASK_TYPES = {"translation": "translation", "lm": "text-generation", "image": "unconditional-image-generation",
              "qa": "question-answering"}
_IMAGE_USAGE = {  # by the pixel data's task
    "unconditional": "images = model.generate(16, seed=0)  # uint8 (N, H, W)",
    "class_conditional": "images = model.generate(labels=[0, 1, 2, 3], seed=0)  # one image per class index",
    "super_resolution": "images = model.generate(src=low_res, seed=0)  # uint8 low-resolution (N, h, w) in, (N, H, W) out",
}


def _dataset_type(config: dict[str, Any]) -> str:
    """The data set's id for the model-index: the image data's name, PTB, else Multi30k."""
    data = config.get("data", {})
    if config.get("task") == "image":
        return data.get("dataset", "images")
    if config.get("task") == "qa":
        return "babi"
    return "ptb" if (data.get("datamodule") or {}).get("init_args", {}).get("dataset") == "ptb" else "multi30k"


def _eval_results(config: dict[str, Any]) -> list[Any]:
    from huggingface_hub import EvalResult

    data = config.get("data", {})
    task_type = TASK_TYPES.get(config.get("task", ""), config.get("task", ""))
    if config.get("task") == "image" and data.get("task") == "super_resolution":
        task_type = "image-to-image"
    results = []
    for key, value in (config.get("metrics") or {}).items():
        if not isinstance(value, (int, float)):
            continue
        base, _, decoding = key.partition("/")  # e.g. "sacrebleu/beam4"
        split = data.get("test_split", "test_2016_flickr")
        if base.startswith("val_") and base[4:] in METRIC_NAMES:  # e.g. PTB's val_ppl: the metric on validation
            base, split = base[4:], "validation"
        mtype, mname = METRIC_NAMES.get(base, (base, base))
        if base == "ppl" and data.get("per_token"):  # e.g. PTB: per word, <eos> included
            mname = f"perplexity per {data['per_token']}"
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=_dataset_type(config),
                dataset_name=data.get("dataset", "multi30k"),
                dataset_split=split,
                metric_type=mtype,
                metric_name=f"{mname}, {decoding}" if decoding else mname,
                metric_value=value,
            )
        )
    return results


def write_card(config: dict[str, Any], body: str | None = None) -> str:
    """The README.md text for a checkpoint with ``config`` (as written to config.json)."""
    from huggingface_hub import ModelCard, ModelCardData

    name = config.get("name") or config.get("arch", "zoo model")
    results = _eval_results(config)
    data = config.get("data", {})
    card_data = ModelCardData(
        library_name="zoo",
        license=config.get("license", "mit"),
        tags=["zoo", "pytorch-lightning", config.get("task", "")],
        language=[x for x in (data.get("src_lang"), data.get("tgt_lang"), data.get("lang")) if x] or None,
        model_name=name,
        eval_results=results or None,
    )
    metrics = config.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    table = f"| metric | value |\n| --- | --- |\n{rows}\n" if rows else "No metrics recorded.\n"
    facts = {
        "architecture": f"`{config.get('arch')}`",
        "task": config.get("task", ""),
        "parameters": f"{config.get('num_params', 0):,}",
        "stored as": config.get("dtype", "float32"),
        "data": data.get("dataset", ""),
        "recipe": f"`{config['recipe']}`" if config.get("recipe") else "",
        "zoo version": config.get("zoo_version", ""),
    }
    fact_rows = "\n".join(f"| {k} | {v} |" for k, v in facts.items() if v)
    usage = {
        "translation": f'model = zoo.load("{name}")\nprint(model.translate(["Ein Mann fährt Fahrrad."], beam_size=4))',
        "lm": f'model = zoo.load("{name}")\nprint(model.sample(["A man"], max_len=20, top_p=0.9))',
        "image": f'model = zoo.load("{name}")\n' + _IMAGE_USAGE.get(data.get("task", ""), _IMAGE_USAGE["unconditional"]),
        "qa": f'model = zoo.load("{name}")\n'
              'print(model.answer(["Mary moved to the bathroom.", "John went to the hallway."], "Where is Mary?"))',
    }.get(config.get("task", ""), f'model = zoo.load("{name}")')
    text = f"""---
{card_data.to_yaml()}
---

# {name}

{config.get("description", "")}

| | |
| --- | --- |
{fact_rows}

```python
import zoo
{usage}
```

## Evaluation

{table}
{body or ""}
"""
    return str(ModelCard(text))
