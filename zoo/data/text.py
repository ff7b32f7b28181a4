"""Parallel text for translation: Multi30k or any user corpus, BPE, batches by token count.

Multi30k task 1 (Elliott et al. 2016): 29,000 / 1,014 / 1,000 German-English caption
pairs, raw untokenised. It is read from a local folder (``data_dir``, then
``$ZOO_DATA_DIR``, then ``../shared/data`` beside the repository, then the download
cache) or, when online, downloaded from its public source into ``~/.cache/zoo/data``.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import (EvalBatchSampler, SequenceDataModule, ShardedBatchSampler, TokenBatchSampler, batch_loader,
                           distributed_world, read_lines)
from zoo.data.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}.gz"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
REPO_ROOT = Path(__file__).resolve().parents[2]
DOWNLOAD_DIR = Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")) / "data"


def _candidate_dirs(data_dir: str | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
        if not dirs[0].is_dir():
            log.warning("data_dir %s is not a folder; looking in ZOO_DATA_DIR and the default places instead", dirs[0])
    if os.environ.get("ZOO_DATA_DIR"):
        dirs.append(Path(os.environ["ZOO_DATA_DIR"]).expanduser())
    dirs += [REPO_ROOT.parent / "shared" / "data", DOWNLOAD_DIR]
    return dirs


def find_multi30k(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder holding Multi30k's ``train.de.gz`` etc., found locally or downloaded.

    Each candidate may be the Multi30k folder itself or a folder with a ``multi30k/`` inside.
    """
    looked = []
    for d in _candidate_dirs(data_dir):
        for folder in (d, d / "multi30k"):
            looked.append(str(folder))
            if (folder / "train.de.gz").exists() or (folder / "train.de").exists():
                return folder
    if download:
        try:
            return _download_multi30k(DOWNLOAD_DIR / "multi30k")
        except OSError as err:
            looked.append(f"download failed: {err}")
    raise FileNotFoundError(
        "Multi30k not found (looked in " + "; ".join(looked) + "); "
        "set data_dir or ZOO_DATA_DIR to the folder holding train.de.gz, or go online to download it"
    )


def _download_multi30k(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for split in MULTI30K_SPLITS.values():
        for lang in ("de", "en"):
            name = f"{split}.{lang}"
            target = dest / f"{name}.gz"
            if target.exists():
                continue
            tmp = target.with_name(target.name + ".part")
            with urllib.request.urlopen(MULTI30K_URL.format(name=name), timeout=30) as r, open(tmp, "wb") as f:
                f.write(r.read())
            os.replace(tmp, target)  # atomic: a half-downloaded file never looks complete
    return dest


def _split_file(folder: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {split}.{lang}(.gz); is this a Multi30k folder?")


def read_parallel(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """Two aligned files ``[src, tgt]``, or one TSV with ``source<TAB>target`` per line."""
    if len(files) == 2:
        src, tgt = read_lines(files[0]), read_lines(files[1])
        if len(src) != len(tgt):
            raise ValueError(f"{files[0]} has {len(src)} lines but {files[1]} has {len(tgt)}; they must align")
        if not src:
            raise ValueError(f"{files[0]} and {files[1]} are empty; give files with one sentence per line")
        return src, tgt
    if len(files) == 1:
        src, tgt = [], []
        for n, line in enumerate(read_lines(files[0]), 1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{files[0]} line {n} has {len(parts)} tab-separated fields; expected source<TAB>target")
            src.append(parts[0])
            tgt.append(parts[1])
        if not src:
            raise ValueError(f"{files[0]} is empty; give a file with one source<TAB>target pair per line")
        return src, tgt
    raise ValueError(f"give a parallel corpus as [source_file, target_file] or [tsv_file], not {len(files)} files")


def _split_setting(hp: Any, split: str, what: str) -> Any:
    """``hp.train_files`` / ``hp.val_limit`` / ...: the per-split settings both data modules take."""
    return getattr(hp, f"{split}_{what}")


def _first(items: list[Any], limit: int | None) -> list[Any]:
    return items[:limit] if limit else items


@dataclass
class Example:
    src: list[int]
    tgt: list[int]
    src_text: str
    tgt_text: str


def collate(examples: list[Example], pad_id: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    """src (B, S) = tokens + </s>; tgt_in (B, T) = <s> + tokens; tgt_out (B, T) = tokens + </s>."""

    def pad(seqs: list[list[int]]) -> Tensor:
        out = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    return {
        "src": pad([e.src + [eos_id] for e in examples]),
        "tgt_in": pad([[bos_id] + e.tgt for e in examples]),
        "tgt_out": pad([e.tgt + [eos_id] for e in examples]),
        "src_text": [e.src_text for e in examples],
        "tgt_text": [e.tgt_text for e in examples],
    }


class TextDataModule(SequenceDataModule):
    """Parallel text for every translation model in the zoo.

    Args:
        dataset: ``"multi30k"``, or ``"files"`` for your own corpus given by ``train_files``
            / ``val_files`` / ``test_files`` (each ``[src, tgt]`` files or ``[tsv]``).
        data_dir: where Multi30k lies (else ``$ZOO_DATA_DIR``, ``../shared/data``, download).
        src_lang, tgt_lang: Multi30k languages (``de``, ``en``, ``fr``, ``cs``).
        tokenizer: a tokenizer.json file, a checkpoint folder or pretrained name whose
            tokenizer to reuse (fine-tuning); ``None`` trains BPE on the training split.
        vocab_size: BPE vocabulary size when training one.
        joint_vocab: one vocabulary for both languages (needed for shared embeddings).
        max_tokens: padded tokens per training batch.
        max_len: training pairs with a side longer than this many subwords are dropped
            (and counted in the log); evaluation keeps every pair.
        val_fraction: share of ``train_files`` held out for validation when no
            ``val_files`` are given.
        train_limit, val_limit, test_limit: use only the first N pairs of a split.
    """

    def __init__(
        self,
        dataset: str = "multi30k",
        data_dir: str | None = None,
        src_lang: str = "de",
        tgt_lang: str = "en",
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        val_fraction: float = 0.05,
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        max_tokens: int = 4096,
        eval_batch_size: int = 128,
        max_len: int = 128,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("multi30k", "files"):
            raise ValueError(f"dataset must be 'multi30k' or 'files', not {dataset!r}")
        if dataset == "files" and not train_files and not tokenizer:
            raise ValueError("dataset='files' needs train_files (or a tokenizer and val/test files)")
        self.save_hyperparameters()
        self.hp = self.hparams
        self._texts: dict[str, tuple[list[str], list[str]]] = {}
        self._tokenizers: tuple[TextTokenizer, TextTokenizer] | None = None
        self.datasets: dict[str, list[Example]] = {}

    # -- raw text ---------------------------------------------------------------
    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (source, target) sentences of ``split`` in train / val / test."""
        if split not in self._texts:
            hp = self.hp
            if hp.dataset == "multi30k":
                folder = find_multi30k(hp.data_dir)
                name = MULTI30K_SPLITS[split]
                src = read_lines(_split_file(folder, name, hp.src_lang))
                tgt = read_lines(_split_file(folder, name, hp.tgt_lang))
            elif split in ("train", "val") and hp.train_files and not hp.val_files:
                # no validation files: hold out the last val_fraction of the training pairs
                src, tgt = read_parallel(hp.train_files)
                n_val = max(1, int(len(src) * hp.val_fraction))
                cut = len(src) - n_val
                src, tgt = (src[:cut], tgt[:cut]) if split == "train" else (src[cut:], tgt[cut:])
            else:
                files = _split_setting(hp, split, "files")
                if not files:
                    raise ValueError(f"no {split}_files given for dataset='files'; add them to the data settings")
                src, tgt = read_parallel(files)
            limit = _split_setting(hp, split, "limit")
            self._texts[split] = (_first(src, limit), _first(tgt, limit))
        return self._texts[split]

    # -- vocabulary -------------------------------------------------------------
    @property
    def tokenizers(self) -> tuple[TextTokenizer, TextTokenizer]:
        """(source, target) tokenizers: loaded from ``tokenizer`` or trained on the training split."""
        if self._tokenizers is None:
            if self.hp.tokenizer:
                from zoo.hub import load_tokenizers

                self._tokenizers = load_tokenizers(self.hp.tokenizer)
            else:
                src, tgt = self.texts("train")
                if self.hp.joint_vocab:
                    tok = TextTokenizer.train(src + tgt, self.hp.vocab_size)
                    self._tokenizers = (tok, tok)
                else:
                    self._tokenizers = (
                        TextTokenizer.train(src, self.hp.vocab_size),
                        TextTokenizer.train(tgt, self.hp.vocab_size),
                    )
        return self._tokenizers

    @property
    def src_vocab_size(self) -> int:
        return self.tokenizers[0].vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        return self.tokenizers[1].vocab_size

    @property
    def tokenizer(self) -> TextTokenizer:
        """The target side's tokenizer (vocab_size, pad_id, ... are read from it)."""
        return self.tokenizers[1]

    @property
    def joint(self) -> bool:
        return self.tokenizers[0] is self.tokenizers[1]

    def describe(self) -> dict[str, Any]:
        """What the data was, for config.json and the model card."""
        hp = self.hp
        name = f"multi30k {hp.src_lang}-{hp.tgt_lang}" if hp.dataset == "multi30k" else "user parallel corpus"
        return {"dataset": name, "src_lang": hp.src_lang, "tgt_lang": hp.tgt_lang, "joint_vocab": self.joint}

    # -- datasets ---------------------------------------------------------------
    def _examples(self, split: str) -> list[Example]:
        src_tok, tgt_tok = self.tokenizers
        src_text, tgt_text = self.texts(split)
        src_ids, tgt_ids = src_tok.encode_batch(src_text), tgt_tok.encode_batch(tgt_text)
        examples = [Example(s, t, st, tt) for s, t, st, tt in zip(src_ids, tgt_ids, src_text, tgt_text)]
        if split == "train":
            keep = [e for e in examples if 0 < len(e.src) < self.hp.max_len and 0 < len(e.tgt) < self.hp.max_len]
            if len(keep) < len(examples):
                log.warning(
                    "dropped %d of %d training pairs that were empty or longer than max_len=%d subwords",
                    len(examples) - len(keep), len(examples), self.hp.max_len,
                )
            examples = keep
        return examples

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in splits.get(stage or "fit", ["train", "val", "test"]):
            if split not in self.datasets:
                self.datasets[split] = self._examples(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self._examples(split)
        data = self.datasets[split]
        tok = self.tokenizers[1]
        collate_fn = lambda ex: collate(ex, tok.pad_id, tok.bos_id, tok.eos_id)  # noqa: E731
        if shuffle:
            lengths = [max(len(e.src), len(e.tgt)) + 1 for e in data]
            sampler: ShardedBatchSampler = TokenBatchSampler(lengths, self.hp.max_tokens, shuffle=True,
                                                             seed=self.hp.seed)
        else:
            sampler = EvalBatchSampler(len(data), self.hp.eval_batch_size)
        return batch_loader(data, sampler, collate_fn, self.hp.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader:
        return self._loader(split, shuffle=False)


def lm_batch(seqs: list[list[int]], tok: TextTokenizer) -> dict[str, Tensor]:
    """Sentences of ids -> tokens (B, T) = <s> + ids and targets (B, T) = ids + </s>, right-padded."""
    width = max(map(len, seqs)) + 1
    tokens = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s) + 1] = torch.tensor([tok.bos_id] + s)
        targets[i, : len(s) + 1] = torch.tensor(s + [tok.eos_id])
    return {"tokens": tokens, "targets": targets}


class TextLMDataModule(SequenceDataModule):
    """One language's text for the language models.

    Args:
        dataset: ``"multi30k"`` (one side of it, ``lang``) or ``"files"``: text files with one
            sentence or paragraph a line (``train_files``, ``val_files``, ``test_files``).
        data_dir: where Multi30k lies (else ``$ZOO_DATA_DIR``, ``../shared/data``, download).
        tokenizer: a tokenizer.json, checkpoint folder or pretrained name to reuse; ``None``
            trains BPE (``vocab_size``) on the training split.
        mode: ``"sentences"``: each line is ``<s> line </s>``, batched by token count; or
            ``"stream"``: the training lines joined into one stream, cut into ``batch_size``
            rows and ``bptt``-long chunks read in order, so the model carries its state
            across chunks (truncated back-propagation through time). Evaluation always
            scores whole sentences, so perplexities compare across models.
        max_tokens: padded tokens per batch in sentence mode.
        max_len: training lines longer than this many subwords are dropped (and counted).
    """

    def __init__(
        self,
        dataset: str = "multi30k",
        data_dir: str | None = None,
        lang: str = "en",
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        mode: str = "sentences",
        max_tokens: int = 4096,
        batch_size: int = 32,
        bptt: int = 64,
        eval_batch_size: int = 128,
        max_len: int = 256,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("multi30k", "files"):
            raise ValueError(f"dataset must be 'multi30k' or 'files', not {dataset!r}")
        if mode not in ("sentences", "stream"):
            raise ValueError(f"mode must be 'sentences' or 'stream', not {mode!r}")
        self.save_hyperparameters()
        self.hp = self.hparams
        self._texts: dict[str, list[str]] = {}
        self._tokenizer: TextTokenizer | None = None
        self.datasets: dict[str, list[list[int]]] = {}

    def texts(self, split: str) -> list[str]:
        if split not in self._texts:
            hp = self.hp
            if hp.dataset == "multi30k":
                lines = read_lines(_split_file(find_multi30k(hp.data_dir), MULTI30K_SPLITS[split], hp.lang))
            else:
                files = _split_setting(hp, split, "files")
                if not files:
                    raise ValueError(f"no {split}_files given for dataset='files'; add them to the data settings")
                lines = [line for f in files for line in read_lines(f)]
                if not any(line.strip() for line in lines):
                    raise ValueError(f"the {split}_files {', '.join(map(str, files))} hold no text; give files with one sentence per line")
            self._texts[split] = _first(lines, _split_setting(hp, split, "limit"))
        return self._texts[split]

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            if self.hp.tokenizer:
                from zoo.hub import load_tokenizers

                self._tokenizer = load_tokenizers(self.hp.tokenizer)[1]
            else:
                self._tokenizer = TextTokenizer.train(self.texts("train"), self.hp.vocab_size)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        name = f"multi30k {self.hp.lang}" if self.hp.dataset == "multi30k" else "user text"
        return {"dataset": name, "lang": self.hp.lang, "test_split": "test_2016_flickr"}

    def _ids(self, split: str) -> list[list[int]]:
        if split not in self.datasets:
            ids = [s for s in self.tokenizer.encode_batch(self.texts(split)) if s]
            if split == "train":
                keep = [s for s in ids if len(s) < self.hp.max_len]
                if len(keep) < len(ids):
                    log.warning("dropped %d of %d training lines longer than max_len=%d subwords",
                                len(ids) - len(keep), len(ids), self.hp.max_len)
                ids = keep
            self.datasets[split] = ids
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage or "fit", ["train", "val", "test"]):
            self._ids(split)

    def _collate(self, seqs: list[list[int]]) -> dict[str, Any]:
        return lm_batch(seqs, self.tokenizer)

    def _stream(self) -> "TextStream":
        """<s> line </s> <s> line </s> ... of the training split, for stream mode."""
        tok = self.tokenizer
        flat = [t for s in self._ids("train") for t in [tok.bos_id] + s + [tok.eos_id]]
        stream = TextStream(flat, self.hp.batch_size, self.hp.bptt, tok.bos_id, tok.pad_id)
        replicas = distributed_world()[0]
        if stream.columns(replicas) < 2:
            on = f" on {replicas} processes" if replicas > 1 else ""
            raise ValueError(f"the training text is too short for batch_size={self.hp.batch_size}{on} in stream mode; "
                             "lower batch_size")
        return stream

    def _stream_batches(self) -> list[dict[str, Any]]:
        """The stream in ``batch_size`` rows, cut into ``bptt`` chunks (one process's)."""
        stream = self._stream()
        return [stream[key] for key in StreamSampler(stream, num_replicas=1, rank=0)]

    def train_dataloader(self) -> Any:
        if self.hp.mode == "stream":
            stream = self._stream()
            return DataLoader(stream, sampler=StreamSampler(stream), batch_size=None)
        data = self._ids("train")
        sampler = TokenBatchSampler([len(s) + 1 for s in data], self.hp.max_tokens, shuffle=True, seed=self.hp.seed)
        return batch_loader(data, sampler, self._collate, self.hp.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        data = self._ids(split)
        return batch_loader(data, EvalBatchSampler(len(data), self.hp.eval_batch_size), self._collate,
                            self.hp.num_workers)


class TextStream(Dataset):
    """Training text as one stream of ids for truncated back-propagation through time.

    With ``R`` processes the stream is cut into ``R`` equal parts, one per rank; a part is
    laid out in ``batch_size`` rows read ``bptt`` columns at a time, so each chunk goes on
    where the rank's previous chunk stopped and a recurrent state carried across chunks
    stays meaningful on every rank. One process reads the whole stream. Items are keyed
    ``(num_replicas, rank, chunk)``: :class:`StreamSampler` yields the keys of its rank.
    """

    def __init__(self, ids: list[int], batch_size: int, bptt: int, bos_id: int, pad_id: int) -> None:
        self.ids, self.batch_size, self.bptt = torch.tensor(ids, dtype=torch.long), batch_size, bptt
        self.bos_id, self.pad_id = bos_id, pad_id

    def columns(self, num_replicas: int) -> int:
        """Tokens per row of each rank's part."""
        return (len(self.ids) - 1) // num_replicas // self.batch_size

    def chunks(self, num_replicas: int) -> int:
        """Chunks (steps) per rank and epoch."""
        return -(-self.columns(num_replicas) // self.bptt)

    def __len__(self) -> int:
        return self.chunks(1)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        num_replicas, rank, chunk = key
        b, n = self.batch_size, self.columns(num_replicas)
        part = self.ids[rank * ((len(self.ids) - 1) // num_replicas):][: b * n + 1]
        start = chunk * self.bptt
        rows_in, rows_out = part[:-1].view(b, n), part[1:].view(b, n)
        targets = rows_out[:, start : start + self.bptt].clone()
        targets[targets == self.bos_id] = self.pad_id  # <s> after </s> is given, not predicted
        return {"tokens": rows_in[:, start : start + self.bptt], "targets": targets, "stream": True, "reset": start == 0}


class StreamSampler(ShardedBatchSampler):
    """The keys of this rank's chunks of a :class:`TextStream`, in reading order.

    A ``ShardedBatchSampler`` so that Lightning leaves the stream loader alone under DDP
    (its ``DistributedSampler`` would deal every rank chunks that do not follow each other);
    the rank is resolved when the loader is read, like the batch samplers'.
    """

    def __init__(self, stream: TextStream, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(num_replicas, rank)
        self.stream = stream

    def shard(self, num_replicas: int, rank: int) -> list[tuple[int, int, int]]:  # type: ignore[override]
        return [(num_replicas, rank, i) for i in range(self.stream.chunks(num_replicas))]

    def __len__(self) -> int:
        return self.stream.chunks(self.num_replicas)

