"""MIDI encoding speed: Standard MIDI Files -> performance events, files/s and events/s.

    python benchmarks/bench_midi.py [--folder DIR] [--repeats 3] [--peers]

Encodes every file of the Nottingham folder (969 files; found as the data module finds it)
with ``EventTokenizer.encode_file`` (symusic reads the file, tempo map applied; a
vectorised numpy encoder makes the events) and reports the median of ``--repeats`` passes.
With ``--peers``, the same notes read by pretty_midi (on mido) and a bare mido parse, when
those are installed, for comparison; the events are made by the same encoder, so the
difference is the reader. Prints a Markdown table and writes benchmarks/results/midi.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np

from zoo.data.midi import EventTokenizer, find_midi_folder, midi_files, read_notes


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _pretty_midi_notes(path: Path) -> np.ndarray:
    import warnings

    import pretty_midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns of tempo events outside track 0, which these files have
        pm = pretty_midi.PrettyMIDI(str(path))
    rows = [(n.pitch, n.start, n.end, max(n.velocity, 1)) for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _mido_parse(path: Path) -> int:
    import mido

    return sum(1 for track in mido.MidiFile(str(path)).tracks for msg in track if msg.type == "note_on")


def bench(files: list[Path], run, repeats: int) -> tuple[float, float, int]:
    """Median files/s and events/s over ``repeats`` passes of ``run(path) -> events``."""
    times, events = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        events = sum(run(f) for f in files)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    return len(files) / t, events / t, events


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="folder of MIDI files (default: nottingham/MIDI)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peers", action="store_true", help="also time pretty_midi and mido when installed")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "midi.json"))
    args = p.parse_args()

    folder = Path(args.folder) if args.folder else find_midi_folder()
    files = midi_files(folder)
    tok = EventTokenizer()
    rows = []

    rows.append((f"symusic {_version('symusic')}", "read + encode (events)",
                 *bench(files, lambda f: len(tok.encode_file(f)), args.repeats)))
    rows.append((f"symusic {_version('symusic')}", "read only (notes)",
                 *bench(files, lambda f: len(read_notes(f)), args.repeats)))
    skipped = []
    if args.peers:
        try:
            import pretty_midi  # noqa: F401

            rows.append((f"pretty_midi {_version('pretty_midi')}", "read + encode (events)",
                         *bench(files, lambda f: len(tok.encode(_pretty_midi_notes(f))), args.repeats)))
        except ImportError:
            skipped.append("pretty_midi (not installed: pip install pretty_midi)")
        try:
            import mido  # noqa: F401

            rows.append((f"mido {_version('mido')}", "parse only (note_on messages)",
                         *bench(files, _mido_parse, args.repeats)))
        except ImportError:
            skipped.append("mido (not installed: pip install mido)")

    print(f"{len(files)} MIDI files from {folder}, median of {args.repeats} passes, {platform.processor() or platform.machine()}")
    print()
    print("| reader | work (items) | files/s | items/s | items |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, work, fps, eps, n in rows:
        print(f"| {name} | {work} | {fps:,.0f} | {eps:,.0f} | {n:,} |")
    if skipped:
        print("\nnot measured: " + "; ".join(skipped))
    elif not args.peers:
        print("\n(add --peers to time pretty_midi and mido too)")
    result = {"date": str(date.today()), "machine": platform.machine(), "files": len(files), "folder": folder.name,
              "repeats": args.repeats, "rows": [dict(zip(["reader", "work", "files_per_s", "items_per_s", "items"], r))
                                                for r in rows], "not_measured": skipped}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
