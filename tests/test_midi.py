"""MIDI events: the performance encoding's round trip, JSB and music21 chorales, the data module, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("symusic")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zoo.data.midi import (  # noqa: E402
    ChoraleTokenizer,
    EventTokenizer,
    JSB_STEP_S,
    MIDIDataModule,
    augment_grid,
    augment_notes,
    find_jsb,
    find_midi_folder,
    grid_to_notes,
    load_jsb,
    read_folder,
    read_notes,
    split_pieces,
    tokenizer_from_str,
    window_batch,
)
from zoo.data.text import lm_batch  # noqa: E402

TOK = EventTokenizer()
TOL = 0.01 + 1e-6  # the guarantee: onsets and offsets within one 10 ms step


def _nottingham() -> Path | None:
    try:
        return find_midi_folder()
    except FileNotFoundError:
        return None


def _jsb() -> Path | None:
    try:
        return find_jsb(download=False)
    except FileNotFoundError:
        return None


NOTTINGHAM, JSB = _nottingham(), _jsb()
needs_nottingham = pytest.mark.skipif(NOTTINGHAM is None, reason="nottingham/MIDI not available (set ZOO_DATA_DIR)")
needs_jsb = pytest.mark.skipif(JSB is None, reason="jsb_chorales not available (set ZOO_DATA_DIR)")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """music21 conversions go to a temporary cache shared by this file's tests."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path_factory.getbasetemp() / "zoo_cache"))


def check_round_trip(original, decoded, exact: bool) -> None:
    """Pitch kept, onset and offset within 10 ms, velocity in its bin.

    ``exact``: no two notes of a pitch overlap, so every note comes back one to one. Else a
    pitch that restarts may end the note before it (and notes starting on one step merge):
    every original onset is still there, and every decoded note is an original one whose
    offset is its own or the onset of a later note of its pitch."""
    orig = np.asarray(original, dtype=np.float64).reshape(-1, 4)
    dec = np.asarray(decoded, dtype=np.float64).reshape(-1, 4)
    bins = TOK.velocity_to_bin
    assert (dec[:, 2] > dec[:, 1]).all()
    for p in np.union1d(orig[:, 0], dec[:, 0]):
        o = orig[orig[:, 0] == p]
        o = o[np.argsort(o[:, 1], kind="stable")]
        d = dec[dec[:, 0] == p]
        assert np.all(d[1:, 1] >= d[:-1, 2]), "a pitch sounds twice at once"
        if exact:
            assert len(d) == len(o)
            assert np.abs(d[:, 1] - o[:, 1]).max() <= TOL and np.abs(d[:, 2] - o[:, 2]).max() <= TOL
            assert (bins[d[:, 3].astype(int)] == bins[o[:, 3].astype(int)]).all()
            continue
        for note in o:  # no note lost
            assert len(d) and np.abs(d[:, 1] - note[1]).min() <= TOL
        for note in d:
            src = o[(np.abs(o[:, 1] - note[1]) <= TOL) & (bins[o[:, 3].astype(int)] == bins[int(note[3])])]
            assert len(src), f"decoded {note} has no original"
            assert np.abs(src[:, 2] - note[2]).min() <= TOL or np.abs(o[:, 1] - note[2]).min() <= TOL


# -- hypothesis: random note lists ---------------------------------------------------------
times = st.one_of(st.floats(0, 40, allow_nan=False), st.integers(0, 8000).map(lambda i: i * 0.005))  # incl. half-steps
any_notes = st.lists(
    st.tuples(st.integers(58, 62), times, st.floats(0, 3, allow_nan=False), st.integers(1, 127)).map(
        lambda t: (t[0], t[1], t[1] + t[2], t[3])
    ),
    max_size=40,
)


@st.composite
def non_overlapping(draw):
    """Per pitch, notes one after another (next onset >= previous offset and >= 20 ms later), with long rests."""
    notes = []
    for pitch in draw(st.lists(st.integers(0, 127), max_size=5, unique=True)):
        prev_start, prev_end = -1.0, 0.0
        for gap, dur, vel in draw(st.lists(st.tuples(st.one_of(st.floats(0, 1), st.floats(1, 12)),
                                                      st.floats(0, 2), st.integers(1, 127)), max_size=8)):
            start = max(prev_end + gap, prev_start + 0.02)
            notes.append((pitch, start, start + dur, vel))
            prev_start, prev_end = start, start + dur
    return notes


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(non_overlapping())
def test_round_trip_keeps_every_note(notes):
    ids = TOK.encode(notes)
    decoded = TOK.decode(ids, strict=True)
    check_round_trip(notes, decoded, exact=True)
    assert TOK.encode(decoded) == ids  # decoding then encoding changes nothing


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_notes)
def test_overlapping_same_pitch_notes_give_a_well_formed_stream(notes):
    ids = TOK.encode(notes)
    decoded = TOK.decode(ids, strict=True)  # strict: each NOTE_OFF closes the one sounding note
    check_round_trip(notes, decoded, exact=False)
    assert TOK.encode(decoded) == ids


def test_overlap_rule_and_long_rests_by_hand():
    # 60 restarts while sounding: the first note ends at the second onset; 64 after a 7.35 s rest
    notes = [(60, 0.0, 1.0, 100), (60, 0.5, 1.5, 100), (64, 8.85, 9.0, 100)]
    ids = TOK.encode(notes)
    assert TOK.pieces(ids) == [
        "VELOCITY_24", "NOTE_ON_60", "TIME_SHIFT_500ms", "NOTE_OFF_60", "NOTE_ON_60", "TIME_SHIFT_1000ms", "NOTE_OFF_60",
        *["TIME_SHIFT_1000ms"] * 7, "TIME_SHIFT_350ms", "NOTE_ON_64", "TIME_SHIFT_150ms", "NOTE_OFF_64",
    ]
    assert [n[:3] for n in TOK.decode(ids)] == [(60, 0.0, 0.5), (60, 0.5, 1.5), (64, 8.85, 9.0)]
    # two notes of one pitch on one step become the longer one; a 2 ms note lasts a step
    assert [n[:3] for n in TOK.decode(TOK.encode([(60, 0, 0.3, 90), (60, 0.001, 0.6, 90), (70, 1.0, 1.002, 90)]))] == [
        (60, 0.0, 0.6), (70, 1.0, 1.01)]


def test_tokenizer_layout_json_and_names():
    assert (TOK.vocab_size, TOK.pad_id, TOK.bos_id, TOK.eos_id) == (391, 0, 1, 2)
    names = TOK.pieces(range(TOK.vocab_size))
    assert names[:4] == ["<pad>", "<s>", "</s>", "NOTE_ON_0"] and names[-1] == "VELOCITY_31"
    assert names[3 + 256] == "TIME_SHIFT_10ms" and names[3 + 256 + 99] == "TIME_SHIFT_1000ms"
    assert all(TOK.token_id(n) == i for i, n in enumerate(names))
    assert EventTokenizer.from_str(TOK.to_str()) == TOK and tokenizer_from_str(TOK.to_str()) == TOK
    assert tokenizer_from_str(ChoraleTokenizer().to_str()) == ChoraleTokenizer()
    # a model's sample: malformed streams are repaired unless strict
    sample = [1, TOK.token_id("NOTE_ON_60"), TOK.token_id("TIME_SHIFT_100ms"), TOK.token_id("NOTE_OFF_61"),
              TOK.token_id("NOTE_ON_60"), TOK.token_id("TIME_SHIFT_20ms"), 2, TOK.token_id("NOTE_ON_70")]
    assert [n[:3] for n in TOK.decode(sample)] == [(60, 0.0, 0.1), (60, 0.1, 0.12)]
    with pytest.raises(ValueError, match="position 1 .*NOTE_ON before any VELOCITY"):
        TOK.decode(sample, strict=True)


# -- files ---------------------------------------------------------------------------------
@needs_nottingham
def test_nottingham_files_round_trip(tmp_path):
    # jigs311 and reelsd-g28 hold same-pitch overlaps (melody and chords on one pitch)
    names = [n for n in ["ashover1.mid", "jigs100.mid", "jigs311.mid", "reelsd-g28.mid", "playford1.mid"]
             if (NOTTINGHAM / n).exists()]
    assert names
    for name in names:
        path = NOTTINGHAM / name
        notes = read_notes(path)
        ids = TOK.encode_file(path)
        decoded = TOK.decode(ids, strict=True)
        check_round_trip(notes, decoded, exact=False)
        out = TOK.decode_to_midi(ids, tmp_path / f"{name}.mid")  # and through a MIDI file
        again = read_notes(out)
        np.testing.assert_allclose(again[:, :3], np.array(decoded, dtype=float)[:, :3], atol=1e-3)
        assert TOK.encode_file(out) == ids


def test_tempo_changes_are_honoured(tmp_path):
    from symusic import Note, Score, Tempo, Track

    score = Score(480)
    track = Track(name="t", program=0)
    for tick, pitch in [(0, 60), (960, 62), (1920, 64)]:
        track.notes.append(Note(tick, 480, pitch, 100))
    score.tracks.append(track)
    score.tempos.append(Tempo(0, qpm=120.0))
    score.tempos.append(Tempo(960, qpm=60.0))  # beats last twice as long from the third beat
    score.dump_midi(str(tmp_path / "tempo.mid"))
    decoded = TOK.decode(TOK.encode_file(tmp_path / "tempo.mid"))
    assert [n[:3] for n in decoded] == [(60, 0.0, 0.5), (62, 1.0, 2.0), (64, 3.0, 4.0)]


def test_music21_chorale_round_trip():
    pytest.importorskip("music21")
    dm = MIDIDataModule(source="bach", limit=2, crop_len=32, batch_size=2, augment=False)
    notes = dm.pieces("train")[0]
    assert len(notes) > 50 and 30 <= notes[:, 0].min() and notes[:, 0].max() <= 90
    check_round_trip(notes, TOK.decode(TOK.encode(notes), strict=True), exact=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (2, 32) and dm.describe()["pieces"] == {"train": 2, "val": 0, "test": 0}


def test_music21_cache_is_reused_and_repaired(monkeypatch, caplog):
    pytest.importorskip("music21")
    from music21 import corpus

    from zoo.data import midi

    names, pieces = midi.load_bach(limit=2, progress=False)  # converted by the test above, or now
    cached = list(midi.cache_dir().glob("bach_chorales-*.npz"))
    assert len(cached) == 1 and not list(midi.cache_dir().glob("*.tmp"))
    with np.load(cached[0], allow_pickle=False) as z:  # no pickle needed to read it
        assert z["names"].tolist() == names and z["offsets"][-1] == sum(map(len, pieces))

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(corpus, "parse", no_parse)
        again = midi.load_bach(limit=1, progress=False)  # a cache of 2 serves a limit of 1
    assert again[0] == names[:1] and np.array_equal(again[1][0], pieces[0])
    cached[0].write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="zoo.data.midi"):
        repaired = midi.load_bach(limit=2, progress=False)
    assert "ignoring the damaged cache" in caplog.text and repaired[0] == names


# -- JSB Chorales --------------------------------------------------------------------------
@needs_jsb
def test_jsb_both_serialisations():
    sizes = {s: len(load_jsb(JSB, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 229, "val": 76, "test": 77}
    grid = load_jsb(JSB, "test")[0]
    assert grid.shape[1] == 4 and grid.dtype == np.int64 and grid[0].tolist() == [65, 60, 57, 53]
    # (a) the paper's grid: S, A, T, B per 16th
    ct = ChoraleTokenizer()
    ids = ct.encode(grid)
    assert ct.vocab_size == 132 and len(ids) == grid.size and ct.pieces(ids[:4]) == ["PITCH_65", "PITCH_60", "PITCH_57", "PITCH_53"]
    assert (ct.decode([1] + ids + [2]) == grid).all()
    assert ct.encode([[60, -1, float("nan"), 40]]) == [64, 3, 3, 44]
    # (b) performance events: a voice's equal consecutive pitches are one note, a 16th = 0.12 s
    notes = grid_to_notes(grid)
    first_s = notes[(notes[:, 0] == 65) & (notes[:, 1] == 0)][0]
    assert first_s[2] == pytest.approx(4 * JSB_STEP_S)  # the soprano holds 65 for four 16ths
    decoded = TOK.decode(TOK.encode(notes), strict=True)
    check_round_trip(notes, decoded, exact=False)


@needs_jsb
def test_data_module_batches_jsb():
    dm = MIDIDataModule(source="jsb", data_dir=str(JSB.parent), crop_len=64, batch_size=4, eval_batch_size=3, seed=1)
    assert (dm.vocab_size, dm.pad_id) == (391, 0) and dm.tokenizers == (dm.tokenizer, dm.tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens", "targets", "positions"} and batch["tokens"].dtype == batch["targets"].dtype == torch.long
    assert batch["tokens"].shape == batch["targets"].shape == (4, 64)
    assert (batch["tokens"][:, 1:] == batch["targets"][:, :-1]).all()  # targets: tokens shifted by one
    # evaluation: whole pieces, exactly lm_batch
    val = next(iter(dm.val_dataloader()))
    pieces = [TOK.encode(p) for p in dm.pieces("val")[:3]]
    expected = lm_batch(pieces, TOK)
    assert torch.equal(val["tokens"], expected["tokens"]) and torch.equal(val["targets"], expected["targets"])
    assert dm.describe()["pieces"] == {"train": 229, "val": 76, "test": 77}

    grid_dm = MIDIDataModule(source="jsb", data_dir=str(JSB.parent.parent), encoding="chorale", crop_len=40,
                             batch_size=8, augment=False, limit=10)
    assert grid_dm.vocab_size == 132
    batch = next(iter(grid_dm.train_dataloader()))
    assert batch["tokens"].shape == (8, 40)
    steps = {tuple(step) for g in grid_dm.pieces("train") for step in g.tolist()}
    for row in batch["tokens"].tolist():  # windows start with <s> or on a soprano
        first = row[1:5] if row[0] == 1 else row[:4]
        assert tuple(-1 if t == 3 else t - 4 for t in first) in steps


@needs_nottingham
def test_data_module_folder_and_lm_training(tmp_path):
    import lightning as L

    import zoo

    dm = MIDIDataModule(source="folder", limit=12, crop_len=48, batch_size=4, eval_max_len=100, split=(0.5, 0.25, 0.25))
    assert [len(dm.pieces(s)) for s in ("train", "val", "test")] == [6, 3, 3]
    assert min(p[:, 1].min() for p in dm.pieces("train")) == 0  # leading silence dropped
    assert max(len(w) for w in dm._eval_windows("val")) <= 101
    model = zoo.create("rnn_lm", vocab_size=dm.vocab_size, pad_id=dm.pad_id,
                       arch_args={"emb_dim": 8, "hidden_dim": 8, "layers": 1, "dropout": 0.0})
    trainer = L.Trainer(fast_dev_run=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert model.tokenizers[0] is dm.tokenizer


def test_splits_are_fixed_by_seed():
    names = [f"piece{i:03d}" for i in range(100)]
    a, b = split_pieces(names, (0.8, 0.1, 0.1), 0), split_pieces(list(reversed(names)), (0.8, 0.1, 0.1), 0)
    assert [len(a[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert {names[i] for i in a["val"]} == {names[99 - i] for i in b["val"]}  # by name, not by order
    assert split_pieces(names, (0.8, 0.1, 0.1), 1)["val"] != a["val"]
    with pytest.raises(ValueError, match="summing to 1"):
        MIDIDataModule(split=(0.8, 0.3, 0.1))


# -- augmentation --------------------------------------------------------------------------
def test_augmentation_stays_within_bounds():
    rng = np.random.default_rng(0)
    notes = np.array([[60, 0.0, 1.0, 80], [64, 1.0, 2.5, 80], [125, 2.0, 3.0, 80]])
    shifts, factors = set(), []
    for _ in range(200):
        out = augment_notes(notes, rng)
        shift = out[:, 0] - notes[:, 0]
        assert len(set(shift)) == 1 and -3 <= shift[0] <= 2 and out[:, 0].max() <= 127  # 125 + 3 would leave MIDI
        factor = out[1, 2] / notes[1, 2]
        np.testing.assert_allclose(out[:, 1:3], notes[:, 1:3] * factor)
        assert 0.95 <= factor <= 1.05
        shifts.add(int(shift[0]))
        factors.append(factor)
    assert shifts == {-3, -2, -1, 0, 1, 2} and np.ptp(factors) > 0.08
    assert (augment_notes(notes, rng, transpose=0, stretch=0) == notes).all()
    grid = np.array([[60, -1, 55, 48], [62, 57, -1, 50]])
    out = augment_grid(grid, rng)
    assert ((out < 0) == (grid < 0)).all() and len(set((out - grid)[grid >= 0])) == 1


def test_window_batch_matches_lm_batch_for_whole_pieces():
    seqs = [[5, 6, 7], [8]]
    got = window_batch([[1, *s, 2] for s in seqs], 0)
    want = lm_batch(seqs, TOK)
    assert torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["targets"], want["targets"])


# -- bad input -----------------------------------------------------------------------------
def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_files_raise_one_clear_line(tmp_path):
    empty = tmp_path / "empty.mid"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\), not a MIDI file") as e:
        TOK.encode_file(empty)
    _one_line_error(e)
    text = tmp_path / "notes.mid"
    text.write_text("these are not MIDI bytes")
    with pytest.raises(ValueError, match="is not a Standard MIDI File") as e:
        TOK.encode_file(text)
    _one_line_error(e)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10\x00\x00\x90")
    with pytest.raises(ValueError, match="broken.mid") as e:
        TOK.encode_file(broken)
    _one_line_error(e)
    silent = tmp_path / "silent.mid"
    silent.write_bytes(b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    with pytest.raises(ValueError, match="has no notes; there is nothing to encode") as e:
        TOK.encode_file(silent)
    _one_line_error(e)
    with pytest.raises(FileNotFoundError, match="no such MIDI file"):
        TOK.encode_file(tmp_path / "missing.mid")


def test_drums_only_file_says_keep_drums(tmp_path):
    from symusic import Note, Score, Track

    score = Score(480)
    drums = Track(name="kit", program=0, is_drum=True)
    drums.notes.append(Note(0, 120, 36, 100))
    score.tracks.append(drums)
    score.dump_midi(str(tmp_path / "drums.mid"))
    with pytest.raises(ValueError, match="keep_drums=True"):
        TOK.encode_file(tmp_path / "drums.mid")
    assert TOK.pieces(TOK.encode_file(tmp_path / "drums.mid", keep_drums=True))[1] == "NOTE_ON_36"


def test_ids_outside_the_vocabulary_and_bad_notes(tmp_path):
    with pytest.raises(ValueError, match=r"event id 391 at position 2 is outside the vocabulary 0\.\.390") as e:
        TOK.decode([1, 5, 391])
    _one_line_error(e)
    with pytest.raises(ValueError, match="event id -1"):
        TOK.decode_to_midi(torch.tensor([-1]), tmp_path / "x.mid")
    with pytest.raises(ValueError, match=r"chorale id 200 at position 0 is outside the vocabulary 0\.\.131"):
        ChoraleTokenizer().decode([200])
    with pytest.raises(ValueError, match="pitch outside the MIDI range"):
        TOK.encode([(128, 0, 1, 80)])
    with pytest.raises(ValueError, match="ends before it starts"):
        TOK.encode([(60, 1, 0.5, 80)])
    with pytest.raises(ValueError, match="hold no notes; there is nothing to write"):
        TOK.decode_to_midi([1, 2], tmp_path / "x.mid")


@needs_nottingham
def test_folder_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    for name in ["ashover1.mid", "ashover2.mid"]:
        shutil.copy(NOTTINGHAM / name, tmp_path / name)
    (tmp_path / "zero.mid").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="zoo.data.midi"):
        names, pieces = read_folder(tmp_path)
    assert names == ["ashover1.mid", "ashover2.mid"] and len(pieces) == 2
    assert "skipped 1 of 3 MIDI files" in caplog.text and "zero.mid is empty" in caplog.text
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .mid or .midi files"):
        MIDIDataModule(source="folder", data_dir=str(empty_dir)).pieces("train")
