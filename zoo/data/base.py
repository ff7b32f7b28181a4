"""What the zoo's data modules share: vocabulary size and pad id for the CLI to link into
the model, a description for config.json, and batches (by token count for training, in
order for evaluation) that share themselves out among the processes of a DDP run."""

from __future__ import annotations

import gzip
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

log = logging.getLogger(__name__)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line errors."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a text file, gzip or plain, without their newlines."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; check the file names in the data settings")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the text file(s) inside it")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (it holds the byte {err.object[err.start:err.start + 1]!r}); "
            "convert it to UTF-8 (gzip is fine) or remove it from the data settings"
        ) from None
    except (OSError, EOFError) as err:  # unreadable, or a damaged .gz
        raise ValueError(f"cannot read {path} ({err}); check the file, or remove it from the data settings") from None


def distributed_world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(num_replicas, rank): as given, else the initialised process group's, else one process (1, 0)."""
    if num_replicas is None or rank is None:
        if dist.is_available() and dist.is_initialized():
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        else:
            num_replicas, rank = num_replicas or 1, rank or 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in 0..{num_replicas - 1} for num_replicas={num_replicas}, not {rank}")
    return num_replicas, rank


class ProcessRNG:
    """``rng()``: a numpy generator for data augmentation, one per process, from ``seed`` and
    torch's seed of that process (DataLoader workers each get their own, so they draw
    different augmentations)."""

    def __init__(self, seed: int) -> None:
        self.seed, self._rng, self._pid = seed, None, -1

    def __call__(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():
            self._rng, self._pid = np.random.default_rng([self.seed, torch.initial_seed() % 2**32]), os.getpid()
        return self._rng


class ShardedBatchSampler(DistributedSampler):
    """Batches of dataset indices that a process of a distributed run shares out itself.

    Why a ``DistributedSampler``: under DDP, Lightning (``use_distributed_sampler``, on by
    default) replaces a loader's sampler by a ``DistributedSampler`` over its examples,
    unless the loader's ``sampler`` already is one. Our batches are drawn whole (by token
    count, or in order for evaluation), so splitting their examples would cut every batch
    and give the ranks different numbers of batches, and DDP hangs at the first step one
    rank does not take. So these samplers subclass ``DistributedSampler`` and share out
    *batches*, and Lightning leaves their loaders alone. :func:`batch_loader` puts them in
    the loader's ``sampler`` slot (``batch_size=None``), where Lightning looks: as a
    ``batch_sampler`` they would be refused ("can't inject a (distributed) sampler into
    your batch sampler"). Plain loaders (MIDI training) are still split by Lightning.

    The world is resolved lazily, at each ``iter()`` and ``len()``: ``num_replicas`` and
    ``rank`` as given, else ``torch.distributed``'s once its process group is up, else one
    process. A loader built before the process group (or outside Lightning) shards itself
    as soon as it runs inside one, and outside one it is the whole data set.
    ``DistributedSampler.__init__`` is not called: it needs the process group at once.
    """

    def __init__(self, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = False,
                 seed: int = 0) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: see the class docstring
        if num_replicas is not None and num_replicas < 1:
            raise ValueError(f"num_replicas must be 1 or more, not {num_replicas}")
        self._replicas, self._rank = num_replicas, rank
        self.shuffle, self.seed, self.epoch, self.drop_last = shuffle, seed, 0, False

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return distributed_world(self._replicas, self._rank)[0]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return distributed_world(self._replicas, self._rank)[1]

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch, so a resumed run draws the order it would have."""
        self.epoch = epoch

    def shard(self, num_replicas: int, rank: int) -> list[list[int]]:
        """This rank's batches, in order; every rank gets the same number of them."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, not when the loader is built,
        # because Lightning builds the iterator before it calls set_epoch (a resumed run
        # would otherwise replay epoch 0's order)
        yield from self.shard(*distributed_world(self._replicas, self._rank))

    def __len__(self) -> int:
        raise NotImplementedError


class TokenBatchSampler(ShardedBatchSampler):
    """Training batches of similar length holding at most ``max_tokens`` padded tokens.

    Lengths are sorted (with a little noise when shuffling, so batches differ between
    epochs), cut into batches whose ``size * longest`` stays under the budget, and the
    batches shuffled. Each pass over the sampler draws a new order from ``seed + epoch``
    (Lightning sets the epoch, so a resumed run continues the same sequence of orders).

    In a distributed run every rank draws the same order (same ``seed + epoch``) and takes
    every ``num_replicas``-th batch of it, from its ``rank`` on; the order is first padded
    with batches from its start to a multiple of ``num_replicas``, so that every rank takes
    the same number of steps (at most ``num_replicas - 1`` batches are seen twice an epoch).
    The global batch is the ranks' batches together: ``num_replicas`` times the budget.
    The noise only reorders examples of equal length, so the batch count is the same every
    epoch and ``len()`` is known before the order is drawn.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(num_replicas, rank, shuffle, seed)
        if max_tokens < max(lengths, default=1):
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest example ({max(lengths)} tokens)")
        self.lengths, self.max_tokens = list(lengths), max_tokens
        self._batches = self._make_batches(random.Random(seed))

    def _make_batches(self, rng: random.Random) -> list[list[int]]:
        noise = (lambda: rng.random()) if self.shuffle else (lambda: 0.0)
        order = sorted(range(len(self.lengths)), key=lambda i: self.lengths[i] + noise())
        batches, cur, longest = [], [], 0
        for i in order:
            longest_if = max(longest, self.lengths[i])
            if cur and longest_if * (len(cur) + 1) > self.max_tokens:
                batches.append(cur)
                cur, longest_if = [], self.lengths[i]
            cur.append(i)
            longest = longest_if
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def shard(self, num_replicas: int, rank: int) -> list[list[int]]:
        if self.shuffle:
            self._batches = self._make_batches(random.Random(self.seed + self.epoch))
            self.epoch += 1
        batches = self._batches
        if num_replicas == 1 or not batches:
            return batches
        total = -(-len(batches) // num_replicas) * num_replicas  # padded with batches from the start
        return [batches[i % len(batches)] for i in range(rank, total, num_replicas)]

    def __len__(self) -> int:
        return -(-len(self._batches) // self.num_replicas)


class EvalBatchSampler(ShardedBatchSampler):
    """Evaluation batches: the ``n`` examples in order, each seen once across the ranks.

    One process gets batches of ``batch_size`` (the last one smaller). In a distributed run
    rank ``r`` takes the ``r``-th of ``num_replicas`` contiguous shares of the examples
    (sizes differing by at most one), so the ranks' shares in rank order are the split in
    order and nothing is repeated: a metric summed over the ranks is the one-process
    figure. Every rank gets the same number of batches (the larger share's count), so that
    no rank waits at a collective the others never reach (a per-step ``sync_dist`` log,
    DDP's buffer broadcast in forward): a smaller share splits its largest batches to make
    up the count. Only with fewer examples than ranks do some ranks repeat an example (a
    warning says so), as no rank may go without.
    """

    def __init__(self, n: int, batch_size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(num_replicas, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, not {batch_size}")
        self.n, self.batch_size = n, batch_size

    def _shares(self, num_replicas: int) -> list[range]:
        size, extra = divmod(self.n, num_replicas)
        starts = [r * size + min(r, extra) for r in range(num_replicas + 1)]
        return [range(starts[r], starts[r + 1]) for r in range(num_replicas)]

    def _count(self, shares: list[range]) -> int:
        """Batches per rank: enough for the larger share, at most one per example of the smaller."""
        most, least = max(map(len, shares)), min(map(len, shares))
        return max(1, min(-(-most // self.batch_size), least)) if most else 0

    def shard(self, num_replicas: int, rank: int) -> list[list[int]]:
        shares = self._shares(num_replicas)
        count, share = self._count(shares), list(shares[rank])
        if not count:
            return []
        if not share:  # fewer examples than ranks
            log.warning("%d evaluation examples for %d processes: rank %d repeats example %d",
                        self.n, num_replicas, rank, rank % self.n)
            return [[rank % self.n]]
        full, rest = divmod(len(share), self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest else [])
        while len(sizes) < count:  # the smaller share: halve its largest batch
            i = sizes.index(max(sizes))
            sizes[i : i + 1] = [sizes[i] - sizes[i] // 2, sizes[i] // 2]
        while len(sizes) > count:  # batch_size 1 and a larger share: two examples in its last batch
            sizes[-2:] = [sizes[-2] + sizes[-1]]
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return [share[a:b] for a, b in zip(bounds, bounds[1:])]

    def __len__(self) -> int:
        return self._count(self._shares(self.num_replicas))


class _Batches(Dataset):
    """A map-style data set read a whole batch of indices at a time (what a batch sampler yields)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int]) -> list[Any]:
        return [self.data[i] for i in indices]


def batch_loader(data: Any, sampler: ShardedBatchSampler, collate_fn: Callable[[list[Any]], Any],
                 num_workers: int = 0) -> DataLoader:
    """A DataLoader of the batches ``sampler`` draws from ``data``, each through ``collate_fn``.

    The sampler sits in the loader's ``sampler`` slot (``batch_size=None``: each of its items
    is a whole batch), where Lightning sees a ``DistributedSampler`` and leaves it alone.
    """
    return DataLoader(_Batches(data), sampler=sampler, batch_size=None, collate_fn=collate_fn, num_workers=num_workers)


class SequenceDataModule(L.LightningDataModule):
    """Base of the text, pixel and MIDI-event data modules.

    Subclasses provide ``tokenizer`` (the target side's) and ``describe()`` (what the data
    was, for config.json and the model card); ``vocab_size``, ``pad_id``, ``bos_id`` and
    ``eos_id`` (linked into the model by ``zoo fit``) are read from it. ``tokenizers`` is the
    (source, target) pair, the same tokenizer twice unless a subclass has two.
    """

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    @property
    def tokenizers(self) -> tuple[Any, Any]:
        return self.tokenizer, self.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    def describe(self) -> dict[str, Any]:
        return {}

    # -- setup: the splits a Lightning stage reads, each prepared once -------------------
    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

    def setup(self, stage: str | None = None) -> None:
        """Prepare the splits ``stage`` reads (``None``: fit's; a stage not listed: all three)."""
        for split in self.STAGE_SPLITS.get(stage or "fit", ("train", "val", "test")):
            self._setup_split(split)

    def _setup_split(self, split: str) -> None:
        raise NotImplementedError

    # -- evaluation loaders: whole examples in a fixed order, one split each ------------
    def _eval_loader(self, split: str) -> Any:
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        return self._eval_loader("val")

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")

    def predict_dataloader(self) -> Any:
        return self._eval_loader("test")
