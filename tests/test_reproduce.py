"""zoo reproduce: every published checkpoint has a chain, every recipe belongs to one, and every
chain runs whole at smoke scale in an empty folder (a chain that reads a file no earlier step
of it wrote fails here)."""

import json
from pathlib import Path

import pytest
import yaml

import zoo
from zoo.cli import run
from zoo.reproduce import CHAINS, load_chains, reproduce

REPO = Path(__file__).resolve().parents[1]
CHAIN_NAMES = list(load_chains())
EXAMPLES = {"transformer_small.finetune.yaml"}  # recipes for users, not for a published checkpoint


def test_every_published_checkpoint_has_a_chain():
    assert sorted(CHAIN_NAMES) == sorted(zoo.list_models(pretrained=True))


def test_every_recipe_belongs_to_a_chain():
    used = {Path(step.spec).name for steps in load_chains().values() for step in steps if step.kind == "fit"}
    recipes = {p.name for p in (REPO / "configs").glob("*.yaml")} - {CHAINS.name} - EXAMPLES
    assert recipes - used == set(), "recipes no chain uses: delete them, keep what they taught in MODEL_CARDS.md"
    assert used - recipes == set(), "chains name recipes that do not exist"


def test_a_chain_that_reads_what_it_did_not_write_is_refused(tmp_path):
    bad = tmp_path / "chains.yaml"
    bad.write_text(yaml.safe_dump({"x.y": [{"id": "b", "fit": "configs/a.yaml", "init_from": "a"},
                                           {"id": "e", "export": {"from": "b"}}]}))
    with pytest.raises(ValueError, match="step b of x.y reads a, which no earlier step writes"):
        load_chains(bad)


def test_list_names_every_chain_and_its_cost(capsys):
    run(["reproduce", "--list"])
    out = capsys.readouterr().out
    for name in CHAIN_NAMES:
        assert f"{name}  (about " in out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", CHAIN_NAMES)
def test_chain_runs_whole_at_smoke_scale(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing but the clone (by absolute path), the data and the chain's own folder
    out = tmp_path / "out"
    result = reproduce(name, out, smoke=True)
    steps = load_chains()[name]
    state = json.loads((out / "chain.json").read_text())
    assert list(state["done"]) == [s.id for s in steps]
    stored = zoo.load(result["folder"])
    assert stored.pretrained_config["name"] == name
    assert set(result["metrics"]) == set(zoo.get_pretrained(name).metrics)
    assert result["published"] == zoo.get_pretrained(name).metrics


def test_resume_skips_finished_steps_and_a_second_run_needs_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = "ngram.multi30k_en"
    reproduce(name, tmp_path / "out", smoke=True)
    with pytest.raises(ValueError, match="add --resume"):
        reproduce(name, tmp_path / "out", smoke=True)
    state = json.loads((tmp_path / "out" / "chain.json").read_text())
    del state["done"]["export"]
    (tmp_path / "out" / "chain.json").write_text(json.dumps(state))
    capsys.readouterr()
    reproduce(name, tmp_path / "out", smoke=True, resume=True)
    out = capsys.readouterr().out
    assert "fit done earlier, skipped" in out and "ngram.multi30k_en / export" in out
