"""Pieces made visible and audible: piano rolls, audio through fluidsynth, a sample written
to disk (MIDI and its piano roll) or logged to Weights & Biases.

Notes are ``(N, 4)`` arrays of (pitch, onset s, offset s, velocity), as
:meth:`MIDITokenizer.to_notes <zoo.data.midi.tokenizer.MIDITokenizer.to_notes>` gives them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.midi.notes import write_notes

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/default.sf2")


def piano_roll_figure(notes: Any, title: str = "") -> Any:
    """A piano roll of notes (N, 4) as a matplotlib ``Figure`` (no pyplot): time across, pitch
    up, each note a bar shaded by its velocity."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    arr = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    end = float(arr[:, 2].max()) if len(arr) else 1.0
    fig = Figure(figsize=(min(16.0, 3.0 + end / 2), 4.0))
    ax = fig.subplots()
    if len(arr):
        colours = colormaps["viridis"](arr[:, 3] / 127.0)
        ax.barh(arr[:, 0], arr[:, 2] - arr[:, 1], left=arr[:, 1], height=0.8, color=colours, edgecolor="none")
        lo, hi = arr[:, 0].min(), arr[:, 0].max()
        ax.set_ylim(lo - 2, hi + 2)
    ax.set_xlim(0, end)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(axis="y", alpha=0.2)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_piano_roll(notes: Any, path: str | os.PathLike, title: str = "") -> Path:
    """Write :func:`piano_roll_figure` to ``path`` (PNG), atomically; returns the path."""
    from zoo.viz import save_figure

    return save_figure(piano_roll_figure(notes, title), path)


def synthesise(notes: Any, sample_rate: int = 22050) -> np.ndarray | None:
    """Mono audio samples (float32 in [-1, 1]) of notes through fluidsynth and a General MIDI
    soundfont, or None when either is missing (``$ZOO_SOUNDFONT`` or a Debian soundfont path)."""
    fluidsynth = shutil.which("fluidsynth")
    fonts = [os.environ.get("ZOO_SOUNDFONT", ""), *SOUNDFONTS]
    font = next((f for f in fonts if f and os.path.isfile(f)), None)
    if fluidsynth is None or font is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "s.mid", Path(tmp) / "s.raw"
        write_notes(notes, mid)
        done = subprocess.run([fluidsynth, "-ni", "-F", str(wav), "-O", "s16", "-T", "raw", "-r", str(sample_rate),
                               font, str(mid)], capture_output=True, timeout=120)
        if done.returncode or not wav.exists():
            return None
        data = np.frombuffer(wav.read_bytes(), dtype=np.int16).reshape(-1, 2).mean(1) / 32768.0
    return data.astype(np.float32)


def check_midi_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, once it names a ``.mid``/``.midi`` file in a folder that exists."""
    path = Path(path)
    if path.suffix.lower() not in (".mid", ".midi"):
        raise ValueError(f"{path} does not end in .mid or .midi; name the output MIDI file piece.mid")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it or write elsewhere")
    return path


def save_piece(notes: Any, path: str | os.PathLike, piano_roll: bool = True) -> Path:
    """Write notes to the MIDI file ``path`` (and their piano roll beside it, ``path`` with
    ``.png``); returns the MIDI path."""
    path = check_midi_path(path)
    if len(notes) == 0:
        raise ValueError("the sample holds no notes (it ended at once); sample again with another seed")
    write_notes(notes, path)
    if piano_roll:
        save_piano_roll(notes, path.with_suffix(".png"), title=path.name)
    return path


def log_sample(logger: Any, notes: Any, title: str, step: int) -> None:
    """Log a sample's piano roll, and its audio when a synthesiser is at hand, to a Lightning ``WandbLogger``."""
    if len(notes) == 0:
        return
    from zoo.viz import figure_to_array

    image = figure_to_array(piano_roll_figure(notes, title=title))
    logger.log_image("samples/piano_roll", [image], step=step)
    audio = synthesise(notes)
    if audio is not None:
        import wandb

        logger.experiment.log({"samples/audio": wandb.Audio(audio, sample_rate=22050)}, step=step)
