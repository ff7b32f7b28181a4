"""MIDI for the Music Transformer (Huang et al. 2018): notes, two encodings, data sets, a
data module, and pieces rendered as pictures and sound.

==================  ================================================================
``notes``           notes as ``(N, 4)`` arrays; Standard MIDI Files read and written
``tokenizer``       the performance encoding (``EventTokenizer``, 391 events) and the
                    chorale grid (``ChoraleTokenizer``, S, A, T, B per 16th note)
``sources``         a folder of MIDI files (Nottingham), JSB Chorales, music21's Bach
                    chorales: where they are found or downloaded, their splits
``augment``         transposition and time stretch of training pieces
``datamodule``      ``MIDIDataModule``: training windows and whole-piece evaluation
``render``          piano rolls, audio through fluidsynth, samples written or logged
==================  ================================================================

Every public name is importable from ``zoo.data.midi`` itself.
"""

from zoo.data.midi.augment import augment_grid, augment_notes
from zoo.data.midi.datamodule import MIDIDataModule, window_batch
from zoo.data.midi.notes import MIDI_SUFFIXES, Note, midi_files, note_array, read_folder, read_notes, write_notes
from zoo.data.midi.render import check_midi_path, log_sample, piano_roll_figure, save_piano_roll, save_piece, synthesise
from zoo.data.midi.sources import (BACH_QUARTER_S, JSB_FILE, JSB_SHA256, JSB_SPLITS, JSB_URL, bach_chorale_names,
                                   cache_dir, find_jsb, find_midi_folder, load_bach, load_jsb, music21_notes,
                                   split_pieces)
from zoo.data.midi.tokenizer import (BOS, BOS_ID, DEFAULT_VELOCITY, EOS, EOS_ID, JSB_STEP_S, PAD, PAD_ID,
                                     ChoraleTokenizer, EventTokenizer, MIDITokenizer, grid_to_notes)
from zoo.data.tokenizer import tokenizer_from_str

__all__ = [
    "BACH_QUARTER_S", "BOS", "BOS_ID", "DEFAULT_VELOCITY", "EOS", "EOS_ID", "JSB_FILE", "JSB_SHA256", "JSB_SPLITS",
    "JSB_STEP_S", "JSB_URL", "MIDI_SUFFIXES", "PAD", "PAD_ID",
    "ChoraleTokenizer", "EventTokenizer", "MIDIDataModule", "MIDITokenizer", "Note",
    "augment_grid", "augment_notes", "bach_chorale_names", "cache_dir", "check_midi_path", "find_jsb",
    "find_midi_folder", "grid_to_notes", "load_bach", "load_jsb", "log_sample", "midi_files", "music21_notes",
    "note_array", "piano_roll_figure", "read_folder", "read_notes", "save_piano_roll", "save_piece", "split_pieces",
    "synthesise", "tokenizer_from_str", "window_batch", "write_notes",
]
