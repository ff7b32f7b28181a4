"""Loading is strict and safe: published digests, no unpickling, no path traversal, atomic saves."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.hub import ALLOWED_FILES, checkpoints_dir, load_weights, read_pretrained, resolve_folder, sha256_of
from zoo.registry import Pretrained, check_repo_id, check_revision, register_pretrained

SRC = torch.tensor([[5, 9, 14, 3], [7, 8, 3, 0]])
TGT = torch.tensor([[2, 6, 11], [2, 12, 4]])
NAMES = zoo.list_models(pretrained=True)
REPO = Path(__file__).resolve().parents[1]


# -- every published checkpoint carries the digest of its weights ---------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_sha256_is_that_of_the_stored_weights(name):
    entry = zoo.get_pretrained(name)
    assert len(entry.sha256) == 64, f"{name} records no sha256; run sha256sum checkpoints/{name}/model.safetensors"
    assert sha256_of(checkpoints_dir() / name / "model.safetensors") == entry.sha256


@pytest.fixture
def copied_checkpoint(tmp_path, monkeypatch):
    """transformer_small.multi30k (quick to load), copied into a checkpoints folder of its own."""
    name = "transformer_small.multi30k"
    shutil.copytree(checkpoints_dir() / name, tmp_path / name)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    return name, tmp_path / name


def test_a_tampered_copy_is_refused(copied_checkpoint):
    name, folder = copied_checkpoint
    assert read_pretrained(name).folder == folder
    zoo.load(name)  # the untouched copy loads
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel())[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1.0  # one number changed: still a valid file of the right shapes
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        zoo.load(name)
    message = str(err.value)
    assert "\n" not in message
    assert f"differs from the published {name} weights" in message
    assert f"delete {folder} to download it again" in message and "revision=" in message
    # a folder given by path is the user's own: no published digest applies to it
    zoo.load(str(folder))


def test_fine_tuning_from_a_tampered_name_is_refused_too(copied_checkpoint):
    from zoo.tasks.translation import TranslationTask

    name, folder = copied_checkpoint
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # the last bit of the last fp16 number
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"differs from the published {name} weights"):
        TranslationTask(init_from=name)


# -- strict loading names both architectures -------------------------------------------
def test_weights_of_another_architecture_name_both(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    lstm = zoo.create("seq2seq_lstm", src_vocab_size=50, tgt_vocab_size=50, emb_dim=16, hidden_dim=16).net
    with pytest.raises(ValueError) as err:
        read_pretrained(str(tmp_path)).load_into(lstm, "seq2seq_lstm")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"weights in {tmp_path / 'model.safetensors'} do not match the model: missing [")
    assert "unexpected ['decoder.0." in message
    assert "the file was made for transformer_tiny and is being loaded into seq2seq_lstm (RNNSeq2Seq)" in message


def test_weights_swapped_under_a_config_say_so(tiny_model, tmp_path):
    """config.json says transformer_tiny, model.safetensors holds an LSTM's weights."""
    tiny_model.save_pretrained(tmp_path / "tiny")
    lstm = zoo.create("seq2seq_lstm", src_vocab_size=50, tgt_vocab_size=50, emb_dim=16, hidden_dim=16)
    lstm.tokenizers = tiny_model.tokenizers
    lstm.save_pretrained(tmp_path / "lstm")
    shutil.copy(tmp_path / "lstm" / "model.safetensors", tmp_path / "tiny" / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \[.*unexpected \[.*the file was made for transformer_tiny and is being "
                                         r"loaded into transformer_tiny \(Transformer\) built from the same config, so "
                                         r"model.safetensors is not the file config.json describes"):
        zoo.load(str(tmp_path / "tiny"))


def test_shape_mismatch_names_the_differing_config(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    wider = zoo.create("transformer_tiny", src_vocab_size=tiny_model.hparams.src_vocab_size,
                       tgt_vocab_size=tiny_model.hparams.tgt_vocab_size, d_ff=96).net
    with pytest.raises(ValueError, match=r"other shapes than the model: encoder.0.ffn.0.weight \(128, 64\) vs \(96, 64\).*"
                                         r"made for transformer_tiny .* the configs differ in d_ff 128 vs 96"):
        load_weights(wider, tmp_path / "model.safetensors")


# -- save_pretrained is all or nothing -------------------------------------------------
def test_a_crash_mid_save_leaves_the_previous_checkpoint_whole(tiny_model, tmp_path, monkeypatch):
    from zoo.data.tokenizer import TextTokenizer

    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    expected = tiny_model(SRC, TGT)

    v = tiny_model.hparams.src_vocab_size
    other = zoo.create("transformer_tiny", src_vocab_size=v, tgt_vocab_size=v, d_ff=96, encoder_layers=1)
    other.tokenizers = tiny_model.tokenizers
    written = []

    def crash(self, path):
        written.append(path)
        raise OSError("disk full")  # after model.safetensors was written, before the rest

    monkeypatch.setattr(TextTokenizer, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(folder)
    assert written, "the crash must come after the first file"
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before  # no temporaries, nothing changed
    torch.testing.assert_close(zoo.load(str(folder))(SRC, TGT), expected, rtol=0, atol=0)


def test_a_new_save_removes_files_of_the_old_one(tiny_model, tmp_path, parallel_tsv):
    from zoo.data.text import TextDataModule

    folder = tmp_path / "ckpt"
    dm = TextDataModule(dataset="files", train_files=[str(parallel_tsv)], vocab_size=80, joint_vocab=False)
    separate = zoo.create("transformer_tiny", src_vocab_size=dm.src_vocab_size, tgt_vocab_size=dm.tgt_vocab_size,
                          share_embeddings=False)
    separate.tokenizers = dm.tokenizers
    separate.save_pretrained(folder)
    assert (folder / "tokenizer_src.json").exists()
    tiny_model.save_pretrained(folder)  # one joint vocabulary: a stale tokenizer_src.json would be read as its source side
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    loaded = zoo.load(str(folder))
    assert loaded.tokenizers[0] is loaded.tokenizers[1]
    assert loaded.tokenizers[0].tok.to_str() == tiny_model.tokenizers[0].tok.to_str()


# -- nothing downloaded is unpickled ---------------------------------------------------
def test_only_json_safetensors_and_the_card_are_downloaded(monkeypatch, tmp_path, tiny_model):
    import huggingface_hub

    asked = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        tiny_model.save_pretrained(tmp_path / "snap")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    zoo.load("someone/tiny", revision="v1.0")
    assert asked == {"repo_id": "someone/tiny", "revision": "v1.0", "allow_patterns": ALLOWED_FILES}
    assert {Path(p).suffix for p in ALLOWED_FILES} == {".json", ".safetensors", ".md"}


def test_loading_never_unpickles(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path)

    def no(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", no)
    monkeypatch.setattr(pickle, "load", no)
    monkeypatch.setattr(pickle, "loads", no)
    monkeypatch.setattr(pickle, "Unpickler", no)
    assert torch.equal(zoo.load(str(tmp_path))(SRC, TGT), tiny_model(SRC, TGT))


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_ckpt(tiny_model, tmp_path) -> tuple[Path, Path]:
    """A Lightning checkpoint of tiny_model that also carries the payload."""
    import lightning as L

    path, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    checkpoint = {"state_dict": tiny_model.state_dict(), "pytorch-lightning_version": L.__version__,
                  "hyper_parameters": dict(tiny_model.hparams), "global_step": 0, "epoch": 0,
                  "extra": Payload(marker)}
    torch.save(checkpoint, path)
    assert not marker.exists()
    return path, marker


def test_a_checkpoint_with_a_pickled_payload_is_refused(evil_ckpt, monkeypatch):
    from zoo.tasks.translation import TranslationTask
    from zoo.training import AtomicCheckpointIO, load_checkpoint

    path, marker = evil_ckpt
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an environment that would turn the check off
    for attempt in (
        lambda: load_checkpoint(path),
        lambda: AtomicCheckpointIO().load_checkpoint(path),
        lambda: TranslationTask.load_from_checkpoint(path),
    ):
        with pytest.raises(ValueError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message
        assert re.search(rf"^{re.escape(str(path))} holds a reference to (posix|nt).system, which "
                         r"torch.load\(weights_only=True\) refuses: zoo does not unpickle code", message)
    assert not marker.exists()
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    torch.load(path, weights_only=False)  # the control: unpickled, the file does run its command
    assert marker.exists()


def test_zoo_fit_refuses_to_resume_from_it(evil_ckpt, parallel_tsv, tmp_path, monkeypatch):
    from zoo.cli import run

    path, marker = evil_ckpt
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(ValueError, match=r"holds a reference to (posix|nt).system"):
        run(["fit", "--model", "zoo.tasks.translation.TranslationTask", "--model.init_args.arch", "transformer_tiny",
             "--data", "zoo.data.text.TextDataModule", "--data.init_args.dataset", "files",
             "--data.init_args.train_files", f"[{parallel_tsv}]", "--data.init_args.vocab_size", "100",
             "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--ckpt_path", str(path)])
    assert not marker.exists()


def test_lightning_checkpoints_only_from_local_files_and_weights_only(evil_ckpt):
    from zoo.training import load_checkpoint

    with pytest.raises(ValueError, match="only from local files; download it, make sure where it came from"):
        load_checkpoint("https://example.com/model.ckpt")
    with pytest.raises(ValueError, match="only from local files"):
        load_checkpoint("s3://bucket/model.ckpt")
    with pytest.raises(ValueError, match="with weights_only=True only"):
        load_checkpoint(evil_ckpt[0], weights_only=False)
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        load_checkpoint(evil_ckpt[0].parent / "missing.ckpt")


# -- names never lead out of the checkpoints folder or the HF cache ---------------------
@pytest.fixture
def no_download(monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise AssertionError("a bad name reached the Hub client")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)


@pytest.mark.parametrize("repo_id", ["org/..", "org/a..b", "a--b/c", "org/na me", "org/x:y", "org/-x", "org/x.", "org/" + "x" * 96])
def test_bad_repo_ids_are_refused_before_any_download(repo_id, no_download):
    with pytest.raises(ValueError) as err:
        zoo.load(repo_id)
    assert "\n" not in str(err.value) and "is not a valid Hugging Face repo id" in str(err.value)


@pytest.mark.parametrize("name", ["../../etc", "a/../../b", "/nonexistent/abs/path", "~/nonexistent-zoo-dir/x", "../x.y"])
def test_paths_are_paths_never_names_or_repo_ids(name, no_download, tmp_path, monkeypatch):
    """A path is looked up where it points (a folder the user gives is theirs), never under checkpoints/ or the Hub."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at"):
        resolve_folder(name)
    monkeypatch.chdir("/")
    if Path(name).expanduser().is_dir():  # /etc from /: there, but no checkpoint
        with pytest.raises(FileNotFoundError, match="has no config.json, so it is not a zoo checkpoint"):
            resolve_folder(name)


@pytest.mark.parametrize("revision", ["../../../etc/passwd", "/abs", "main/../x", "a b", ""])
def test_bad_revisions_are_refused(revision, no_download):
    with pytest.raises(ValueError, match="is not a valid revision"):
        zoo.load("someone/tiny", revision=revision)
    with pytest.raises(ValueError, match="is not a valid revision"):
        zoo.load(NAMES[0], revision=revision)


@pytest.mark.parametrize("entry", [
    dict(name="../../etc.x", hub_id="org/x"),
    dict(name="/abs/path.x", hub_id="org/x"),
    dict(name="a/../b.x", hub_id="org/x"),
    dict(name="noarch", hub_id="org/x"),
    dict(name="ok.tag", hub_id="org/../../x"),
    dict(name="ok.tag", hub_id="org/x", revision="../main"),
    dict(name="ok.tag", hub_id="org/x", sha256="not-hex"),
])
def test_registry_entries_that_could_become_bad_paths_are_refused(entry):
    with pytest.raises(ValueError):
        register_pretrained(Pretrained(**entry))
    assert entry["name"] not in zoo.list_models(pretrained=True)


def test_valid_ids_and_revisions_pass():
    for repo_id in ("zoo-models/transformer_small.multi30k", "gpt2", "Org_1/name-2.v3"):
        assert check_repo_id(repo_id) == repo_id
    for revision in (None, "main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"):
        assert check_revision(revision) == revision


def test_push_and_publish_check_the_repo_id(tiny_model, tmp_path, no_download):
    from zoo.hub import publish

    with pytest.raises(ValueError, match="is not a valid Hugging Face repo id"):
        tiny_model.push_to_hub("../evil")
    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a valid Hugging Face repo id"):
        publish(str(tmp_path), "org/a..b", dry_run=True)


def test_cli_says_it_in_one_line():
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "translate", "org/..", "Ein Hund."],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "zoo: error: 'org/..' is not a valid Hugging Face repo id: it reads ORG/NAME with letters, digits, '-', '_' "
        "and '.' (no '..' or '--', at most 96 characters); a local folder must exist"
    ]
