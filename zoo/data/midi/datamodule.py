"""The MIDI data module: pieces of a source, encoded, cut into training windows and batched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import EvalBatchSampler, ProcessRNG, SequenceDataModule, batch_loader
from zoo.data.midi.augment import augment_grid, augment_notes
from zoo.data.midi.notes import read_folder
from zoo.data.midi.sources import (BACH_QUARTER_S, JSB_SPLITS, find_jsb, find_midi_folder, load_bach, load_jsb,
                                   split_pieces)
from zoo.data.midi.tokenizer import JSB_STEP_S, ChoraleTokenizer, EventTokenizer, grid_to_notes


def window_batch(windows: Sequence[Sequence[int]], pad_id: int,
                 starts: Sequence[int] | None = None) -> dict[str, Tensor]:
    """Windows of ``<s> ids </s>`` -> tokens (B, T) = window[:-1], targets (B, T) = window[1:], right-padded.
    For whole pieces this is ``zoo.data.text.lm_batch``. ``starts``: where each window begins
    in its piece, returned as ``positions`` (B,): the position of each window's first token."""
    width = max(len(w) for w in windows) - 1
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(windows), width), pad_id, dtype=torch.long)
    for i, w in enumerate(windows):
        t = torch.as_tensor(w, dtype=torch.long)
        tokens[i, : len(w) - 1] = t[:-1]
        targets[i, : len(w) - 1] = t[1:]
    batch = {"tokens": tokens, "targets": targets}
    if starts is not None:
        batch["positions"] = torch.as_tensor(starts, dtype=torch.long)
    return batch


class _Crops(Dataset):
    """Training examples: each piece (augmented afresh each time) encoded as ``<s> ids </s>``
    and cut to a random window of ``crop_len + 1`` tokens (starting on a step for the grid).

    Each example is ``(window, start)``: a window keeps its positions in the piece, so a model
    with absolute positions sees the soprano of a step at the same positions in training as
    in whole-piece evaluation (numbered from 0, a crop would put a different voice at each)."""

    def __init__(self, pieces: list[np.ndarray], encode: Any, crop_len: int, align: int, bos: int, eos: int,
                 crops_per_piece: int, seed: int) -> None:
        self.pieces, self.encode, self.crop_len, self.align = pieces, encode, crop_len, align
        self.bos, self.eos, self.crops_per_piece, self.seed = bos, eos, crops_per_piece, seed
        self.rng = ProcessRNG(seed)

    def __len__(self) -> int:
        return len(self.pieces) * self.crops_per_piece

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        rng = self.rng()
        seq = [self.bos] + self.encode(self.pieces[i % len(self.pieces)], rng) + [self.eos]
        need = self.crop_len + 1
        if len(seq) <= need:
            return seq, 0
        starts = len(seq) - need + 1
        if self.align > 1:  # <s>, or the first voice of a step
            choices = np.concatenate([[0], np.arange(1, starts, self.align)])
            a = int(choices[rng.integers(len(choices))])
        else:
            a = int(rng.integers(starts))
        return seq[a : a + need], a


class MIDIDataModule(SequenceDataModule):
    """MIDI events for the Music Transformer and any causal language model in the zoo.

    Batches are ``{"tokens": (B, T), "targets": (B, T)}`` long tensors, targets the tokens
    shifted by one and both right-padded with ``pad_id``, as ``CausalLMTask`` trains on.
    Training cuts random windows of ``crop_len`` tokens from ``<s> piece </s>``, augmenting
    each piece afresh; evaluation scores whole pieces (or their first ``eval_max_len``
    tokens), unaugmented, so perplexities compare across models.

    Args:
        source: ``"folder"`` (MIDI files; default the Nottingham folder), ``"jsb"`` (JSB
            Chorales with its published split) or ``"bach"`` (music21's Bach chorales, offline).
        data_dir: for ``folder``, the folder of MIDI files (searched recursively; else
            ``nottingham/MIDI`` under ``$ZOO_DATA_DIR`` or ``../shared/data``); for ``jsb``,
            the folder holding ``Jsb16thSeparated.json`` (else the same places, or a download).
        encoding: ``"performance"`` events (every source), or ``"chorale"``: the S, A, T, B
            grid of ``jsb`` (a paper setting).
        crop_len: tokens per training window.
        batch_size: windows per training batch; ``eval_batch_size``: pieces per eval batch.
        eval_max_len: score at most this many tokens of each piece (``None``: whole pieces).
        augment: training pieces transposed by an integer in [-``transpose``, ``transpose``]
            semitones and (performance encoding) stretched in time by a factor in
            [1 - ``stretch``, 1 + ``stretch``], before encoding.
        split, seed: for ``folder`` and ``bach``, the fractions (train, val, test) of the
            pieces, assigned by sorting their names and shuffling with ``seed`` (JSB keeps
            its own split). ``seed`` also seeds augmentation and cropping.
        keep_drums: keep percussion tracks of MIDI files (as ordinary pitches).
        limit: read only the first N pieces (files, chorales; for ``jsb``, of each split).
        crops_per_piece: training windows per piece in an epoch.

    Pieces from MIDI files start at their first note (leading silence is dropped).
    """

    def __init__(
        self,
        source: str = "bach",
        data_dir: str | None = None,
        encoding: str = "performance",
        crop_len: int = 512,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        eval_max_len: int | None = None,
        augment: bool = True,
        transpose: int = 3,
        stretch: float = 0.05,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        keep_drums: bool = False,
        limit: int | None = None,
        crops_per_piece: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("folder", "jsb", "bach"):
            raise ValueError(f"source must be 'folder', 'jsb' or 'bach', not {source!r}")
        if encoding not in ("performance", "chorale"):
            raise ValueError(f"encoding must be 'performance' or 'chorale', not {encoding!r}")
        if encoding == "chorale" and source != "jsb":
            raise ValueError("encoding='chorale' needs the 4-voice grid of source='jsb'; use encoding='performance'")
        if crop_len < 2:
            raise ValueError(f"crop_len must be at least 2 tokens, not {crop_len}")
        if not 0 <= stretch < 1 or transpose < 0:
            raise ValueError("transpose must be >= 0 semitones and stretch in [0, 1)")
        split_fracs = tuple(float(f) for f in split)
        split_pieces(["a"], split_fracs, 0)  # validates the fractions now, not at setup
        self.save_hyperparameters()
        self.hp = self.hparams
        self._tokenizer: EventTokenizer | ChoraleTokenizer = (
            ChoraleTokenizer() if encoding == "chorale" else EventTokenizer()
        )
        self._pieces: dict[str, list[np.ndarray]] | None = None
        self._names: dict[str, list[str]] = {}
        self._folder: Path | None = None
        self.datasets: dict[str, Any] = {}

    # -- vocabulary -----------------------------------------------------------------
    @property
    def tokenizer(self) -> EventTokenizer | ChoraleTokenizer:
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        """What the data was, for config.json and the model card."""
        hp = self.hp
        name = {"jsb": "JSB Chorales (Coconet 16th grid, Boulanger-Lewandowski split)",
                "bach": "music21 Bach chorales"}.get(hp.source)
        if name is None:
            name = "user MIDI folder" if hp.data_dir else "Nottingham Music Database (cleaned)"
        d: dict[str, Any] = {"dataset": name, "source": hp.source, "encoding": hp.encoding,
                             "tokenizer": self._tokenizer.to_dict(), "crop_len": hp.crop_len,
                             "augment": {"transpose": hp.transpose, "stretch": hp.stretch} if hp.augment else None}
        if hp.source != "jsb":
            d["split"] = {"fractions": list(hp.split), "seed": hp.seed, "rule": "names sorted, shuffled by seed"}
        if hp.source == "jsb" and hp.encoding == "performance":
            d["jsb_step_s"] = JSB_STEP_S
        if hp.source == "bach":
            d["quarter_s"] = BACH_QUARTER_S
        if self._pieces is not None:
            d["pieces"] = {k: len(v) for k, v in self._pieces.items()}
        if hp.limit:
            d["limit"] = hp.limit
        return d

    # -- pieces -----------------------------------------------------------------------
    def pieces(self, split: str) -> list[np.ndarray]:
        """Raw pieces of ``split``: note arrays (N, 4), or (T, 4) grids for the chorale encoding."""
        if self._pieces is None:
            self._pieces = self._load()
        return self._pieces[split]

    def names(self, split: str) -> list[str]:
        self.pieces(split)
        return self._names[split]

    def _load(self) -> dict[str, list[np.ndarray]]:
        hp = self.hp
        if hp.source == "jsb":
            path = find_jsb(hp.data_dir)
            out = {}
            for split in JSB_SPLITS:
                grids = load_jsb(path, split)[: hp.limit or None]
                self._names[split] = [f"{JSB_SPLITS[split]}/{i}" for i in range(len(grids))]
                out[split] = grids if hp.encoding == "chorale" else [grid_to_notes(g) for g in grids]
            return out
        if hp.source == "folder":
            self._folder = find_midi_folder(hp.data_dir)
            names, pieces = read_folder(self._folder, keep_drums=hp.keep_drums, limit=hp.limit)
            pieces = [_trim(p) for p in pieces]
        else:
            names, pieces = load_bach(limit=hp.limit)
        idx = split_pieces(names, hp.split, hp.seed)
        self._names = {k: [names[i] for i in v] for k, v in idx.items()}
        return {k: [pieces[i] for i in v] for k, v in idx.items()}

    # -- encoding ---------------------------------------------------------------------
    def _encode(self, piece: np.ndarray, rng: np.random.Generator | None = None) -> list[int]:
        hp, tok = self.hp, self._tokenizer
        if hp.encoding == "chorale":
            return tok.encode(augment_grid(piece, rng, hp.transpose) if rng is not None else piece)
        return tok.encode(augment_notes(piece, rng, hp.transpose, hp.stretch) if rng is not None else piece)

    def _train_encode(self, piece: np.ndarray, rng: np.random.Generator) -> list[int]:
        return self._encode(piece, rng if self.hp.augment else None)

    def _eval_windows(self, split: str) -> list[list[int]]:
        if split not in self.datasets:
            tok, m = self._tokenizer, self.hp.eval_max_len
            seqs = [[tok.bos_id] + self._encode(p) + [tok.eos_id] for p in self.pieces(split)]
            self.datasets[split] = [s[: m + 1] if m else s for s in seqs]
        return self.datasets[split]

    def eval_batches(self, split: str, first: int | None = None, batch_size: int = 5) -> list[dict[str, Tensor]]:
        """The first ``first`` whole pieces of ``split`` (all: None) as batches, as evaluation scores them."""
        windows = self._eval_windows(split)[:first]
        return [self._collate(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]

    def _setup_split(self, split: str) -> None:
        if split == "train":
            self.pieces("train")
        else:
            self._eval_windows(split)

    # -- loaders ----------------------------------------------------------------------
    def _collate(self, windows: list[list[int]]) -> dict[str, Tensor]:
        return window_batch(windows, self.pad_id)

    def _collate_crops(self, crops: list[tuple[list[int], int]]) -> dict[str, Tensor]:
        windows, starts = zip(*crops)
        return window_batch(windows, self.pad_id, starts)

    def train_dataloader(self) -> DataLoader:
        hp, tok = self.hp, self._tokenizer
        pieces = self.pieces("train")
        if not pieces:
            raise ValueError("the training split is empty; lower split's val/test fractions or raise limit")
        data = _Crops(pieces, self._train_encode, hp.crop_len, 4 if hp.encoding == "chorale" else 1,
                      tok.bos_id, tok.eos_id, hp.crops_per_piece, hp.seed)
        return DataLoader(data, batch_size=hp.batch_size, shuffle=True, collate_fn=self._collate_crops,
                          num_workers=hp.num_workers, drop_last=False)

    def _eval_loader(self, split: str) -> DataLoader:
        # whole pieces in order, each scored once across DDP ranks (Lightning splits the training loader)
        data = self._eval_windows(split)
        return batch_loader(data, EvalBatchSampler(len(data), self.hp.eval_batch_size), self._collate,
                            self.hp.num_workers)


def _trim(notes: np.ndarray) -> np.ndarray:
    """Start a piece at its first note."""
    out = notes.copy()
    out[:, 1:3] -= notes[:, 1].min()
    return out

