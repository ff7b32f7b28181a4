"""scripts/probe_copy4.py: its task is what it says, and all three models train on it."""

import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import probe_copy4  # noqa: E402


def test_batches_repeat_with_period_4_apart_from_the_noise():
    x = probe_copy4.period4_batch(torch.Generator().manual_seed(0))
    assert x.shape == (probe_copy4.BATCH, probe_copy4.LENGTH)
    assert x.min() >= probe_copy4.FIRST_ID and x.max() < probe_copy4.VOCAB
    repeats = (x[:, 4:] == x[:, :-4]).float().mean().item()
    assert 0.75 < repeats < 0.9  # two chances in ten of a noisy token at either end


def test_every_model_trains_and_the_script_reports_them(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe_copy4.py", "--steps", "2", "--every", "1"])
    probe_copy4.main()
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [" ".join(r[:2]) for r in rows] == ["relative (zoo)", "absolute (zoo)", "absolute (torch.nn)"]
    for row in rows:
        losses = [float(v) for v in row[2:]]
        assert len(losses) == 2 and all(math.isfinite(v) and v < 2 * math.log(probe_copy4.VOCAB) for v in losses)
