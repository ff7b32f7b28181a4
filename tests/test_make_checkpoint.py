"""scripts/make_checkpoint.py end to end: two tiny runs averaged into a Hub folder, measured with the stored weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb

import zoo
from zoo.data.pixels import PixelDataModule
from zoo.cli import run

REPO = Path(__file__).resolve().parents[1]


def tiny_digits_run(folder: Path, shift: int) -> Path:
    """Two steps of the digits recipe at the tiny size, run in ``folder``; returns its checkpoint folder."""
    folder.mkdir()
    os.chdir(folder)  # the recipe's relative run folders land here
    run([
        "fit", "--config", str(REPO / "configs" / "image_transformer_small.digits.yaml"),
        "--model.init_args.arch", "image_transformer_tiny",
        "--data.init_args.shift", str(shift),
        "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ])
    wandb.finish()  # else the next test's WandbLogger joins this run
    return folder / "runs" / "image_transformer_small.digits" / "checkpoints"


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # "disabled" would stick in wandb's process-wide settings
    monkeypatch.chdir(tmp_path)  # restored afterwards
    soup = tmp_path / "soup"
    soup.mkdir()
    for name, shift in (("plain", 0), ("shifted", 1)):
        (best,) = tiny_digits_run(tmp_path / name, shift).glob("0-*.ckpt")
        (soup / f"{name}-{best.stem.split('-', 1)[1]}.ckpt").symlink_to(best)
    return soup


def test_an_averaged_checkpoint_is_measured_and_says_how_its_runs_differed(tmp_path, two_runs):
    out = tmp_path / "published"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_checkpoint.py"), str(two_runs), "--name", "image_transformer_tiny.test",
         "--average", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["averaged"]) == sorted(p.name for p in two_runs.iterdir())
    data = config["data"]
    assert data["dataset"] == "digits" and data["splits"] == {"train": 1497, "val": 150, "test": 150}
    shifted = next(p.name for p in two_runs.iterdir() if p.name.startswith("shifted"))
    plain = next(p.name for p in two_runs.iterdir() if p.name.startswith("plain"))
    assert data["augment"] == {"per checkpoint": {shifted: {"shift": 1}, plain: None}} or \
        data["augment"] == {"per checkpoint": {plain: None, shifted: {"shift": 1}}}
    assert config["recipe"] == "zoo reproduce image_transformer_tiny.test" and (out / "samples.png").stat().st_size
    assert config["data"]["datamodule"]["class_path"] == "zoo.data.pixels.PixelDataModule"
    # the figures are those of the stored (float16) weights, reloaded by path
    stored = zoo.load(str(out))
    dm = PixelDataModule(source="digits", task="class_conditional")
    first = config["reproduce"]["first"]
    bpd = stored.bits_per_dim(dm.images("test")[:first], labels=dm.labels("test")[:first])
    assert first == 100 and abs(bpd - config["reproduce"]["bpd"]) < 1e-3
    assert abs(stored.bits_per_dim(dm, split="test") - config["metrics"]["bpd"]) < 1e-3


def test_a_calibrated_average_stores_its_temperature(tmp_path, two_runs):
    """--calibrate: a temperature fitted on the validation split, folded into the stored weights."""
    script = [sys.executable, str(REPO / "scripts" / "make_checkpoint.py")]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = tmp_path / "published"
    done = subprocess.run([*script, str(two_runs), "--name", "image_transformer_tiny.test", "--average", "2",
                           "--out", str(out), "--calibrate"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"]["bpd"] > 0
    cal = config["calibration"]
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0 and cal["val_bpd_after"] <= cal["val_bpd_before"]
    stored = zoo.load(str(out))
    dm = PixelDataModule(source="digits", task="class_conditional")
    assert abs(stored.bits_per_dim(dm, split="val") - cal["val_bpd_after"]) < 1e-3
    # a temperature is fitted (--calibrate) or given (--temperature T), not both
    done = subprocess.run([*script, str(two_runs), "--name", "image_transformer_tiny.test", "--out", str(out),
                           "--calibrate", "--temperature", "1.1"], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env=env)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        "give --calibrate (fit a temperature on validation) or --temperature T (fold T), not both")
