"""Interrupted training loses nothing, and the same seed gives the same run.

A tiny ``zoo fit`` (a small LSTM language model, truncated BPTT over 30 sentences) runs in
subprocesses: once without interruption, once killed with SIGKILL right after its first
checkpoint and resumed with ``--ckpt_path last``. The resumed run must start at the saved
step and log, step for step, the losses of the uninterrupted run (dropout included: the
random state resumes too). Reproducibility: the same seed and config give the same first
20 losses of a transformer_tiny translation run in another process.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SENTENCES

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
seed_everything: 0
checkpoint_every_n_steps: {every}
trainer:
  max_steps: {max_steps}
  accelerator: cpu
  deterministic: true
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {root}
      name: csv
{callbacks}{task}"""

LM = """\
model:
  class_path: zoo.tasks.lm.CausalLMTask
  init_args:
    arch: rnn_lm
    arch_args: {{emb_dim: 48, hidden_dim: 48, dropout: 0.3}}   # dropout: the random state matters
    lr: 3.0e-3
    warmup_steps: 0
data:
  class_path: zoo.data.text.TextLMDataModule
  init_args:
    dataset: files
    train_files: [{text}]
    val_files: [{text}]        # required by the LM data module; not run (limit_val_batches: 0)
    vocab_size: 100
    mode: stream               # the same chunks in the same order every epoch
    batch_size: 4
    bptt: 8
"""

TRANSLATION = """\
model:
  class_path: zoo.tasks.translation.TranslationTask
  init_args:
    arch: transformer_tiny     # dropout 0.1
    lr: 1.0e-3
    warmup_steps: 4
data:
  class_path: zoo.data.text.TextDataModule
  init_args:
    dataset: files
    train_files: [{tsv}]
    vocab_size: 100
    max_tokens: 80
"""

# slows the run down after its first checkpoint, so the test can kill it between two checkpoints
PACE = """\
import time
from lightning.pytorch import Callback

class Pace(Callback):
    def __init__(self, after: int = 0, seconds: float = 0.5):
        self.after, self.seconds = after, seconds

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step > self.after:
            time.sleep(self.seconds)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The training text, the pacing callback's module, and how many steps an epoch of the LM takes."""
    from zoo.data.text import TextLMDataModule

    folder = tmp_path_factory.mktemp("corpus")
    tsv, text = folder / "pairs.tsv", folder / "english.txt"
    tsv.write_text("".join(f"{de}\t{en}\n" for de, en in SENTENCES * 5), encoding="utf-8")
    text.write_text("".join(f"{en}\n" for _, en in SENTENCES * 5), encoding="utf-8")
    (folder / "pace.py").write_text(PACE)
    dm = TextLMDataModule(dataset="files", train_files=[str(text)], vocab_size=100, mode="stream", batch_size=4, bptt=8)
    return {"folder": folder, "tsv": tsv, "text": text, "lm_epoch": len(dm.train_dataloader())}


def write_config(corpus, root: Path, max_steps: int, every: int, task: str = LM, pace_after: int | None = None) -> Path:
    callbacks = ""
    if pace_after is not None:
        callbacks = (f"  callbacks:\n    - class_path: pace.Pace\n      init_args:\n"
                     f"        after: {pace_after}\n        seconds: 0.5\n")
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    task = task.format(tsv=corpus["tsv"], text=corpus["text"])
    path.write_text(CONFIG.format(every=every, max_steps=max_steps, root=root, callbacks=callbacks, task=task))
    return path


def fit(corpus, config: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(corpus["folder"]), str(REPO)])}
    cmd = [sys.executable, "-m", "zoo.cli", "fit", "--config", str(config), *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def logged_losses(root: Path, version: int = 0) -> dict[int, float]:
    """step -> train/loss of one run, from its CSVLogger file."""
    with open(root / "csv" / f"version_{version}" / "metrics.csv", newline="") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> tuple[Path, int]:
    total = 3 * corpus["lm_epoch"]
    root = tmp_path_factory.mktemp("straight")
    fit(corpus, write_config(corpus, root, max_steps=total, every=corpus["lm_epoch"]))
    return root, total


def test_killed_run_resumes_where_it_stopped_with_the_same_losses(corpus, uninterrupted, tmp_path):
    per_epoch = corpus["lm_epoch"]
    straight, total = uninterrupted
    root = tmp_path / "killed"
    # last.ckpt every epoch (a run resumed mid-epoch replays that epoch from its first batch: Lightning
    # cannot fast-forward a plain DataLoader), and slowed down after the first one
    proc = fit(corpus, write_config(corpus, root, max_steps=10_000, every=per_epoch, pace_after=per_epoch), wait=False)
    last = root / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists():
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: what a power cut or the OOM killer does
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    saved = torch.load(last, map_location="cpu", weights_only=True)  # whole: it was renamed into place
    saved_step = saved["global_step"]
    assert saved_step == per_epoch

    resumed = fit(corpus, write_config(corpus, root, max_steps=total, every=per_epoch), "--ckpt_path", "last")
    assert "Restoring states from the checkpoint path" in resumed.stderr
    after = logged_losses(root, version=1)
    assert sorted(after) == list(range(saved_step, total)), "the resumed run must continue at the saved step"
    before = logged_losses(straight)
    assert len(before) == total
    # the same computation in the same order: equal to float precision (they come out bit for bit)
    torch.testing.assert_close(
        torch.tensor([after[s] for s in sorted(after)]), torch.tensor([before[s] for s in sorted(after)]),
        rtol=1e-5, atol=1e-6,
    )
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == total


def test_same_seed_and_config_give_the_same_first_20_losses(corpus, tmp_path):
    """transformer_tiny translation, dropout 0.1, shuffled token batches: two processes, one result."""
    runs = []
    for name in ("first", "again"):
        fit(corpus, write_config(corpus, tmp_path / name, max_steps=20, every=100, task=TRANSLATION))
        runs.append(logged_losses(tmp_path / name))
    first, again = runs
    assert sorted(first) == sorted(again) == list(range(20))
    assert [first[s] for s in range(20)] == [again[s] for s in range(20)]  # bit for bit
    assert len(set(again.values())) == 20 and again[19] < again[0]  # a real run: every loss differs, and it learns


# -- the pieces: atomic checkpoint writes, the last checkpoint, the random state -------------------
KILLED_MID_WRITE = """
import os, signal, sys, torch
from zoo.training import AtomicCheckpointIO

io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

def dies_half_way(obj, f, *args, **kwargs):
    with open(f, "wb") as out:
        out.write(b"PK\\x03\\x04 the first half of a checkpoint")
        out.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dies_half_way
io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
"""


def test_a_checkpoint_killed_mid_write_keeps_the_previous_one(tmp_path):
    from zoo.training import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    out = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the old checkpoint, whole
    leftovers = [f for f in os.listdir(path.parent) if f != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.")  # the half-written temporary, beside it
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, path)  # the next save clears it away
    assert os.listdir(path.parent) == ["last.ckpt"]
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 3


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from zoo.training import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "epoch=0.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["epoch=0.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 1


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from zoo.training import RandomState

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch.save({"rng": RandomState().state_dict()}, tmp_path / "c.ckpt")
    draws = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    RandomState().load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    yield tmp_path
    torch.use_deterministic_algorithms(False)


def cli_trainer(corpus, *extra):
    from zoo.cli import run

    return run(["fit", "--model", "zoo.tasks.translation.TranslationTask", "--model.init_args.arch", "transformer_tiny",
                "--data", "zoo.data.text.TextDataModule", "--data.init_args.dataset", "files",
                "--data.init_args.train_files", f"[{corpus['tsv']}]", "--data.init_args.vocab_size", "100",
                "--data.init_args.max_tokens", "80", "--trainer.max_steps", "3", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", "run", *extra]).trainer


def test_zoo_fit_with_ddp_closes_its_process_group(corpus, in_tmp):
    # Lightning destroys only NCCL groups; a gloo group left to interpreter shutdown aborts the process
    # there about one time in ten (status -6), so the command destroys it when it is done
    import torch.distributed as dist

    saved = dict(os.environ)
    try:  # Lightning picks a free port for the one-process group
        trainer = cli_trainer(corpus, "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
                              "--trainer.devices", "1")
    finally:  # what the DDP launcher set in the environment stays in this test
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)
    assert trainer.global_step == 3 and trainer.world_size == 1
    assert not dist.is_initialized()


def test_zoo_fit_installs_its_safety_defaults(corpus, in_tmp):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.training import AtomicCheckpointIO, LastCheckpoint, RandomState

    trainer = cli_trainer(corpus, "--checkpoint_every_n_steps", "2")
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert any(isinstance(cb, RandomState) for cb in trainer.callbacks)
    [last] = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert isinstance(last, LastCheckpoint) and last._every_n_train_steps == 2
    assert last.dirpath == str(in_tmp / "run" / "checkpoints")  # not under a logger version: --ckpt_path last finds it
    assert sorted(os.listdir(in_tmp / "run" / "checkpoints")) == ["last.ckpt"]  # top-k none, just last
    saved = torch.load(in_tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3  # step 2 by the interval, then step 3 when training ended


def test_zoo_fit_keeps_what_the_config_chose(corpus, in_tmp):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    from zoo.training import AtomicCheckpointIO, LastCheckpoint

    trainer = cli_trainer(corpus, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", "mine",
                          "--trainer.plugins", "lightning.pytorch.plugins.io.AsyncCheckpointIO")
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(checkpoints) == 1 and not isinstance(checkpoints[0], LastCheckpoint)  # the user's own, alone
    io = trainer.strategy.checkpoint_io
    assert type(io) is AsyncCheckpointIO and type(io.checkpoint_io) is AtomicCheckpointIO  # still async, now atomic
    trainer = cli_trainer(corpus, "--checkpoint_every_n_steps", "0")
    assert not any(isinstance(cb, LastCheckpoint) for cb in trainer.callbacks)  # 0: Lightning's default checkpointing


def test_last_checkpoint_writes_the_final_step_once(tmp_path):
    """At the end of training last.ckpt gets the final weights, unless the interval just wrote them."""
    from zoo.training import LastCheckpoint

    written = []

    class Trainer:
        fast_dev_run, is_global_zero, loggers, global_step = False, True, [], 4

        def save_checkpoint(self, path):
            written.append(path)

    trainer, last = Trainer(), LastCheckpoint(tmp_path, every_n_train_steps=2)
    last.on_save_checkpoint(trainer, None, {})  # the interval's save at step 4
    last.on_train_end(trainer, None)
    assert written == []
    trainer.global_step = 5
    last.on_train_end(trainer, None)
    assert written == [str(tmp_path / "last.ckpt")] and last.last_model_path == written[0]
