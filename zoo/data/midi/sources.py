"""Where the MIDI data sets are found (or downloaded) and how they become pieces and splits.

- ``folder``: every ``.mid``/``.midi`` file under a folder, all tracks merged (default: the
  cleaned Nottingham Music Database, ``nottingham/MIDI`` under ``data_dir``,
  ``$ZOO_DATA_DIR`` or ``../shared/data``); read with ``symusic``, tempo changes honoured.
- ``jsb``: JSB Chorales, Boulanger-Lewandowski's 229 / 76 / 77 split, from Coconet's
  ``Jsb16thSeparated.json`` (``jsb_chorales/`` in the same places, or downloaded when
  online and checked against its sha256). A 16th note lasts ``JSB_STEP_S`` = 0.12 s
  (125 bpm), a whole number of 10 ms steps, so the performance events of the grid are exact.
- ``bach``: the Bach chorales that ship with ``music21`` (350 distinct files in
  Riemenschneider order), a quarter note = 0.48 s (the same 125 bpm), all parts merged.
  Parsed once (about 80 ms a chorale) and cached as notes in ``$ZOO_CACHE/midi`` (default
  ``~/.cache/zoo/midi``), ``.npz`` without pickle, written atomically. Works offline anywhere.

``folder`` and ``bach`` are split by :func:`split_pieces`; JSB keeps its published split.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.base import one_line
from zoo.data.download import fetch
from zoo.data.midi.notes import MIDI_SUFFIXES
from zoo.data.midi.tokenizer import DEFAULT_VELOCITY, JSB_STEP_S
from zoo.data.text import DOWNLOAD_DIR, _candidate_dirs
from zoo.io import atomic_write

log = logging.getLogger(__name__)

BACH_QUARTER_S = 4 * JSB_STEP_S  # a quarter note of the music21 chorales, in seconds
JSB_URL = "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/Jsb16thSeparated.json"
JSB_FILE = "Jsb16thSeparated.json"
JSB_SHA256 = "79294cc374f9252e95ef4b703161524c1c53dc1f712c236f00f1c1f5d54af5a7"
JSB_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def cache_dir() -> Path:
    """Where converted corpora are kept: ``$ZOO_CACHE/midi`` (default ``~/.cache/zoo/midi``)."""
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")).expanduser() / "midi"


def find_jsb(data_dir: str | None = None, download: bool = True) -> Path:
    """Coconet's ``Jsb16thSeparated.json``, found locally (``data_dir``, ``$ZOO_DATA_DIR``,
    ``../shared/data``, the download cache; each may hold ``jsb_chorales/``) or downloaded."""
    looked = []
    for d in _candidate_dirs(data_dir):
        for folder in (d, d / "jsb_chorales"):
            looked.append(str(folder))
            if (folder / JSB_FILE).is_file():
                return folder / JSB_FILE
    if download:
        try:
            return fetch([JSB_URL], DOWNLOAD_DIR / "jsb_chorales" / JSB_FILE, sha256=JSB_SHA256, timeout=30)
        except OSError as err:
            looked.append(f"download failed: {one_line(err)}")
    raise FileNotFoundError(
        f"JSB Chorales ({JSB_FILE}) not found (looked in " + "; ".join(looked) + "); set data_dir or "
        "ZOO_DATA_DIR to the folder holding it, go online to download it, or use source='bach' (music21, offline)"
    )


def load_jsb(path: str | os.PathLike | None = None, split: str = "train") -> list[np.ndarray]:
    """The chorales of one split (``train`` 229, ``val`` 76, ``test`` 77) as ``(T, 4)`` int grids, -1 = rest."""
    if split not in JSB_SPLITS:
        raise ValueError(f"split must be one of {list(JSB_SPLITS)}, not {split!r}")
    path = Path(path) if path else find_jsb()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [np.asarray(c, dtype=np.int64).reshape(-1, 4) for c in data[JSB_SPLITS[split]]]


def find_midi_folder(data_dir: str | None = None) -> Path:
    """A folder of MIDI files: ``data_dir`` itself, else ``nottingham/MIDI`` in the data folders."""

    def has_midi(folder: Path) -> bool:
        return folder.is_dir() and any(p.suffix in MIDI_SUFFIXES for p in folder.rglob("*"))

    if data_dir:
        d = Path(data_dir).expanduser()
        for folder in (d, d / "nottingham" / "MIDI"):
            if has_midi(folder):
                return folder
        raise FileNotFoundError(f"{d} holds no .mid or .midi files; point data_dir at a folder of MIDI files")
    looked = []
    for d in _candidate_dirs(None):
        folder = d / "nottingham" / "MIDI"
        looked.append(str(folder))
        if has_midi(folder):
            return folder
    raise FileNotFoundError(
        "the Nottingham MIDI folder was not found (looked in " + "; ".join(looked) + "); set data_dir to a folder "
        "of MIDI files or ZOO_DATA_DIR to the folder holding nottingham/MIDI, or use source='bach' (offline)"
    )


def bach_chorale_names() -> list[str]:
    """music21's Bach chorales in Riemenschneider order, each file once (350)."""
    from music21 import corpus

    return list(dict.fromkeys(corpus.chorales.Iterator(returnType="filename")))


def music21_notes(score: Any, quarter_s: float = BACH_QUARTER_S, velocity: int = DEFAULT_VELOCITY) -> np.ndarray:
    """The notes of a music21 score, every part merged, ties joined, a quarter = ``quarter_s``."""
    rows = []
    for part in score.parts:
        for n in part.stripTies().flatten().notes:
            ql = float(n.duration.quarterLength)
            if ql <= 0:  # grace notes
                continue
            start = float(n.offset) * quarter_s
            for p in n.pitches:
                rows.append((p.midi, start, start + ql * quarter_s, velocity))
    rows.sort(key=lambda r: (r[1], r[0]))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def load_bach(limit: int | None = None, progress: bool = True) -> tuple[list[str], list[np.ndarray]]:
    """(names, note arrays) of music21's Bach chorales, converted once and cached as ``.npz``.

    The whole corpus is cached once converted; a ``limit`` reads the first N from that
    cache (or from a cache of at least N) when there is one, else converts and caches
    only those N. A damaged cache is converted again, with a warning.
    """
    folder = cache_dir()
    stem = f"bach_chorales-v1-q{BACH_QUARTER_S:g}"
    full, part = folder / f"{stem}-all.npz", folder / f"{stem}-n{limit}.npz"
    candidates = [full]
    if limit:  # a cache of at least ``limit`` chorales serves too
        sizes = [(int(p.stem.rsplit("-n", 1)[1]), p) for p in folder.glob(f"{stem}-n*.npz") if p.stem.rsplit("-n", 1)[1].isdigit()]
        candidates += [p for n, p in sorted(sizes) if n >= limit]
    for path in candidates:
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    notes, offsets, names = z["notes"], z["offsets"], z["names"].tolist()
                pieces = [notes[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
                return (names[:limit], pieces[:limit]) if limit else (names, pieces)
            except (OSError, ValueError, KeyError) as err:
                log.warning("ignoring the damaged cache %s (%s); converting again", path, one_line(err))
    from music21 import corpus
    from tqdm.auto import tqdm

    all_names = bach_chorale_names()
    todo = all_names[:limit] if limit else all_names
    names, pieces = [], []
    for name in tqdm(todo, desc="music21 Bach chorales -> notes (once, then cached)", unit="chorale", disable=not progress):
        notes = music21_notes(corpus.parse(name))
        if len(notes):
            names.append(name)
            pieces.append(notes)
    if not pieces:
        raise ValueError("music21's corpus gave no Bach chorale with notes; reinstall music21")
    folder.mkdir(parents=True, exist_ok=True)
    path = full if not limit or limit >= len(all_names) else part
    offsets = np.cumsum([0] + [len(p) for p in pieces])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, notes=np.concatenate(pieces), offsets=offsets, names=np.array(names, dtype=str))

    atomic_write(path, write)
    return names, pieces


def split_pieces(names: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Indices of train / val / test: names sorted, shuffled by ``seed``, cut by ``fractions``.
    With at least three pieces, val and test hold at least one each."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (train, val, test) summing to 1, not {list(fractions)}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(n_val, 1 if fractions[1] else 0), max(n_test, 1 if fractions[2] else 0)
    n_train = n - n_val - n_test
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train : n_train + n_val]),
            "test": sorted(order[n_train + n_val :])}

