"""Hub layout: save -> strict load -> identical outputs; resolution through the HF cache offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.hub import load_weights, resolve_folder

SRC = torch.tensor([[5, 9, 14, 3], [7, 8, 3, 0]])
TGT = torch.tensor([[2, 6, 11], [2, 12, 4]])


def test_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    loaded = zoo.load(str(tmp_path / "ckpt"))
    assert not loaded.training
    assert torch.equal(tiny_model(SRC, TGT), loaded(SRC, TGT))
    assert loaded.translate(["Ein Mann."], beam_size=2, max_len=6) == tiny_model.translate(["Ein Mann."], beam_size=2, max_len=6)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["task"] == "translation" and config["arch"] == "transformer_tiny"
    assert config["zoo_version"] == zoo.__version__
    assert config["tokenizer"]["joint"] is True
    assert config["num_params"] == sum(p.numel() for p in {id(p): p for p in tiny_model.net.parameters()}.values())


def test_from_pretrained_classmethod(tiny_model, tmp_path):
    from zoo.tasks.translation import TranslationTask

    tiny_model.save_pretrained(tmp_path)
    loaded = TranslationTask.from_pretrained(str(tmp_path))
    assert torch.equal(tiny_model(SRC, TGT), loaded(SRC, TGT))


TIED = {"src_embed.weight", "tgt_embed.weight", "out_proj.weight"}  # transformer_tiny shares one matrix three ways


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tied_weights_stored_once_and_stay_tied(tiny_model, tmp_path, dtype):
    tiny_model.save_pretrained(tmp_path, dtype=dtype)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert len(keys & TIED) == 1
    net = zoo.load(str(tmp_path)).net
    assert net.out_proj.weight is net.src_embed.weight and net.tgt_embed.weight is net.src_embed.weight
    assert next(tiny_model.parameters()).dtype == torch.float32  # the float16 copy is saved, the model left as it was


@pytest.mark.parametrize("stored", sorted(TIED))
def test_a_tied_tensor_loads_under_any_of_its_names(tiny_model, tmp_path, stored):
    """Files written by earlier versions keep the tied matrix under another of its names (the published
    transformer_small.multi30k under src_embed.weight): every name loads, strictly, and stays tied."""
    tiny_model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    matrix = state.pop(next(iter(TIED & set(state))))
    save_file({**state, stored: matrix}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = zoo.load(str(tmp_path))
    assert loaded.net.out_proj.weight is loaded.net.src_embed.weight
    assert torch.equal(tiny_model(SRC, TGT), loaded(SRC, TGT))
    state[stored] = matrix  # and a second copy: a tie stored twice is one tensor too many
    state["out_proj.weight" if stored != "out_proj.weight" else "src_embed.weight"] = matrix.clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"do not match the model: missing .*, unexpected \['(out_proj|tgt_embed)\.weight"):
        zoo.load(str(tmp_path))


def test_saving_the_same_weights_gives_the_same_bytes(tiny_model, tmp_path):
    """One metadata entry only: safetensors writes several in random order, which would change the sha256."""
    from safetensors import safe_open

    tiny_model.save_pretrained(tmp_path / "a")
    tiny_model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with safe_open(str(tmp_path / "a" / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_float16_storage(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path, dtype="float16")
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "model.safetensors")).values())
    loaded = zoo.load(str(tmp_path))
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(tiny_model(SRC, TGT), loaded(SRC, TGT), atol=2e-2, rtol=2e-2)


def test_renamed_key_fails_naming_it(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["encoder.0.ffn.9.weight"] = state.pop("encoder.0.ffn.0.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['encoder.0.ffn.0.weight'\].*unexpected \['encoder.0.ffn.9.weight'\]"):
        zoo.load(str(tmp_path))


def test_config_that_does_not_match_weights(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hparams"]["arch_args"]["d_ff"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"other shapes.*encoder.0.ffn.0.weight \(128, 64\) vs \(96, 64\)"):
        zoo.load(str(tmp_path))
    config["hparams"]["arch_args"]["d_ff"] = 128
    config["hparams"]["arch_args"]["decoder_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing \[.*decoder.2"):
        zoo.load(str(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_file(tiny_model, tmp_path, damage):
    tiny_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 10, "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupt.*download or save it again"):
        zoo.load(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json.*save_pretrained"):
        zoo.load(str(tmp_path))


def test_missing_weights_file(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        zoo.load(str(tmp_path))


def test_no_pickle_is_read(tiny_model, tmp_path):
    """A pickle dropped in a checkpoint folder is never opened."""
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle; opening it would raise")
    zoo.load(str(tmp_path))


def test_load_by_repo_id_from_hf_cache_offline(tiny_model, tmp_path, monkeypatch):
    """Lay a repo out in the HF cache (blobs, snapshots, refs) and load it by id with HF_HUB_OFFLINE=1."""
    src = tmp_path / "src"
    tiny_model.save_pretrained(src)
    hub_cache = tmp_path / "hf" / "hub"
    repo = hub_cache / "models--zoo-test--tiny-transformer"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in src.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    code = f"""
import torch, zoo
m = zoo.load("zoo-test/tiny-transformer")
print(m.net.config.d_model, m.translate(["Ein Mann."], beam_size=1, max_len=4))
m2 = zoo.load("zoo-test/tiny-transformer", revision="{commit}")
src = torch.tensor([[5, 9, 3]]); tgt = torch.tensor([[2, 6]])
assert torch.equal(m(src, tgt), m2(src, tgt))
try:
    zoo.load("zoo-test/not-there")
except FileNotFoundError as e:
    print("ERR", e)
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("64 ")
    assert "ERR zoo-test/not-there is not in the Hugging Face cache" in out.stdout


def test_unknown_pretrained_name():
    with pytest.raises(KeyError, match="unknown pretrained model 'transformer_small.nothing'"):
        resolve_folder("transformer_small.nothing")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at"):
        resolve_folder("./no/such/folder")


def test_load_weights_names_shape_mismatch(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    other = zoo.create("transformer_tiny", src_vocab_size=50, tgt_vocab_size=50).net
    with pytest.raises(ValueError, match=r"(src_embed|out_proj).weight \(\d+, 64\) vs \(50, 64\)"):  # the tie's stored name
        load_weights(other, Path(tmp_path) / "model.safetensors")


def test_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous files intact and no temporaries behind."""
    tiny_model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.torch

    def broken(state, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_card_has_model_index(tiny_model, tmp_path):
    from huggingface_hub import ModelCard

    tiny_model.save_pretrained(tmp_path, metrics={"sacrebleu/greedy": 12.5, "bleu_lc/beam4": 14.0})
    card = ModelCard.load(tmp_path / "README.md")
    results = card.data.eval_results
    assert {(r.metric_type, r.metric_value) for r in results} == {("sacrebleu", 12.5), ("bleu", 14.0)}
    assert results[0].dataset_split == "test_2016_flickr"


def test_publish_dry_run_lists_files(tiny_model, tmp_path, capsys):
    from zoo.hub import publish

    tiny_model.save_pretrained(tmp_path)
    files = publish(str(tmp_path), "someone/tiny", dry_run=True)
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "README.md"]
    assert "would upload" in capsys.readouterr().out


def test_push_to_hub_uploads_the_saved_folder(tiny_model, monkeypatch):
    """push_to_hub goes through huggingface_hub's upload API with exactly the checkpoint files."""
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message, **kw):
            calls["files"] = sorted(os.listdir(folder_path))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_model.push_to_hub("someone/tiny")
    assert calls["repo"] == ("someone/tiny", False, True)
    assert calls["files"] == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert url.endswith("/commit/abc")


@pytest.mark.parametrize("kind", ["midi_events", "chorale_grid", "pixels"])
def test_every_kind_of_tokenizer_travels_with_the_weights(tmp_path, kind):
    from zoo.data.midi import ChoraleTokenizer, EventTokenizer
    from zoo.data.pixels import PixelTokenizer
    from zoo.data.tokenizer import read_tokenizer, tokenizer_from_str

    tok = {"midi_events": EventTokenizer(), "chorale_grid": ChoraleTokenizer(),
           "pixels": PixelTokenizer(17, max_value=16, height=8, width=8)}[kind]
    assert tokenizer_from_str(tok.to_str()) == tok
    model = zoo.create("rnn_lm", vocab_size=tok.vocab_size, pad_id=tok.pad_id, emb_dim=8, hidden_dim=8, layers=1)
    model.tokenizers = (tok, tok)
    model.save_pretrained(tmp_path / "m")
    assert read_tokenizer(tmp_path / "m" / "tokenizer.json") == tok
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["tokenizer"]["type"] == kind and config["tokenizer"]["special_tokens"]["pad"] == tok.pad_id
    loaded = zoo.load(str(tmp_path / "m"))
    assert loaded.tokenizers[1] == tok
    ckpt = {}
    loaded.on_save_checkpoint(ckpt)  # Lightning checkpoints carry the tokenizer as JSON text
    fresh = zoo.create("rnn_lm", vocab_size=tok.vocab_size, pad_id=tok.pad_id, emb_dim=8, hidden_dim=8, layers=1)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.tokenizers[0] == tok and fresh.tokenizers[1] is fresh.tokenizers[0]
