"""Every published checkpoint: metadata agrees with its files, and it reproduces its recorded BLEU."""

import json

import pytest
import torch

import zoo
from zoo.hub import checkpoints_dir, read_config

NAMES = zoo.list_models(pretrained=True)  # imports the model files, which register them


def folder(name):
    path = checkpoints_dir() / name
    if not (path / "config.json").exists():
        pytest.fail(f"{name} is registered but {path} is missing")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_metadata_matches_files(name):
    entry = zoo.get_pretrained(name)
    path = folder(name)
    config = read_config(path)
    assert config["name"] == name and config["arch"] == entry.arch
    assert config["metrics"] == entry.metrics, "registry metrics must be the ones measured with the stored weights"
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 20e6, f"{name} is {size / 1e6:.1f} MB; keep checkpoints under 20 MB"
    model = zoo.load(name)
    n = sum(p.numel() for p in {id(p): p for p in model.net.parameters()}.values())
    assert n == entry.params == config["num_params"]
    assert (checkpoints_dir().parent / entry.recipe).exists(), f"recipe {entry.recipe} is missing"
    card = (path / "README.md").read_text()
    for key, value in entry.metrics.items():
        assert f"| {key} | {value} |" in card


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_recorded_figure_on_a_fixed_slice(name, request):
    """Translation: greedy sacreBLEU within 0.5; language models: perplexity within 1%; images: bits/dim within 0.02."""
    from zoo.metrics import bleu

    config = read_config(folder(name))
    rep = config["reproduce"]
    torch.manual_seed(0)
    model = zoo.load(name)
    if config["task"] == "image":
        from zoo.data.pixels import MissingDataError, PixelDataModule

        data = config["data"]
        dm = PixelDataModule(source=data["dataset"], levels=data["levels"], task=data["task"],
                             downsample=data.get("downsample", 2), split_seed=data["split_seed"], download=False)
        try:
            images, labels = dm.images("test")[: rep["first"]], dm.labels("test")[: rep["first"]]
        except MissingDataError:
            pytest.skip(f"{data['dataset']} is not available locally (set ZOO_DATA_DIR)")
        bpd = model.bits_per_dim(images, labels=labels if model.net.config.num_classes else None)
        assert abs(bpd - rep["bpd"]) <= 0.02, f"{name}: {bpd:.4f} bits/dim vs recorded {rep['bpd']}"
        return
    if config["data"].get("encoding") in ("chorale", "performance"):  # MIDI events: NLL within 0.01
        from zoo.data.midi import MIDIDataModule

        data = config["data"]
        limit = rep["first"] if data["source"] == "jsb" else None  # JSB's split is fixed: read only what is needed
        dm = MIDIDataModule(source=data["source"], encoding=data["encoding"], limit=limit)
        try:
            batches = dm.eval_batches(rep["split"], first=rep["first"])
        except FileNotFoundError:
            pytest.skip(f"{data['dataset']} is not available locally (set ZOO_DATA_DIR)")
        nll = model.mean_nll(batches)
        assert abs(nll - rep["nll"]) <= 0.01, f"{name}: NLL {nll:.4f} vs recorded {rep['nll']}"
        return
    multi30k = request.getfixturevalue("multi30k")
    if config["task"] == "translation":
        from zoo.data.text import TextDataModule

        src, ref = TextDataModule(data_dir=str(multi30k), tokenizer=name, test_limit=rep["first"]).texts("test")
        score = bleu(model.translate(src, beam_size=rep["beam_size"], batch_size=100), ref)
        assert abs(score - rep["sacrebleu"]) <= 0.5, f"{name}: {score:.2f} BLEU vs recorded {rep['sacrebleu']}"
    else:
        from zoo.data.text import TextLMDataModule

        texts = TextLMDataModule(data_dir=str(multi30k), tokenizer=name, test_limit=rep["first"]).texts("test")
        ppl = model.perplexity(texts)
        assert abs(ppl - rep["ppl"]) <= 0.01 * rep["ppl"], f"{name}: perplexity {ppl:.2f} vs recorded {rep['ppl']}"
