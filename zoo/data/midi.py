"""MIDI events for the Music Transformer (Huang et al. 2018): tokenisers and a data module.

Performance encoding (Oore et al. 2018, used by the Music Transformer on Piano-e-Competition):
a piece is a stream of 388 events,

    NOTE_ON(pitch)      128   a key goes down
    NOTE_OFF(pitch)     128   a key comes up
    TIME_SHIFT(n)       100   time moves on n x 10 ms (10 ms .. 1 s); longer rests chain them
    VELOCITY(bin)        32   loudness of the NOTE_ONs that follow (127 MIDI velocities in 32 bins)

after the special tokens ``<pad>=0``, ``<s>=1``, ``</s>=2``: 391 ids in all. Times are
rounded to the 10 ms grid, so a round trip keeps each note's pitch, its onset and offset
within 10 ms and its velocity within its bin.

A pitch sounds at most once at a time (as a re-struck piano key): when a pitch starts again
while it still sounds, the earlier note ends at the new onset; two notes of one pitch that
start on the same 10 ms step become one (the longer, with its velocity). This is the one
place where a round trip moves an offset by more than 10 ms, and it keeps every stream
well formed: each NOTE_OFF closes the one sounding note of its pitch. Notes shorter than
one step are lengthened to one step. Within a step, NOTE_OFFs come before NOTE_ONs, each
by pitch, and a VELOCITY event precedes a NOTE_ON only when the bin changes.

Chorale encoding (Huang et al. 2018, JSB Chorales as in Coconet, Huang et al. 2017): each
16th-note step is four tokens, the pitches of soprano, alto, tenor and bass, or a rest
token for a silent voice (``ChoraleTokenizer``: ``<pad>``, ``<s>``, ``</s>``, rest, 128
pitches). The grid cannot tell a held note from a repeated one: a voice's equal
consecutive pitches are one held note when the grid becomes notes.

Data (``MIDIDataModule``):

- ``source="folder"``: every ``.mid``/``.midi`` file under a folder, all tracks merged
  (default: the cleaned Nottingham Music Database, ``nottingham/MIDI`` under ``data_dir``,
  ``$ZOO_DATA_DIR`` or ``../shared/data``); read with ``symusic``, tempo changes honoured.
- ``source="jsb"``: JSB Chorales, Boulanger-Lewandowski's 229 / 76 / 77 split, from
  Coconet's ``Jsb16thSeparated.json`` (``jsb_chorales/`` in the same places, or downloaded
  when online). A 16th note lasts ``JSB_STEP_S`` = 0.12 s (125 bpm), a whole number of
  10 ms steps, so the performance events of the grid are exact.
- ``source="bach"``: the Bach chorales that ship with ``music21`` (350 distinct files in
  Riemenschneider order), a quarter note = 0.48 s (the same 125 bpm), all parts merged.
  Parsed once (about 80 ms a chorale) and cached as notes in ``$ZOO_CACHE/midi`` (default
  ``~/.cache/zoo/midi``), ``.npz`` without pickle, written atomically. Works offline anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import EvalBatchSampler, ProcessRNG, SequenceDataModule, batch_loader
from zoo.data.text import DOWNLOAD_DIR, _candidate_dirs
from zoo.data.tokenizer import JsonTokenizer

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
JSB_STEP_S = 0.12  # one 16th note of the JSB grid, in seconds (125 bpm; 12 steps of 10 ms)
BACH_QUARTER_S = 4 * JSB_STEP_S  # a quarter note of the music21 chorales, in seconds
DEFAULT_VELOCITY = 80  # for notes from scores (JSB, music21), which carry no loudness
JSB_URL = "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/Jsb16thSeparated.json"
JSB_FILE = "Jsb16thSeparated.json"
JSB_SPLITS = {"train": "train", "val": "valid", "test": "test"}
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


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _tokenizer_json(text: str) -> dict[str, Any]:
    """The JSON object of a MIDI tokenizer file, or a one-line ValueError saying it is not one."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not a MIDI tokenizer file: it is not JSON ({err}); give the tokenizer.json saved with the model") from None
    if not isinstance(d, dict):
        raise ValueError(f"not a MIDI tokenizer file: it holds a JSON {type(d).__name__}, not an object; "
                         "give the tokenizer.json saved with the model")
    return d


def _read_tokenizer_file(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a MIDI tokenizer file (not UTF-8 text); give the tokenizer.json saved with the model") from None


# -- MIDI files ------------------------------------------------------------------------
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
        raise ValueError(f"{path} is a damaged MIDI file ({_one_line(err)}); re-export it or remove it") from None
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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    score.dump_midi(str(tmp))
    os.replace(tmp, path)
    return path


# -- performance events -----------------------------------------------------------------
class _MIDITokenizer(JsonTokenizer):
    """JSON form, files and equality of the MIDI tokenizers, with errors worded for MIDI."""

    _parse = staticmethod(_tokenizer_json)
    _read = staticmethod(_read_tokenizer_file)


class EventTokenizer(_MIDITokenizer):
    """The performance encoding: notes <-> NOTE_ON / NOTE_OFF / TIME_SHIFT / VELOCITY ids.

    Args:
        step_ms: the time grid (10 ms in the paper).
        max_shift_steps: the longest single TIME_SHIFT, in steps (100: 1 s).
        velocity_bins: how many loudness levels (32).

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, then NOTE_ON 0..127, NOTE_OFF 0..127,
    TIME_SHIFT 1..max_shift_steps, VELOCITY 0..velocity_bins-1.
    """

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    specials = (PAD, BOS, EOS)
    kind = "midi_events"

    def __init__(self, step_ms: int = 10, max_shift_steps: int = 100, velocity_bins: int = 32) -> None:
        if not (isinstance(step_ms, int) and step_ms >= 1):
            raise ValueError(f"step_ms must be a positive whole number of milliseconds, not {step_ms!r}")
        if not (isinstance(max_shift_steps, int) and max_shift_steps >= 1):
            raise ValueError(f"max_shift_steps must be a positive integer, not {max_shift_steps!r}")
        if not (isinstance(velocity_bins, int) and 1 <= velocity_bins <= 127):
            raise ValueError(f"velocity_bins must be an integer in 1..127, not {velocity_bins!r}")
        self.step_ms, self.max_shift_steps, self.velocity_bins = step_ms, max_shift_steps, velocity_bins
        self.step_s = step_ms / 1000
        self.note_on_offset = len(self.specials)
        self.note_off_offset = self.note_on_offset + 128
        self.time_shift_offset = self.note_off_offset + 128
        self.velocity_offset = self.time_shift_offset + max_shift_steps
        self.vocab_size = self.velocity_offset + velocity_bins
        v = np.arange(128)
        self.velocity_to_bin = np.maximum(v - 1, 0) * velocity_bins // 127  # (128,) MIDI velocity -> bin
        # each bin decodes to the middle of the velocities it holds
        self.bin_to_velocity = np.array(
            [int(np.ceil(np.median(v[1:][self.velocity_to_bin[1:] == b]))) for b in range(velocity_bins)]
        )

    # -- JSON form, saved as tokenizer.json beside a checkpoint -----------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "step_ms": self.step_ms, "max_shift_steps": self.max_shift_steps,
                "velocity_bins": self.velocity_bins, "specials": list(self.specials), "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EventTokenizer":
        if d.get("type") != cls.kind:
            raise ValueError(f"not a MIDI event tokenizer (type {d.get('type')!r}, expected {cls.kind!r}); "
                             "give the tokenizer.json saved with a MIDI-event model")
        try:
            tok = cls(d["step_ms"], d["max_shift_steps"], d["velocity_bins"])
        except KeyError as err:
            raise ValueError(f"MIDI event tokenizer JSON lacks {err}; re-save it with EventTokenizer.save") from None
        if d.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise ValueError(f"tokenizer JSON says vocab_size {d['vocab_size']} but its settings give {tok.vocab_size}")
        return tok

    def __repr__(self) -> str:
        return (f"EventTokenizer(step_ms={self.step_ms}, max_shift_steps={self.max_shift_steps}, "
                f"velocity_bins={self.velocity_bins}, vocab_size={self.vocab_size})")

    # -- readable tokens -------------------------------------------------------------
    def event_name(self, i: int) -> str:
        """``NOTE_ON_60``, ``NOTE_OFF_60``, ``TIME_SHIFT_250ms``, ``VELOCITY_20`` (bin), or a special."""
        i = int(i)
        self._check_ids(np.array([i]))
        if i < self.note_on_offset:
            return self.specials[i]
        if i < self.note_off_offset:
            return f"NOTE_ON_{i - self.note_on_offset}"
        if i < self.time_shift_offset:
            return f"NOTE_OFF_{i - self.note_off_offset}"
        if i < self.velocity_offset:
            return f"TIME_SHIFT_{(i - self.time_shift_offset + 1) * self.step_ms}ms"
        return f"VELOCITY_{i - self.velocity_offset}"

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The name of each id (for labelling attention pictures)."""
        return [self.event_name(i) for i in ids]

    def token_id(self, name: str) -> int:
        """The id of an event name from :meth:`event_name`."""
        if name in self.specials:
            return self.specials.index(name)
        kind, _, value = name.rpartition("_")
        try:
            if kind == "NOTE_ON" and 0 <= int(value) < 128:
                return self.note_on_offset + int(value)
            if kind == "NOTE_OFF" and 0 <= int(value) < 128:
                return self.note_off_offset + int(value)
            if name.startswith("TIME_SHIFT_") and name.endswith("ms"):
                ms = int(name[len("TIME_SHIFT_"):-2])
                if ms % self.step_ms == 0 and 1 <= ms // self.step_ms <= self.max_shift_steps:
                    return self.time_shift_offset + ms // self.step_ms - 1
            if kind == "VELOCITY" and 0 <= int(value) < self.velocity_bins:
                return self.velocity_offset + int(value)
        except ValueError:
            pass
        raise ValueError(f"{name!r} is not an event of this tokenizer; see EventTokenizer.event_name")

    # -- encoding ---------------------------------------------------------------------
    def quantise(self, notes: Iterable[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Notes on the time grid, one sounding note per pitch: ``(N, 4)`` int64 rows of
        (pitch, onset step, offset step, velocity bin), sorted by pitch then onset."""
        arr = note_array(notes)
        if len(arr) == 0:
            return np.zeros((0, 4), dtype=np.int64)
        pitch = arr[:, 0].astype(np.int64)
        on_f, off_f = arr[:, 1] / self.step_s, arr[:, 2] / self.step_s
        on, off = np.floor(on_f + 0.5).astype(np.int64), np.floor(off_f + 0.5).astype(np.int64)
        # a note shorter than one step lasts one step: (k-1, k) or (k, k+1), whichever is nearer
        short = off <= on
        if short.any():
            k = on[short]
            earlier = (on_f[short] + off_f[short] <= 2 * k) & (k >= 1)
            on[short] = k - earlier
            off[short] = on[short] + 1
        vbin = self.velocity_to_bin[arr[:, 3].astype(np.int64)]
        order = np.lexsort((-off, on, pitch))
        pitch, on, off, vbin = pitch[order], on[order], off[order], vbin[order]
        # same pitch, same onset step: keep the longest (first in this order)
        keep = np.ones(len(pitch), dtype=bool)
        keep[1:] = (pitch[1:] != pitch[:-1]) | (on[1:] != on[:-1])
        pitch, on, off, vbin = pitch[keep], on[keep], off[keep], vbin[keep]
        # a pitch that starts again ends the note still sounding
        same = pitch[1:] == pitch[:-1]
        off[:-1] = np.where(same, np.minimum(off[:-1], on[1:]), off[:-1])
        return np.stack([pitch, on, off, vbin], 1)

    def encode(self, notes: Iterable[Sequence[float]] | np.ndarray) -> list[int]:
        """Notes (pitch, start_s, end_s, velocity) -> event ids (no ``<s>`` / ``</s>``)."""
        q = self.quantise(notes)
        n = len(q)
        if n == 0:
            return []
        pitch, on, off, vbin = q.T
        # events: (step, kind 0 = off / 1 = on, pitch, bin); offs first within a step
        step = np.concatenate([off, on])
        kind = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        pit = np.concatenate([pitch, pitch])
        bins = np.concatenate([np.full(n, -1), vbin])
        order = np.lexsort((pit, kind, step))
        step, kind, pit, bins = step[order], kind[order], pit[order], bins[order]
        token = np.where(kind == 1, self.note_on_offset + pit, self.note_off_offset + pit)
        # a VELOCITY event before a NOTE_ON whose bin differs from the previous NOTE_ON's
        on_idx = np.flatnonzero(kind == 1)
        on_bins = bins[on_idx]
        changed = np.ones(len(on_idx), dtype=bool)
        changed[1:] = on_bins[1:] != on_bins[:-1]
        n_vel = np.zeros(len(step), dtype=np.int64)
        n_vel[on_idx[changed]] = 1
        # TIME_SHIFTs before an event: full shifts, then the remainder
        gap = np.diff(step, prepend=0)
        full, rest = gap // self.max_shift_steps, gap % self.max_shift_steps
        n_ts = full + (rest > 0)
        per_event = n_ts + n_vel + 1
        start = np.cumsum(per_event) - per_event
        out = np.empty(int(per_event.sum()), dtype=np.int64)
        out[start + n_ts + n_vel] = token
        vel_at = np.flatnonzero(n_vel)
        out[start[vel_at] + n_ts[vel_at]] = self.velocity_offset + bins[vel_at]
        ev = np.repeat(np.arange(len(step)), n_ts)
        within = np.arange(len(ev)) - np.repeat(np.cumsum(n_ts) - n_ts, n_ts)
        shift = np.where(within < full[ev], self.max_shift_steps, rest[ev])
        out[start[ev] + within] = self.time_shift_offset + shift - 1
        return out.tolist()

    def encode_file(self, path: str | os.PathLike, keep_drums: bool = False) -> list[int]:
        """A Standard MIDI File (all tracks merged, drums dropped unless ``keep_drums``) -> ids."""
        return self.encode(read_notes(path, keep_drums=keep_drums))

    # -- decoding ---------------------------------------------------------------------
    def _check_ids(self, ids: np.ndarray) -> None:
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"event id {int(ids[i])} at position {i} is outside the vocabulary 0..{self.vocab_size - 1}; "
                "decode only ids made by this EventTokenizer (or a model trained with it)"
            )

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray, strict: bool = False) -> list[Note]:
        """Event ids -> notes sorted by onset. ``<s>`` and ``<pad>`` are skipped; ``</s>`` ends the piece.

        A model's samples may be malformed. By default they are repaired as the encoder
        would: a NOTE_ON of a sounding pitch ends the earlier note, a NOTE_OFF of a silent
        pitch is ignored, a NOTE_ON before any VELOCITY plays at velocity 64, and notes
        still sounding at the end stop there (after at least one step). ``strict=True``
        raises ``ValueError`` at the first of these instead.
        """
        arr = np.asarray(ids.tolist() if isinstance(ids, Tensor) else ids, dtype=np.int64).reshape(-1)
        self._check_ids(arr)
        step, vbin = 0, None
        sounding: dict[int, tuple[int, int]] = {}  # pitch -> (onset step, velocity)
        notes: list[tuple[int, int, int, int]] = []

        def fail(pos: int, what: str) -> None:
            raise ValueError(f"malformed event stream at position {pos} ({self.event_name(int(arr[pos]))}): {what}; "
                             "decode with strict=False to repair it")

        for pos, i in enumerate(arr.tolist()):
            if i == self.eos_id:
                break
            if i < self.note_on_offset:
                continue
            if i < self.note_off_offset:
                p = i - self.note_on_offset
                if vbin is None:
                    if strict:
                        fail(pos, "NOTE_ON before any VELOCITY")
                    vel = 64
                else:
                    vel = int(self.bin_to_velocity[vbin])
                if p in sounding:
                    if strict:
                        fail(pos, f"pitch {p} is already sounding")
                    a, v = sounding.pop(p)
                    if step > a:
                        notes.append((p, a, step, v))
                sounding[p] = (step, vel)
            elif i < self.time_shift_offset:
                p = i - self.note_off_offset
                if p not in sounding:
                    if strict:
                        fail(pos, f"pitch {p} is not sounding")
                    continue
                a, v = sounding.pop(p)
                if step == a and strict:
                    fail(pos, f"pitch {p} ends at the step it starts")
                notes.append((p, a, max(step, a + 1), v))
            elif i < self.velocity_offset:
                step += i - self.time_shift_offset + 1
            else:
                vbin = i - self.velocity_offset
        if sounding and strict:
            raise ValueError(f"malformed event stream: pitches {sorted(sounding)} never end; "
                             "decode with strict=False to end them with the stream")
        notes += [(p, a, max(step, a + 1), v) for p, (a, v) in sounding.items()]
        notes.sort(key=lambda n: (n[1], n[0], n[2]))
        s = self.step_s
        return [Note(p, round(a * s, 6), round(b * s, 6), v) for p, a, b, v in notes]

    def decode_to_midi(self, ids: Sequence[int] | Tensor | np.ndarray, path: str | os.PathLike,
                       program: int = 0, strict: bool = False) -> Path:
        """Event ids -> a one-track Standard MIDI File at ``path`` (GM ``program``, 0 = piano)."""
        notes = self.decode(ids, strict=strict)
        if not notes:
            raise ValueError("the event ids hold no notes; there is nothing to write to a MIDI file")
        return write_notes(notes, path, program=program)


# -- the chorale grid -------------------------------------------------------------------
class ChoraleTokenizer(_MIDITokenizer):
    """Coconet's 16th-note grid as the Music Transformer serialises it: S, A, T, B per step.

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``REST`` 3, then MIDI pitch p as ``4 + p``.
    A grid is an ``(T, 4)`` integer array, -1 (or NaN) for a silent voice.
    """

    pad_id, bos_id, eos_id, rest_id = PAD_ID, BOS_ID, EOS_ID, 3
    specials = (PAD, BOS, EOS, "REST")
    kind = "chorale_grid"
    voices = ("S", "A", "T", "B")
    pitch_offset = 4
    vocab_size = pitch_offset + 128

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "voices": list(self.voices), "specials": list(self.specials), "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChoraleTokenizer":
        if d.get("type") != cls.kind:
            raise ValueError(f"not a chorale tokenizer (type {d.get('type')!r}, expected {cls.kind!r})")
        return cls()

    def __repr__(self) -> str:
        return f"ChoraleTokenizer(vocab_size={self.vocab_size})"

    def event_name(self, i: int) -> str:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"chorale id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
        return self.specials[i] if i < self.pitch_offset else f"PITCH_{i - self.pitch_offset}"

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.event_name(i) for i in ids]

    def encode(self, grid: np.ndarray | Sequence[Sequence[float]]) -> list[int]:
        """``(T, 4)`` pitches (S, A, T, B; -1 or NaN silent) -> ``4T`` ids."""
        g = np.asarray(grid, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != 4:
            raise ValueError(f"a chorale grid is (steps, 4 voices), got shape {g.shape}")
        rest = np.isnan(g) | (g < 0)
        p = np.where(rest, 0, g)
        if ((p > 127) | (p != np.round(p))).any():
            raise ValueError("a chorale grid holds MIDI pitches 0..127, or -1 / NaN for a silent voice")
        return np.where(rest, self.rest_id, self.pitch_offset + p.astype(np.int64)).reshape(-1).tolist()

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray, strict: bool = False) -> np.ndarray:
        """Ids -> ``(T, 4)`` int grid (-1 = rest). Skips ``<s>``/``<pad>``, stops at ``</s>``;
        an unfinished last step is dropped (``strict=True``: raises)."""
        arr = np.asarray(ids.tolist() if isinstance(ids, Tensor) else ids, dtype=np.int64).reshape(-1)
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"chorale id {int(arr[i])} at position {i} is outside the vocabulary "
                             f"0..{self.vocab_size - 1}; decode only ids made by ChoraleTokenizer")
        eos = np.flatnonzero(arr == self.eos_id)
        if len(eos):
            arr = arr[: eos[0]]
        arr = arr[(arr != self.pad_id) & (arr != self.bos_id)]
        if len(arr) % 4:
            if strict:
                raise ValueError(f"{len(arr)} chorale tokens is not a whole number of 4-voice steps")
            arr = arr[: len(arr) - len(arr) % 4]
        return np.where(arr == self.rest_id, -1, arr - self.pitch_offset).reshape(-1, 4)


def grid_to_notes(grid: np.ndarray | Sequence[Sequence[float]], step_s: float = JSB_STEP_S,
                  velocity: int = DEFAULT_VELOCITY) -> np.ndarray:
    """A chorale grid -> notes: each voice's run of equal pitches is one held note."""
    g = np.asarray(grid, dtype=np.float64)
    g = np.where(np.isnan(g), -1, g).astype(np.int64)
    rows = []
    for v in range(g.shape[1]):
        col = g[:, v]
        change = np.flatnonzero(np.diff(col, prepend=-2, append=-2) != 0)  # run boundaries
        for a, b in zip(change[:-1], change[1:]):
            if col[a] >= 0:
                rows.append((col[a], a * step_s, b * step_s, velocity))
    rows.sort(key=lambda r: (r[1], r[0]))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


# -- data sets --------------------------------------------------------------------------
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
        target = DOWNLOAD_DIR / "jsb_chorales" / JSB_FILE
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(JSB_URL, timeout=30) as r:
                data = r.read()
            json.loads(data)  # a proxy's error page is not the data set
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            return target
        except (OSError, ValueError) as err:
            looked.append(f"download failed: {_one_line(err)}")
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
                log.warning("ignoring the damaged cache %s (%s); converting again", path, _one_line(err))
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, notes=np.concatenate(pieces), offsets=offsets, names=np.array(names, dtype=str))
    os.replace(tmp, path)
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


# -- augmentation -----------------------------------------------------------------------
def augment_notes(notes: np.ndarray, rng: np.random.Generator, transpose: int = 3,
                  stretch: float = 0.05) -> np.ndarray:
    """Transpose by a random integer in [-transpose, transpose] semitones (kept inside 0..127)
    and stretch time by a random factor in [1 - stretch, 1 + stretch]."""
    out = np.array(notes, dtype=np.float64, copy=True)
    if len(out):
        lo, hi = max(-transpose, -int(out[:, 0].min())), min(transpose, 127 - int(out[:, 0].max()))
        out[:, 0] += rng.integers(lo, hi + 1)
        out[:, 1:3] *= rng.uniform(1 - stretch, 1 + stretch)
    return out


def augment_grid(grid: np.ndarray, rng: np.random.Generator, transpose: int = 3) -> np.ndarray:
    """Transpose a chorale grid's sounding voices by a random integer in [-transpose, transpose]."""
    sounding = grid >= 0
    if not sounding.any():
        return grid
    lo, hi = max(-transpose, -int(grid[sounding].min())), min(transpose, 127 - int(grid[sounding].max()))
    return np.where(sounding, grid + rng.integers(lo, hi + 1), grid)


def window_batch(windows: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """Windows of ``<s> ids </s>`` -> tokens (B, T) = window[:-1], targets (B, T) = window[1:], right-padded.
    For whole pieces this is ``zoo.data.text.lm_batch``."""
    width = max(len(w) for w in windows) - 1
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(windows), width), pad_id, dtype=torch.long)
    for i, w in enumerate(windows):
        t = torch.as_tensor(w, dtype=torch.long)
        tokens[i, : len(w) - 1] = t[:-1]
        targets[i, : len(w) - 1] = t[1:]
    return {"tokens": tokens, "targets": targets}


class _Crops(Dataset):
    """Training examples: each piece (augmented afresh each time) encoded as ``<s> ids </s>``
    and cut to a random window of ``crop_len + 1`` tokens (starting on a step for the grid)."""

    def __init__(self, pieces: list[np.ndarray], encode: Any, crop_len: int, align: int, bos: int, eos: int,
                 crops_per_piece: int, seed: int) -> None:
        self.pieces, self.encode, self.crop_len, self.align = pieces, encode, crop_len, align
        self.bos, self.eos, self.crops_per_piece, self.seed = bos, eos, crops_per_piece, seed
        self.rng = ProcessRNG(seed)

    def __len__(self) -> int:
        return len(self.pieces) * self.crops_per_piece

    def __getitem__(self, i: int) -> list[int]:
        rng = self.rng()
        seq = [self.bos] + self.encode(self.pieces[i % len(self.pieces)], rng) + [self.eos]
        need = self.crop_len + 1
        if len(seq) <= need:
            return seq
        starts = len(seq) - need + 1
        if self.align > 1:  # <s>, or the first voice of a step
            choices = np.concatenate([[0], np.arange(1, starts, self.align)])
            a = int(choices[rng.integers(len(choices))])
        else:
            a = int(rng.integers(starts))
        return seq[a : a + need]


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

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in splits.get(stage or "fit", ["train", "val", "test"]):
            if split == "train":
                self.pieces("train")
            else:
                self._eval_windows(split)

    # -- loaders ----------------------------------------------------------------------
    def _collate(self, windows: list[list[int]]) -> dict[str, Tensor]:
        return window_batch(windows, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        hp, tok = self.hp, self._tokenizer
        pieces = self.pieces("train")
        if not pieces:
            raise ValueError("the training split is empty; lower split's val/test fractions or raise limit")
        data = _Crops(pieces, self._train_encode, hp.crop_len, 4 if hp.encoding == "chorale" else 1,
                      tok.bos_id, tok.eos_id, hp.crops_per_piece, hp.seed)
        return DataLoader(data, batch_size=hp.batch_size, shuffle=True, collate_fn=self._collate,
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


def tokenizer_from_str(text: str) -> EventTokenizer | ChoraleTokenizer:
    """A MIDI tokenizer from its JSON (``to_str``), whichever kind it is."""
    d = _tokenizer_json(text)
    kinds = {EventTokenizer.kind: EventTokenizer, ChoraleTokenizer.kind: ChoraleTokenizer}
    if d.get("type") not in kinds:
        raise ValueError(f"not a MIDI tokenizer JSON (type {d.get('type')!r}; expected one of {list(kinds)})")
    return kinds[d["type"]].from_dict(d)
