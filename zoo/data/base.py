"""What the zoo's data modules share: vocabulary size and pad id for the CLI to link into
the model, a description for config.json, and batches by token count."""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import Sampler


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


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of similar length holding at most ``max_tokens`` padded tokens.

    Lengths are sorted (with a little noise when shuffling, so batches differ between
    epochs), cut into batches whose ``size * longest`` stays under the budget, and the
    batches shuffled. Each pass over the sampler draws a new order from ``seed + epoch``
    (Lightning sets the epoch, so a resumed run continues the same sequence of orders).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0) -> None:
        if max_tokens < max(lengths, default=1):
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest example ({max(lengths)} tokens)")
        self.lengths, self.max_tokens, self.shuffle, self.seed, self.epoch = list(lengths), max_tokens, shuffle, seed, 0
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

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch, so a resumed run draws the order it would have."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, not when the loader is built,
        # because Lightning builds the iterator before it calls set_epoch (a resumed run
        # would otherwise replay epoch 0's order)
        if self.shuffle:
            self._batches = self._make_batches(random.Random(self.seed + self.epoch))
            self.epoch += 1
        yield from self._batches

    def __len__(self) -> int:
        return len(self._batches)


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

    # -- evaluation loaders: whole examples in a fixed order, one split each ------------
    def _eval_loader(self, split: str) -> Any:
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        return self._eval_loader("val")

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")

    def predict_dataloader(self) -> Any:
        return self._eval_loader("test")
