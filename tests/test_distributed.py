"""Distributed training through Lightning's engine: DDP on 2 CPU processes (gloo) agrees with 1 process.

The same transformer_tiny task learns to reverse 8-token sequences, once in one process with
batches of 16 and once with ``strategy="ddp"`` on 2 processes with 8 each, so the global batch
is the same 16 examples at every step (Lightning's DistributedSampler gives rank r the
positions r, r+2, ... of a seeded permutation; the one process reads that permutation). Every sequence has the same length and dropout is off, so each rank's
token-mean loss is over the same number of tokens and DDP's gradient (the mean of the ranks'
gradients) is exactly the one-process gradient: the runs may differ only in float rounding
(the all-reduce adds two half-batch gradients where one process sums the batch at once),
~1e-7 relative per step. On this machine the validation losses come out equal to the last
digit and the weights within 1e-7 (bar the attention key biases: see the test). The tolerance,
1e-3 relative on the validation loss (and on every weight), leaves room for rounding on
other BLAS builds over 30 Adam steps while staying 200 times below what training changes
(the validation loss falls by a quarter). Training on one rank's half-batches alone, which
is what a DDP run without the gradient all-reduce would do, ends 7% away (3.30 vs 3.08).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
import torch
import lightning as L
from lightning.pytorch import Callback
from torch.utils.data import DataLoader
from zoo.tasks.translation import TranslationTask

GLOBAL_BATCH, VOCAB = 16, 40


def pairs(n, seed):
    """Learn to reverse: src = 7 random tokens + </s>, tgt = the 7 reversed."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.cat([s, torch.tensor([3])]), s.flip(0)) for s in torch.randint(4, VOCAB, (n, 7), generator=g)]


def collate(items):
    src = torch.stack([s for s, _ in items])
    tgt = torch.stack([t for _, t in items])
    bos, eos = torch.full((len(items), 1), 2), torch.full((len(items), 1), 3)
    return {"src": src, "tgt_in": torch.cat([bos, tgt], 1), "tgt_out": torch.cat([tgt, eos], 1),
            "src_text": [" ".join(map(str, t.tolist())) for t in tgt], "tgt_text": [" ".join(map(str, t.tolist())) for t in tgt]}


class FirstBatch(Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.ids = batch["src"][:, 0].tolist()


mode, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
devices = 2 if mode == "ddp" else 1
L.seed_everything(0)
model = TranslationTask(arch="transformer_tiny", arch_args={"dropout": 0.0}, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB,
                        lr=3e-3, warmup_steps=0, label_smoothing=0.0, log_examples=0)
data = pairs(GLOBAL_BATCH * steps, 0)
# Lightning gives each DDP rank a DistributedSampler(shuffle=True, seed=0) for training: rank r takes
# positions r, r+2, ... of one random permutation. One process reads that permutation in order.
order = None if devices > 1 else torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
train = DataLoader(data, batch_size=GLOBAL_BATCH // devices, sampler=order, collate_fn=collate)
val = DataLoader(pairs(64, 1), batch_size=GLOBAL_BATCH // devices, collate_fn=collate)
first = FirstBatch()
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=steps,
                    deterministic=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, callbacks=[first])
before = trainer.validate(model, val, verbose=False)[0]["val/loss"]
trainer.fit(model, train)
after = trainer.validate(model, val, verbose=False)[0]["val/loss"]
result = {"world_size": trainer.world_size, "rank": trainer.global_rank, "steps": trainer.global_step,
          "before": before, "after": after, "first_batch": first.ids}
json.dump(result, open(f"{out}.rank{trainer.global_rank}.json", "w"))
if trainer.is_global_zero:
    torch.save(model.state_dict(), f"{out}.pt")
'''

STEPS = 30


def train(tmp_path: Path, mode: str) -> tuple[list[dict], dict]:
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    out = tmp_path / mode
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(script), mode, str(out), str(STEPS)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"{mode}.rank*.json"))]
    return ranks, torch.load(f"{out}.pt", weights_only=True)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    single, single_state = train(tmp_path, "single")
    ddp, ddp_state = train(tmp_path, "ddp")

    assert [r["world_size"] for r in single] == [1]
    assert sorted(r["rank"] for r in ddp) == [0, 1] and all(r["world_size"] == 2 for r in ddp)
    assert all(r["steps"] == STEPS for r in single + ddp)
    # each rank trained on its own half of every global batch, and together on the whole of it
    assert ddp[0]["first_batch"] != ddp[1]["first_batch"]
    assert sorted(ddp[0]["first_batch"] + ddp[1]["first_batch"]) == sorted(single[0]["first_batch"])

    one, two = single[0], ddp[0]
    assert two["after"] == ddp[1]["after"]  # the metric is reduced over both ranks' halves of the data
    assert two["before"] == pytest.approx(one["before"], rel=1e-6)  # same seed, same initial weights
    assert one["after"] < 0.8 * one["before"]  # it trains
    assert two["after"] == pytest.approx(one["after"], rel=1e-3)  # and DDP trains the same
    for key, value in single_state.items():
        if key.endswith("k_proj.bias"):
            # a key bias adds the same q.b to every score of a query: softmax ignores it, its gradient is
            # zero up to rounding, and Adam turns that rounding into steps; it is noise in any two runs
            continue
        torch.testing.assert_close(ddp_state[key], value, rtol=1e-3, atol=1e-4, msg=key)
