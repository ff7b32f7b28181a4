"""Learning-rate schedules of every task (zoo.tasks.base): 1/sqrt and cosine decay after a warm-up."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import zoo
from zoo.data.pixels import PixelDataModule
from zoo.tasks.base import cosine, inverse_sqrt


def test_cosine_warms_up_then_falls_by_half_a_cosine_to_its_floor():
    assert cosine(5, warmup=10, total=110) == pytest.approx(0.5)
    assert cosine(10, warmup=10, total=110) == pytest.approx(1.0)
    assert cosine(60, warmup=10, total=110) == pytest.approx(0.5)  # half-way down
    assert cosine(110, warmup=10, total=110) == pytest.approx(0.0)
    assert cosine(500, warmup=10, total=110, floor=0.1) == pytest.approx(0.1)  # stays at the floor after the end
    assert cosine(60, warmup=10, total=110, floor=0.1) == pytest.approx(0.55)
    assert inverse_sqrt(40, warmup=10) == pytest.approx(0.5)


def lr_trace(tmp_path, **hparams) -> list[float]:
    torch.manual_seed(0)
    dm = PixelDataModule(source="digits", batch_size=16, train_limit=64, val_limit=16, test_limit=16)
    model = zoo.create("image_transformer_tiny", lr=1e-3, val_samples=0, vocab_size=dm.vocab_size, pad_id=dm.pad_id,
                       bos_id=dm.bos_id, levels=dm.levels, height=dm.height, width=dm.width, **hparams)
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, callbacks=[Record()],
              default_root_dir=tmp_path).fit(model, dm)
    return seen


def test_a_cosine_run_ends_at_its_floor_on_its_last_step(tmp_path):
    lrs = lr_trace(tmp_path, lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert len(lrs) == 12  # 3 epochs of 4 batches
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # falls after the warm-up
    assert lrs[-2] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10))))
    assert lrs[-1] == pytest.approx(1e-4)  # the last step runs at the floor


def test_an_unknown_schedule_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; choose one of inverse_sqrt, cosine"):
        lr_trace(tmp_path, lr_schedule="linear")


def test_a_floor_outside_0_1_and_cosine_with_plateau_cuts_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="min_lr_ratio is the cosine's floor as a fraction of lr, between 0 and 1; got 1.5"):
        lr_trace(tmp_path, lr_schedule="cosine", min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="lr_schedule 'cosine' and lr_plateau_factor > 0 are two schedules"):
        zoo.create("transformer_tiny", lr_schedule="cosine", lr_plateau_factor=0.1).configure_optimizers()
