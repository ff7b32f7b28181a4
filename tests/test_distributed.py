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

The data modules' own batches (by token count for training, in order for evaluation) share
themselves out among the ranks: unit tests of the sharding with explicit ranks, and a
``zoo fit`` with ``strategy=ddp`` on a translation corpus, whose ranks must see the training
split once per epoch in equal numbers of steps and the validation split once, and whose
reduced val/loss, val/ppl and val/bleu must be those of one process scoring the same model.
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


# -- batches that share themselves out among the ranks ------------------------------------------
from zoo.data.base import EvalBatchSampler, ShardedBatchSampler, TokenBatchSampler  # noqa: E402

LENGTHS = [((i * 7919) % 40) + 1 for i in range(500)]


@pytest.mark.parametrize("replicas", [2, 3])
def test_token_batches_shard_across_ranks(replicas):
    whole = TokenBatchSampler(LENGTHS, max_tokens=120, shuffle=True, seed=3)
    ranks = [TokenBatchSampler(LENGTHS, max_tokens=120, shuffle=True, seed=3, num_replicas=replicas, rank=r)
             for r in range(replicas)]
    orders = []
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        order = list(whole)  # what one process draws this epoch; every rank draws the same
        shards = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert {len(s) for s in shards} == {len(ranks[0])} == {-(-len(order) // replicas)}  # same number of steps
        # rank r takes batches r, r + R, ... of the order, padded from its start to a multiple of R
        dealt = [b for step in zip(*shards) for b in step]
        assert dealt == (order + order)[: len(dealt)] and len(dealt) - len(order) < replicas
        seen = [i for b in dealt[: len(order)] for i in b]
        assert sorted(seen) == list(range(len(LENGTHS)))  # every index once, bar the padding batches
        assert all(len(b) * max(LENGTHS[i] for i in b) <= 120 for s in shards for b in s)
        orders.append(shards)
    assert orders[0] != orders[1]  # a new order each epoch...
    again = TokenBatchSampler(LENGTHS, max_tokens=120, shuffle=True, seed=3, num_replicas=replicas, rank=1)
    again.set_epoch(1)
    assert list(again) == orders[1][1]  # ...drawn from seed + epoch alone
    one = TokenBatchSampler(LENGTHS, max_tokens=120, shuffle=True, seed=3, num_replicas=1, rank=0)
    whole.set_epoch(0)
    assert list(one) == list(whole)  # outside a process group a sampler is the whole data set
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        list(TokenBatchSampler(LENGTHS, max_tokens=120, num_replicas=2, rank=2))


@pytest.mark.parametrize("n,batch_size,replicas",
                         [(29, 7, 2), (30, 7, 2), (10, 4, 3), (101, 50, 4), (5, 1, 2), (7, 3, 1)])
def test_eval_batches_cover_the_split_once_in_order(n, batch_size, replicas):
    shards = [list(EvalBatchSampler(n, batch_size, num_replicas=replicas, rank=r)) for r in range(replicas)]
    counts = {len(s) for s in shards}
    assert counts == {len(EvalBatchSampler(n, batch_size, num_replicas=replicas, rank=0))}  # same number of steps
    assert [i for s in shards for b in s for i in b] == list(range(n))  # each example once, in order
    assert all(len(b) <= max(batch_size, 2) for s in shards for b in s)
    if replicas == 1:
        assert shards[0] == [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def test_eval_batches_with_fewer_examples_than_ranks(caplog):
    shards = [list(EvalBatchSampler(1, 4, num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [[[0]], [[0]]]  # no rank may go without a batch: the only example twice
    assert "1 evaluation examples for 2 processes: rank 1 repeats example 0" in caplog.text


def test_lightning_leaves_our_loaders_alone_and_splits_plain_ones(tmp_path):
    """Lightning's use_distributed_sampler wraps a loader unless its sampler is a DistributedSampler."""
    from torch.utils.data import DistributedSampler

    from zoo.data.midi import MIDIDataModule
    from zoo.data.pixels import PixelDataModule
    from zoo.data.text import TextDataModule, TextLMDataModule

    from conftest import SENTENCES

    tsv, txt = tmp_path / "pairs.tsv", tmp_path / "en.txt"
    tsv.write_text("".join(f"{de}\t{en}\n" for de, en in SENTENCES * 5), encoding="utf-8")
    txt.write_text("".join(f"{en}\n" for _, en in SENTENCES * 5), encoding="utf-8")
    text = TextDataModule(dataset="files", train_files=[str(tsv)], vocab_size=100, max_tokens=80)
    lm = TextLMDataModule(dataset="files", train_files=[str(txt)], val_files=[str(txt)], vocab_size=80, max_tokens=80)
    stream = TextLMDataModule(dataset="files", train_files=[str(txt)], val_files=[str(txt)], vocab_size=80,
                              mode="stream", batch_size=2, bptt=8)
    pixels = PixelDataModule(source="digits", batch_size=8, train_limit=40, val_limit=20)
    loaders = [dm.train_dataloader() for dm in (text, lm, stream, pixels)]
    loaders += [dm.val_dataloader() for dm in (text, lm, pixels)]
    for loader in loaders:
        assert isinstance(loader.sampler, ShardedBatchSampler) and isinstance(loader.sampler, DistributedSampler)
        assert len(list(loader)) == len(loader)
    midi = MIDIDataModule(source="bach", limit=4, crop_len=16, batch_size=2, augment=False, split=(0.5, 0.25, 0.25))
    assert not isinstance(midi.train_dataloader().sampler, DistributedSampler)  # Lightning splits this one
    assert isinstance(midi.val_dataloader().sampler, EvalBatchSampler)


def test_stream_mode_gives_each_rank_a_stream_of_its_own(tmp_path):
    from zoo.data.text import StreamSampler, TextStream

    stream = TextStream(list(range(10, 111)), batch_size=2, bptt=4, bos_id=2, pad_id=0)  # 101 ids: 100 predictions
    ranks = [[stream[k] for k in StreamSampler(stream, num_replicas=2, rank=r)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == stream.chunks(2) == 7  # 50 ids a rank: 2 rows of 25, 7 chunks of <= 4
    for chunks in ranks:
        assert chunks[0]["reset"] and not any(c["reset"] for c in chunks[1:])
        for a, b in zip(chunks, chunks[1:]):  # each chunk goes on where the rank's previous one stopped
            assert torch.equal(a["targets"][:, -1], b["tokens"][:, 0])
    rows = [torch.cat([c["tokens"] for c in chunks], 1) for chunks in ranks]
    assert rows[0].flatten().tolist() == list(range(10, 60)) and rows[1].flatten().tolist() == list(range(60, 110))
    one = [stream[k] for k in StreamSampler(stream, num_replicas=1, rank=0)]
    assert torch.cat([c["tokens"] for c in one], 1).flatten().tolist() == list(range(10, 110))


def test_corpus_bleu_of_shards_is_the_bleu_of_the_whole():
    from zoo.metrics import CorpusBLEU, bleu

    words = "a man rides the bike . woman two dogs play in snow , child eats an apple".split()
    g = torch.Generator().manual_seed(0)
    pick = lambda k: " ".join(words[i] for i in torch.randint(len(words), (k,), generator=g))  # noqa: E731
    refs = [pick(3 + i % 9) for i in range(57)]
    hyps = [pick(1 + i % 11) if i % 5 else r.capitalize() for i, r in enumerate(refs)]
    for lowercase in (False, True):
        shards = [CorpusBLEU(lowercase=lowercase) for _ in range(2)]
        for i in range(0, 57, 10):  # batches dealt to two ranks
            shards[(i // 10) % 2].update(hyps[i : i + 10], refs[i : i + 10])
        shards[0].merge_state(shards[1])  # what the sum reduction across ranks does
        assert float(shards[0].compute()) == pytest.approx(bleu(hyps, refs, lowercase=lowercase), abs=1e-9)


# -- zoo fit with strategy=ddp on a token-batched data module -----------------------------------
RECORD = '''
import json
from lightning.pytorch import Callback


class Record(Callback):
    """Each rank's training and validation batches (their source sentences), per epoch."""

    def __init__(self, out: str):
        self.out, self.train, self.val = out, {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.train.setdefault(str(trainer.current_epoch), []).append(batch["src_text"])

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.setdefault(str(trainer.current_epoch), []).append(batch["src_text"])

    def on_fit_end(self, trainer, module):
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                  "train": self.train, "val": self.val}
        json.dump(record, open(f"{self.out}/rank{trainer.global_rank}.json", "w"))
'''

FIT_CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: {devices}
  strategy: {strategy}
  max_epochs: 3
  deterministic: true
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: csv}}
  callbacks:
    - class_path: record.Record
      init_args: {{out: {root}}}
model:
  class_path: zoo.tasks.translation.TranslationTask
  init_args: {{arch: transformer_tiny, lr: 3.0e-3, warmup_steps: 0, log_examples: 0}}
data:
  class_path: zoo.data.text.TextDataModule
  init_args:
    dataset: files
    train_files: [{train}]
    val_files: [{val}]
    vocab_size: 100
    max_tokens: {max_tokens}   # per process: DDP's global budget is twice this
    eval_batch_size: 7         # 29 pairs: rank 0 takes 15 (7 + 7 + 1), rank 1 14, split 4 + 3 + 7
"""


def zoo_fit(folder: Path, devices: int, max_tokens: int) -> tuple[Path, list[dict], list[dict]]:
    """Run ``zoo fit`` in a subprocess; the run's folder, each rank's record, and its validation rows."""
    root = folder / f"devices{devices}"
    root.mkdir()
    config = root / "config.yaml"
    config.write_text(FIT_CONFIG.format(devices=devices, strategy="ddp" if devices > 1 else "auto", root=root,
                                        train=folder / "train.tsv", val=folder / "val.tsv", max_tokens=max_tokens))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(folder), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "fit", "--config", str(config)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads(p.read_text()) for p in sorted(root.glob("rank*.json"))]
    with open(root / "csv" / "version_0" / "metrics.csv", newline="") as f:
        import csv

        val = [row for row in csv.DictReader(f) if row["val/loss"]]
    return root, ranks, val


@pytest.mark.slow
def test_zoo_fit_ddp_shares_token_batches_and_reduces_the_metrics(tmp_path):
    import lightning as L

    import zoo
    from conftest import SENTENCES
    from zoo.data.text import TextDataModule, collate
    from zoo.metrics import bleu

    train = [(f"{de} {i}", f"{en} {i}") for i, (de, en) in enumerate(SENTENCES * 8)]  # 48 pairs, each told apart
    val = train[:29]
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in train), encoding="utf-8")
    (tmp_path / "val.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in val), encoding="utf-8")
    (tmp_path / "record.py").write_text(RECORD)
    root, ddp, ddp_val = zoo_fit(tmp_path, devices=2, max_tokens=80)

    assert sorted(r["rank"] for r in ddp) == [0, 1] and all(r["world_size"] == 2 for r in ddp)
    sources = sorted(s for s, _ in train)
    for epoch in ("0", "1", "2"):
        mine, theirs = ddp[0]["train"][epoch], ddp[1]["train"][epoch]
        assert len(mine) == len(theirs)  # the same number of steps, or DDP would hang
        seen = [s for batch in mine + theirs for s in batch]
        assert sorted(set(seen)) == sources  # the ranks' batches cover the training split...
        assert len(seen) - len(sources) <= max(map(len, mine + theirs))  # ...each pair once, bar one padding batch
        # every evaluation: the same number of batches on each rank, and the split once, in order, across them
        assert len(ddp[0]["val"][epoch]) == len(ddp[1]["val"][epoch]) == 3
        assert [s for r in ddp for batch in r["val"][epoch] for s in batch] == [s for s, _ in val]
    assert ddp[0]["train"]["0"] != ddp[0]["train"]["1"]  # a new order each epoch

    # it trains, and the metrics reduced over the ranks are those of one process on the whole split
    losses = [float(row["val/loss"]) for row in ddp_val]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0]
    folder = root / "csv" / "version_0" / "pretrained"
    model = zoo.load(str(folder))
    dm = TextDataModule(dataset="files", val_files=[str(tmp_path / "val.tsv")], tokenizer=str(folder),
                        eval_batch_size=7)
    one = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    single = one.validate(model, dm, verbose=False)[0]
    assert float(ddp_val[-1]["val/loss"]) == pytest.approx(single["val/loss"], rel=1e-5)
    assert float(ddp_val[-1]["val/ppl"]) == pytest.approx(single["val/ppl"], rel=1e-5)
    # BLEU: corpus BLEU of both ranks' sentences together (greedy decoding stops at 1.5 x the longest source of
    # a batch + 10, so an untrained model's output depends on the batches: decode those the ranks had)
    hyps, refs, data, tok = [], [], dm.datasets["val"], dm.tokenizer
    model.eval()
    for rank in range(2):
        for indices in EvalBatchSampler(len(data), 7, num_replicas=2, rank=rank):
            batch = collate([data[i] for i in indices], tok.pad_id, tok.bos_id, tok.eos_id)
            hyps += model.generate(batch["src"], beam_size=1)
            refs += batch["tgt_text"]
    assert float(ddp_val[-1]["val/bleu"]) == pytest.approx(round(bleu(hyps, refs), 2), abs=1e-6)
    assert float(ddp_val[-1]["val/bleu_lc"]) == pytest.approx(round(bleu(hyps, refs, lowercase=True), 2), abs=1e-6)

    # one process with the same global budget (2 x 80 tokens) takes as many steps and ends close by
    _, solo, solo_val = zoo_fit(tmp_path, devices=1, max_tokens=160)
    assert solo[0]["steps"] == ddp[0]["steps"] == ddp[1]["steps"]
    assert float(ddp_val[-1]["val/loss"]) == pytest.approx(float(solo_val[-1]["val/loss"]), rel=0.1)
