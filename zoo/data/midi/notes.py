"""Notes, the rows every MIDI encoding starts from, and the Standard MIDI Files they are read
from and written to.

A note is (pitch, onset s, offset s, velocity); a piece is an ``(N, 4)`` float64 array of
them (:func:`note_array` checks one). Files are read with ``symusic``, all tracks merged and
the tempo map applied, and written as one track at 120 bpm, 1 ms a tick, atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zoo.data.base import one_line
from zoo.io import atomic_write

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".MID", ".MIDI")


class Note(NamedTuple):
    """One note: MIDI pitch 0..127, onset and offset in seconds, MIDI velocity 1..127."""

    pitch: int
    start: float
    end: float
    velocity: int


def note_array(notes: Iterable[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Notes as an ``(N, 4)`` float64 array of (pitch, start_s, end_s, velocity), checked."""
    arr = np.asarray(notes if isinstance(notes, np.ndarray) else list(notes), dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"notes must be (pitch, start_s, end_s, velocity) rows, got an array of shape {arr.shape}")
    pitch, start, end, vel = arr.T
    problems = [
        (~np.isfinite(arr).all(1), "is not a finite number"),
        ((pitch < 0) | (pitch > 127) | (pitch != np.round(pitch)), "has a pitch outside the MIDI range 0..127"),
        (start < 0, "starts before time 0"),
        (end < start, "ends before it starts"),
        ((vel < 1) | (vel > 127), "has a velocity outside 1..127"),
    ]
    for bad, what in problems:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"note {i} {tuple(arr[i].tolist())} {what}; fix the note list before encoding")
    return arr


def read_notes(path: str | os.PathLike, keep_drums: bool = False) -> np.ndarray:
    """The notes of a Standard MIDI File, all tracks merged, times in seconds (tempo map applied).

    Returns an ``(N, 4)`` array of (pitch, start_s, end_s, velocity) sorted by onset.
    Raises ``ValueError`` with one line for an empty, non-MIDI, damaged or note-less file.
    """
    from symusic import Score

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MIDI file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path} is empty (0 bytes), not a MIDI file; re-export it or remove it")
    if not data.startswith(b"MThd"):
        raise ValueError(f"{path} is not a Standard MIDI File (it does not start with 'MThd'); give a .mid file")
    try:
        score = Score.from_midi(data, ttype="second")
    except Exception as err:  # symusic raises RuntimeError with a C++ message
        raise ValueError(f"{path} is a damaged MIDI file ({one_line(err)}); re-export it or remove it") from None
    parts = []
    for track in score.tracks:
        if track.is_drum and not keep_drums:
            continue
        a = track.notes.numpy()
        if len(a["pitch"]):
            parts.append(np.stack([a["pitch"], a["time"], a["time"] + a["duration"], a["velocity"]], 1).astype(np.float64))
    if not parts:
        drums = any(t.is_drum and t.note_num() for t in score.tracks)
        hint = " outside its drum tracks (pass keep_drums=True to keep percussion)" if drums and not keep_drums else ""
        raise ValueError(f"{path} has no notes{hint}; there is nothing to encode")
    notes = np.concatenate(parts)
    notes[:, 3] = np.clip(notes[:, 3], 1, 127)  # a note-on of velocity 0 is a note-off; never a note
    return notes[np.lexsort((notes[:, 0], notes[:, 1]))]


def write_notes(notes: Iterable[Sequence[float]] | np.ndarray, path: str | os.PathLike, program: int = 0) -> Path:
    """Write notes to a one-track Standard MIDI File at 120 bpm, 500 ticks a quarter (1 tick = 1 ms)."""
    from symusic import Note as SNote
    from symusic import Score, Tempo, Track

    arr = note_array(notes)
    score = Score(500)
    score.tempos.append(Tempo(0, qpm=120.0))
    track = Track(name="zoo", program=program)
    on = np.floor(arr[:, 1] * 1000 + 0.5).astype(np.int64)
    off = np.maximum(np.floor(arr[:, 2] * 1000 + 0.5).astype(np.int64), on + 1)
    for (p, _, _, v), a, b in zip(arr.astype(np.int64), on, off):
        track.notes.append(SNote(int(a), int(b - a), int(p), int(v)))
    score.tracks.append(track)
    return atomic_write(path, lambda tmp: score.dump_midi(tmp))


def midi_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in MIDI_SUFFIXES and p.is_file())


def read_folder(folder: str | os.PathLike, keep_drums: bool = False, limit: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    """(names, note arrays) of the MIDI files under ``folder`` (the first ``limit`` by name).
    Unreadable files are skipped with one warning that names them; none readable is an error."""
    files = midi_files(folder)[:limit] if limit else midi_files(folder)
    names, pieces, bad = [], [], []
    for f in files:
        try:
            pieces.append(read_notes(f, keep_drums=keep_drums))
            names.append(str(f.relative_to(folder)))
        except ValueError as err:
            bad.append(str(err))
    if bad:
        log.warning("skipped %d of %d MIDI files: %s", len(bad), len(files), " | ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not pieces:
        raise ValueError(f"no readable MIDI file with notes in {folder}" + (f" ({bad[0]})" if bad else ""))
    return names, pieces

