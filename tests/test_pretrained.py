"""Every published checkpoint: metadata agrees with its files, it has a chain that rebuilds it, and it
reproduces its recorded figure on a fixed slice."""

import json

import pytest
import torch

import zoo
from zoo.evaluate import evaluate
from zoo.hub import checkpoints_dir, read_config
from zoo.reproduce import load_chains

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
    assert name in load_chains(), f"configs/chains.yaml has no chain that rebuilds {name}"
    assert config["recipe"] == f"zoo reproduce {name}"
    assert config["data"]["datamodule"]["class_path"], "config.json must say which data it is measured on"
    card = (path / "README.md").read_text()
    for key, value in entry.metrics.items():
        assert f"| {key} | {value} |" in card


# how far a figure measured here may be from the recorded one (perplexity: 1%)
TOLERANCE = {"sacrebleu/greedy": 0.5, "bpd": 0.02, "val_nll": 0.01}


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_recorded_figure_on_a_fixed_slice(name):
    """zoo.evaluate on the slice config.json's ``reproduce`` names gives the figure recorded there."""
    rep = read_config(folder(name))["reproduce"]
    split = "val" if rep["split"] == "val" else "test"
    torch.manual_seed(0)
    try:
        result = evaluate(name, split=split, limit=rep["first"], quick=True)
    except FileNotFoundError as err:  # MissingDataError too
        pytest.skip(f"the data of {name} is not available locally (set ZOO_DATA_DIR): {err}")
    assert result["recorded"], f"{name}: no recorded figure for its first {rep['first']} {split} items"
    for key, recorded in result["recorded"].items():
        measured = result["metrics"][key]
        tolerance = TOLERANCE.get(key, 0.01 * recorded)
        assert abs(measured - recorded) <= tolerance, f"{name}: {key} {measured} vs recorded {recorded}"
