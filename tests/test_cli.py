"""The zoo command: quick listing, every recipe parses, a fit fast_dev_run, W&B offline logs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zoo
from zoo.cli import main, run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c.name != "chains.yaml")  # recipes; chains.yaml orders them


def run_zoo(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=300)


def test_zoo_list_is_quick_and_imports_no_lightning():
    code = "import sys, time; t=time.time(); from zoo.cli import main; main(['list']); " \
           "assert 'lightning' not in sys.modules and 'wandb' not in sys.modules, 'heavy import'; print(time.time()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "transformer_small" in out.stdout and "translation" in out.stdout


def test_info_of_an_architecture():
    out = run_zoo("info", "transformer_tiny")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["task"] == "translation" and info["config"]["d_model"] == 64 and info["params"] > 0


def test_unknown_name_is_one_clear_line():
    out = run_zoo("info", "transformer_smal")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("zoo: error: unknown model 'transformer_smal'; did you mean transformer_small")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_yaml_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: zoo.tasks" in printed and "WandbLogger" in printed


def smoke_args(tmp_path, multi30k, *extra):
    """The real recipe at a tiny size; its relative run folders land in tmp_path (the cwd)."""
    os.chdir(tmp_path)
    return [
        "fit", "--config", str(REPO / "configs" / "transformer_small.multi30k.yaml"),
        "--model.init_args.arch", "transformer_tiny",
        "--data.init_args.data_dir", str(multi30k),
        "--data.init_args.train_limit", "300", "--data.init_args.val_limit", "16",
        "--data.init_args.vocab_size", "300", "--data.init_args.max_tokens", "600",
        "--trainer.precision", "32-true",
        *extra,
    ]


@pytest.fixture(autouse=True)
def keep_cwd(monkeypatch):
    monkeypatch.chdir(os.getcwd())  # restored after each test


def test_fit_fast_dev_run(tmp_path, multi30k):
    cli = run(smoke_args(tmp_path, multi30k, "--trainer.fast_dev_run", "2"))
    assert cli.trainer.state.finished
    assert cli.model.hparams.src_vocab_size == cli.datamodule.src_vocab_size == 300  # linked from the data
    assert cli.model.hparams.pad_id == 0
    saved = zoo.load(str(tmp_path / "runs" / "transformer_small.multi30k" / "pretrained"))  # written after fit
    assert saved.hparams.arch == "transformer_tiny" and saved.tokenizers[0].vocab_size == 300


def test_wandb_offline_run_records_what_was_logged(tmp_path, multi30k, capsys, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = run(smoke_args(tmp_path, multi30k, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
                          "--trainer.log_every_n_steps", "1"))
    experiment = cli.trainer.logger.experiment
    summary = dict(experiment.summary)
    config = dict(experiment.config)
    run_dir = Path(experiment.dir).parent
    wandb.finish()
    for key in ("train/loss", "val/loss", "val/bleu", "val/bleu_lc", "val/ppl"):
        assert key in summary, key
    assert any(k.startswith("lr-AdamW") for k in summary)  # learning rate per step
    assert summary["val/examples"]["_type"] == "table-file"
    assert summary["val/attention"]["_type"] == "images/separated"  # a heatmap each validation
    assert config["lr"] == 1e-3 and config["arch"] == "transformer_tiny" and config["warmup_steps"] == 800
    # the offline run on disk holds the example tables, one per validation
    assert list(run_dir.glob("run-*.wandb"))
    table = json.loads(next((run_dir / "files" / "media" / "table" / "val").glob("examples_*.table.json")).read_text())
    assert table["columns"] == ["source", "reference", "hypothesis"] and len(table["data"]) == 4
    assert table["data"][0][1] == cli.datamodule.texts("val")[1][0]
    out = capsys.readouterr().out
    assert f"wandb sync {run_dir}" in out and "saved the trained model in Hub layout" in out


def test_wandb_goes_offline_without_credentials(monkeypatch, tmp_path, capsys):
    from zoo.cli import configure_wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert configure_wandb() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    assert "no W&B credentials found; logging offline" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert configure_wandb() == "disabled"  # an explicit choice wins


def test_translate_command_reads_stdin(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    out = run_zoo("translate", str(tmp_path / "m"), "--beam", "2", "--max-len", "5", stdin="Ein Mann.\n\nZwei Hunde.\n")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2
    out = run_zoo("translate", str(tmp_path / "m"), "", "--beam", "1")
    assert out.returncode == 2 and "zoo: error: sentence 0 is empty" in out.stderr


def test_publish_dry_run_command(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    out = run_zoo("publish", str(tmp_path / "m"), "--repo-id", "someone/tiny", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would upload" in out.stdout and "model.safetensors" in out.stdout


def test_attention_command_draws_a_heatmap(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    out = run_zoo("attention", str(tmp_path / "m"), "Ein Mann fährt Fahrrad.", "--out", str(tmp_path / "a.png"), "--layer", "2")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_zoo("attention", str(tmp_path / "m"), "Ein Mann.", "--layer", "7")
    assert bad.returncode == 2 and "--layer 7 does not exist; " in bad.stderr and "has layers 1..2" in bad.stderr


def test_sample_command_with_the_ngram_checkpoint():
    out = run_zoo("sample", "ngram.multi30k_en", "A man", "--max-len", "12", "--seed", "0", "--top-k", "20")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("A man") and len(out.stdout.splitlines()) == 1
    bad = run_zoo("sample", "ngram.multi30k_en", "--temperature", "0")
    assert bad.returncode == 2 and "temperature must be > 0" in bad.stderr


@pytest.mark.parametrize("task", ["translation.TranslationTask", "lm.CausalLMTask", "image.ImageTask"])
def test_every_task_takes_the_optimiser_settings_on_the_command_line(task, capsys):
    """The settings are declared once (ZooModule) and each task passes them on: LightningCLI still sees them all."""
    import yaml

    data = "pixels.PixelDataModule" if task.startswith("image") else "text.TextDataModule"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", f"zoo.tasks.{task}", "--data", f"zoo.data.{data}", "--model.init_args.lr", "5e-4",
              "--model.init_args.optimizer", "nag", "--model.init_args.lr_plateau_factor", "0.1", "--print_config"])
    assert exit_.value.code in (0, None)
    args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert (args["lr"], args["optimizer"], args["lr_plateau_factor"]) == (5e-4, "nag", 0.1)
    assert {"warmup_steps", "betas", "eps", "weight_decay", "lr_schedule", "min_lr_ratio", "momentum"} <= set(args)


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    code = """
import sys, matplotlib
matplotlib.use("svg")
import torch
from zoo.viz import attention_figure, figure_to_array, save_figure
fig = attention_figure({"layer 1": torch.rand(2, 3, 4), "layer 2": torch.rand(2, 3, 4)}, list("abcd"), list("xyz"))
assert figure_to_array(fig).shape[-1] == 3
save_figure(fig, sys.argv[1])
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
