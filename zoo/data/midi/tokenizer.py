"""The two encodings of the Music Transformer (Huang et al. 2018) as tokenizers.

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
consecutive pitches are one held note when the grid becomes notes (:func:`grid_to_notes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from zoo.data.midi.notes import Note, note_array, read_notes, write_notes
from zoo.data.tokenizer import JsonTokenizer

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
JSB_STEP_S = 0.12  # one 16th note of the JSB grid, in seconds (125 bpm; 12 steps of 10 ms)
DEFAULT_VELOCITY = 80  # for notes from scores (JSB, music21), which carry no loudness


class MIDITokenizer(JsonTokenizer):
    """What the MIDI tokenizers share: errors worded for MIDI, notes from ids, primers."""

    what = "MIDI tokenizer"
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    vocab_size: int

    def to_notes(self, ids: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
        """Ids -> notes (N, 4): pitch, onset s, offset s, velocity."""
        raise NotImplementedError

    def primer(self, prompt_events: Sequence[int] | Tensor | str | os.PathLike) -> list[int]:
        """The ids of a primer for a model to continue: ids of this vocabulary other than <pad>, <s>, </s>."""
        if isinstance(prompt_events, (str, os.PathLike)):
            raise ValueError("a MIDI-file primer needs a performance-event model; give a chorale model event ids")
        ids = [int(i) for i in (prompt_events.tolist() if isinstance(prompt_events, Tensor) else prompt_events)]
        specials = {self.pad_id, self.bos_id, self.eos_id}
        bad = [i for i in ids if not 0 <= i < self.vocab_size or i in specials]
        if bad:
            raise ValueError(
                f"primer event id {bad[0]} is not an event of this model's vocabulary (ids {max(specials) + 1}.."
                f"{self.vocab_size - 1}); encode the primer with the model's tokenizer"
            )
        return ids


# -- performance events -----------------------------------------------------------------
class EventTokenizer(MIDITokenizer):
    """The performance encoding: notes <-> NOTE_ON / NOTE_OFF / TIME_SHIFT / VELOCITY ids.

    Args:
        step_ms: the time grid (10 ms in the paper).
        max_shift_steps: the longest single TIME_SHIFT, in steps (100: 1 s).
        velocity_bins: how many loudness levels (32).

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, then NOTE_ON 0..127, NOTE_OFF 0..127,
    TIME_SHIFT 1..max_shift_steps, VELOCITY 0..velocity_bins-1.
    """

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


    def to_notes(self, ids: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
        return note_array(self.decode(ids))

    def primer(self, prompt_events: Sequence[int] | Tensor | str | os.PathLike) -> list[int]:
        """Event ids, or the events of a MIDI file (which must hold notes)."""
        if isinstance(prompt_events, (str, os.PathLike)):
            ids = self.encode_file(prompt_events)
            if not ids:
                raise ValueError(f"{prompt_events} has no notes to continue; give a primer with notes")
            return ids
        return super().primer(prompt_events)


# -- the chorale grid -------------------------------------------------------------------
class ChoraleTokenizer(MIDITokenizer):
    """Coconet's 16th-note grid as the Music Transformer serialises it: S, A, T, B per step.

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``REST`` 3, then MIDI pitch p as ``4 + p``.
    A grid is an ``(T, 4)`` integer array, -1 (or NaN) for a silent voice.
    """

    rest_id = 3
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

    def to_notes(self, ids: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
        return grid_to_notes(self.decode(ids))


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

