"""zoo's LSTM language model training step against a plain torch.nn.LSTM loop, interleaved.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python benchmarks/bench_lstm_lm.py [--repeats 3] [--steps 20]

The rnn_lm.ptb recipe's settings on both sides: Penn Treebank's training stream in 20 rows x 35
steps, the state carried from chunk to chunk (truncated BPTT), a 2-layer LSTM of 512 units with
tied embeddings and dropout 0.5, bf16 autocast, SGD at lr 35 with the gradient norm clipped at
5/35 (the paper's lr 1 and 5, of a loss summed over the 35 steps). ``zoo`` is ``CausalLMTask.training_step`` (what the Lightning loop calls) of the recipe's
task; ``torch`` is an ``nn.Embedding`` + ``nn.LSTM`` + tied ``nn.Linear`` written out, with the
same loss. The two run in turn on the same chunks, ``--repeats`` times; medians of target
tokens/s and their ratio (zoo / torch), so zoo's own overhead is known. Writes
benchmarks/results/lstm_lm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_translation import machine  # noqa: E402

from zoo.data.text import TextLMDataModule  # noqa: E402
from zoo.tasks.lm import CausalLMTask  # noqa: E402

WIDTH, LAYERS, DROPOUT, LR, CLIP = 512, 2, 0.5, 35.0, 5 / 35


class PlainLSTMLM(nn.Module):
    """The same network as zoo's ``rnn_lm`` at the recipe's size, in plain torch."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, WIDTH)
        self.drop = nn.Dropout(DROPOUT)
        self.rnn = nn.LSTM(WIDTH, WIDTH, LAYERS, batch_first=True, dropout=DROPOUT)
        self.out = nn.Linear(WIDTH, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, state=None):
        h, state = self.rnn(self.drop(self.embed(tokens)), state)  # (B, T, H)
        return self.out(self.drop(h)), state


def zoo_runner(vocab: int, pad_id: int):
    task = CausalLMTask(arch="rnn_lm", arch_args=dict(emb_dim=WIDTH, hidden_dim=WIDTH, dropout=DROPOUT),
                        vocab_size=vocab, pad_id=pad_id, optimizer="sgd", lr=LR, lr_schedule="step",
                        lr_step_start=6, lr_step_epochs=1, lr_step_factor=1 / 1.2)
    task.train()
    opt = task.configure_optimizers()["optimizer"]

    def step(batch, i):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.training_step(batch, i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in task.parameters())


def torch_runner(vocab: int, pad_id: int):
    model = PlainLSTMLM(vocab)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    state = None

    def step(batch, i):
        nonlocal state
        if batch.get("reset"):
            state = None
        elif state is not None:
            state = tuple(s.detach() for s in state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, state = model(batch["tokens"], state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def rate(step, batches, pad_id: int) -> float:
    """Target tokens/s over ``batches``, one training step each."""
    tokens, start = 0, time.perf_counter()
    for i, batch in enumerate(batches):
        step(batch, i)
        tokens += int(batch["targets"].ne(pad_id).sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps timed per repeat")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lstm_lm.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer logs nothing
    torch.manual_seed(0)
    dm = TextLMDataModule(dataset="ptb", mode="stream", batch_size=20, bptt=35)
    dm.setup("fit")
    vocab, pad_id = dm.tokenizer.vocab_size, dm.tokenizer.pad_id
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.steps + 2)]
    runners = {"zoo": zoo_runner(vocab, pad_id), "torch": torch_runner(vocab, pad_id)}
    params = {k: n for k, (_, n) in runners.items()}
    assert params["zoo"] == params["torch"], params
    for step, _ in runners.values():  # warm-up
        rate(step, batches[:2], pad_id)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for name, (step, _) in runners.items():
            rates[name].append(rate(step, batches[2:], pad_id))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"zoo_tok_s": round(med["zoo"]), "torch_tok_s": round(med["torch"]),
              "ratio": round(med["zoo"] / med["torch"], 3), "params": params["zoo"],
              "runs": {k: [round(r) for r in v] for k, v in rates.items()}}
    print(f"rnn_lm (PTB, {params['zoo']:,} parameters, 20 x 35, bf16, SGD): zoo {med['zoo']:,.0f} tok/s, "
          f"torch {med['torch']:,.0f} tok/s, zoo / torch {result['ratio']:.2f}x", flush=True)
    out = Path(args.out)
    out.write_text(json.dumps({"date": date.today().isoformat(), "machine": machine(), "settings": vars(args),
                               "results": result}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
