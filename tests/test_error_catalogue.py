"""Every row of docs/errors.md, triggered: the exact one-line message the user sees.

The table is the source of truth. Each row has an id; ``TRIGGERS`` maps every id to a
function that does what the row says and returns what the user saw. The test reads the
rows from the doc, so the doc and the tests cannot drift: a row without a trigger, or a
trigger without a row, fails ``test_every_row_has_a_trigger``.

In the message column ``…`` stands for text that varies (a path, a number); everything
else must match exactly. The where column reads ``API · ExceptionName``, ``API ·
warning`` (a log line, the call goes on) or ``CLI · exit 2`` (``zoo: error: ...`` on
stderr).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import zoo
from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
PAIRS = [
    ("Ein Mann fährt Fahrrad.", "A man rides a bike."),
    ("Zwei Hunde spielen im Schnee.", "Two dogs play in the snow."),
    ("Ein Mädchen springt ins Wasser.", "A girl jumps into the water."),
]


# -- the table -------------------------------------------------------------------------
@dataclass
class Row:
    id: str
    did: str
    where: str
    message: str
    todo: str


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _code(cell: str) -> str:
    """The text of a Markdown code span: `` text `` or `text`."""
    m = re.fullmatch(r"``\s?(.*?)\s?``|`(.*)`", cell)
    assert m, f"the message cell must be a code span: {cell!r}"
    return m.group(1) if m.group(1) is not None else m.group(2)


def read_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue  # headers, separators, prose
        cells = _cells(line)
        assert len(cells) == 5, f"a row has id | what the user did | where | message | what to do: {line}"
        rows.append(Row(_code(cells[0]), cells[1], cells[2], _code(cells[3]), cells[4]))
    return rows


ROWS = read_rows()


def template(message: str) -> re.Pattern[str]:
    """The doc's message as a regex: literal text, ``…`` for whatever varies."""
    return re.compile(".*?".join(re.escape(part) for part in message.split("…")))


# -- what the user saw -------------------------------------------------------------------
@dataclass
class Seen:
    where: str  # "API · ValueError", "API · warning", "CLI · exit 2"
    message: str


class Ctx:
    """What the triggers share: a tiny model and tokenizer, folders, pytest's capture fixtures."""

    def __init__(self, tmp: Path, tokenizer: Any, model: Any, capsys: Any, caplog: Any, monkeypatch: Any) -> None:
        self.tmp, self.tok, self.model = tmp, tokenizer, model
        self.capsys, self.caplog, self.monkeypatch = capsys, caplog, monkeypatch

    # ways to see an error
    def api(self, fn: Callable[[], Any]) -> Seen:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - whatever it is, the row names it
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            return Seen(f"API · {type(err).__name__}", message)
        raise AssertionError("no error was raised")

    def warning(self, fn: Callable[[], Any]) -> Seen:
        self.caplog.clear()
        with self.caplog.at_level(logging.WARNING):
            fn()
        records = [r for r in self.caplog.records if r.name.startswith("zoo") and r.levelno >= logging.WARNING]
        assert records, "no warning was logged"
        return Seen("API · warning", records[0].getMessage())

    def cli(self, *args: str) -> Seen:
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        err = self.capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("zoo: error:")]
        assert len(lines) == 1, f"expected one 'zoo: error:' line, stderr was:\n{err}"
        assert err.rstrip().splitlines()[-1] == lines[0], f"the error must be the last line, stderr was:\n{err}"
        return Seen(f"CLI · exit {exit_.value.code}", lines[0])

    # things to trigger them with
    def saved(self, name: str = "ckpt", model: Any = None) -> Path:
        folder = self.tmp / name
        (model or self.model).save_pretrained(folder)
        return folder

    def lm(self, arch: str = "rnn_lm", **kw: Any) -> Any:
        torch.manual_seed(0)
        kw = {"emb_dim": 16, "hidden_dim": 16, "layers": 1} if arch == "rnn_lm" and not kw else kw
        model = zoo.create(arch, vocab_size=self.tok.vocab_size, **kw)
        model.tokenizers = (self.tok, self.tok)
        return model.eval()

    def tsv(self) -> Path:
        path = self.tmp / "pairs.tsv"
        path.write_text("".join(f"{de}\t{en}\n" for de, en in PAIRS * 5), encoding="utf-8")
        return path

    def fit_yaml(self, model_args: str = "", data_file: str | None = None, extra: str = "") -> str:
        """A tiny `zoo fit` recipe in tmp; ``model_args`` are extra lines under model.init_args."""
        self.monkeypatch.chdir(self.tmp)
        self.monkeypatch.setenv("WANDB_MODE", "disabled")
        train = data_file or str(self.tsv())
        text = (
            "trainer:\n  max_steps: 1\n  logger: false\n  enable_progress_bar: false\n  enable_checkpointing: false\n"
            "model:\n  class_path: zoo.tasks.translation.TranslationTask\n  init_args:\n"
            "    arch: transformer_tiny\n" + "".join(f"    {line}\n" for line in model_args.splitlines() if line)
            + f"data:\n  class_path: zoo.data.text.TextDataModule\n  init_args:\n    dataset: files\n"
            f"    train_files: [{train}]\n    vocab_size: 100\n" + extra
        )
        path = self.tmp / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def midi_file(self, name: str, notes: bool = True, folder: Path | None = None) -> Path:
        from zoo.data.midi import write_notes

        path = (folder or self.tmp) / name
        if notes:
            write_notes([(60, 0.0, 0.5, 80), (64, 0.5, 1.0, 80)], path)
        else:  # a valid file with one empty track
            path.write_bytes(b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
        return path

    def no_data_dirs(self, module: Any) -> None:
        """The data modules look nowhere but in data_dir (not ../shared/data, not the download cache)."""
        self.monkeypatch.setattr(module, "_candidate_dirs", lambda d: [Path(d)] if d else [])


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


class Payload:
    """Unpickling this calls print: harmless, and exactly what weights_only refuses."""

    def __reduce__(self):
        return print, ("unpickled",)


# -- the triggers, by row id ----------------------------------------------------------------
def _unknown_pretrained(c: Ctx) -> Seen:
    return c.api(lambda: zoo.load("transformer_small.multi31k"))


def _no_config(c: Ctx) -> Seen:
    (c.tmp / "empty").mkdir()
    return c.api(lambda: zoo.load(str(c.tmp / "empty")))


def _not_a_folder(c: Ctx) -> Seen:
    folder = c.saved()
    return c.api(lambda: zoo.load(str(folder / "model.safetensors")))


def _config_not_json(c: Ctx) -> Seen:
    folder = c.saved()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    return c.api(lambda: zoo.load(str(folder)))


def _config_not_zoo(c: Ctx) -> Seen:
    folder = c.saved()
    (folder / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    return c.api(lambda: zoo.load(str(folder)))


def _weights_missing(c: Ctx) -> Seen:
    folder = c.saved()
    (folder / "model.safetensors").unlink()
    return c.api(lambda: zoo.load(str(folder)))


def _weights_truncated(c: Ctx) -> Seen:
    folder = c.saved()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return c.api(lambda: zoo.load(str(folder)))


def _weights_garbage(c: Ctx) -> Seen:
    folder = c.saved()
    (folder / "model.safetensors").write_bytes(b"<html>404 Not Found</html>")
    return c.api(lambda: zoo.load(str(folder)))


def _weights_other_arch(c: Ctx) -> Seen:
    folder = c.saved("tiny")
    v = c.tok.vocab_size
    lstm = zoo.create("seq2seq_lstm", src_vocab_size=v, tgt_vocab_size=v, emb_dim=16, hidden_dim=16)
    lstm.tokenizers = c.model.tokenizers
    other = c.saved("lstm", lstm)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    return c.api(lambda: zoo.load(str(folder)))


def _weights_other_size(c: Ctx) -> Seen:
    from zoo.hub import load_weights

    folder = c.saved()
    v = c.tok.vocab_size
    wider = zoo.create("transformer_tiny", src_vocab_size=v, tgt_vocab_size=v, d_ff=96)
    return c.api(lambda: load_weights(wider.net, folder / "model.safetensors"))


def _weights_tampered(c: Ctx) -> Seen:
    from zoo.registry import PRETRAINED, Pretrained

    c.saved("transformer_tiny.errors")
    c.monkeypatch.setenv("ZOO_CHECKPOINTS", str(c.tmp))
    entry = Pretrained(name="transformer_tiny.errors", hub_id="zoo-models/transformer_tiny.errors", sha256="0" * 64)
    c.monkeypatch.setitem(PRETRAINED, entry.name, entry)
    return c.api(lambda: zoo.load(entry.name))


def _load_unknown_override(c: Ctx) -> Seen:
    folder = c.saved()
    return c.api(lambda: zoo.load(str(folder), learning_rate=1e-4))


def _bad_repo_id(c: Ctx) -> Seen:
    return c.api(lambda: zoo.load("org/.."))


def _bad_revision(c: Ctx) -> Seen:
    return c.api(lambda: zoo.load("someone/tiny", revision="../main"))


def _hub_offline(c: Ctx) -> Seen:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: Any, **kwargs: Any) -> str:
        raise LocalEntryNotFoundError("offline")

    c.monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    return c.api(lambda: zoo.load("someone/tiny"))


def _pickled_checkpoint(c: Ctx) -> Seen:
    from zoo.training import load_checkpoint

    path = c.tmp / "run.ckpt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    return c.api(lambda: load_checkpoint(path))


def _remote_checkpoint(c: Ctx) -> Seen:
    from zoo.training import load_checkpoint

    return c.api(lambda: load_checkpoint("https://example.com/model.ckpt"))


def _tokenizer_garbage(c: Ctx) -> Seen:
    folder = c.saved()
    (folder / "tokenizer.json").write_text('{"model": ', encoding="utf-8")
    return c.api(lambda: zoo.load(str(folder)))


def _tokenizer_not_special(c: Ctx) -> Seen:
    from tokenizers import Tokenizer, models

    from zoo.data.tokenizer import TextTokenizer

    path = c.tmp / "tokenizer.json"
    Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]")).save(str(path))
    return c.api(lambda: TextTokenizer.from_file(path))


def _midi_tokenizer_garbage(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    path = c.tmp / "tokenizer.json"
    path.write_text("<pad> <s> </s>\n", encoding="utf-8")
    return c.api(lambda: EventTokenizer.from_file(path))


def _midi_tokenizer_other(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer
    from zoo.data.pixels import PixelTokenizer

    path = c.tmp / "tokenizer.json"
    PixelTokenizer(17, 16, height=8, width=8).save(path)
    return c.api(lambda: EventTokenizer.from_file(path))


# -- configurations
def _fit_config_missing(c: Ctx) -> Seen:
    c.monkeypatch.chdir(c.tmp)
    return c.cli("fit", "--config", "configs/transformer_smal.yaml")


def _fit_config_not_yaml(c: Ctx) -> Seen:
    path = c.fit_yaml()
    Path(path).write_text("model:\n  init_args: [arch: transformer_tiny\n", encoding="utf-8")
    return c.cli("fit", "--config", path)


def _fit_unknown_key(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml("learning_rate: 0.001"))


def _fit_wrong_type(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml("lr: fast"))


def _fit_override_wrong_type(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml(), "--model.init_args.warmup_steps", "1.5")


def _fit_top_level_key(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml(extra="epochs: 3\n"))


def _fit_unknown_arch(c: Ctx) -> Seen:
    path = c.fit_yaml()
    Path(path).write_text(Path(path).read_text().replace("arch: transformer_tiny", "arch: transformr_tiny"))
    return c.cli("fit", "--config", path)


def _fit_arch_args_unknown(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml("arch_args: {d_modle: 32}"))


def _fit_arch_args_type(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml("arch_args: {n_heads: four}"))


def _fit_arch_args_impossible(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml("arch_args: {d_model: 60, n_heads: 8}"))


def _fit_missing_train_file(c: Ctx) -> Seen:
    return c.cli("fit", "--config", c.fit_yaml(data_file="data/train.tsv"))


def _fit_train_not_utf8(c: Ctx) -> Seen:
    path = c.tmp / "latin1.tsv"
    path.write_bytes("Ein Mädchen.\tA girl.\n".encode("latin-1"))
    return c.cli("fit", "--config", c.fit_yaml(data_file=str(path)))


def _fit_train_empty(c: Ctx) -> Seen:
    from zoo.data.text import TextDataModule

    path = c.tmp / "empty.tsv"
    path.write_text("", encoding="utf-8")
    return c.api(lambda: TextDataModule(dataset="files", train_files=[str(path)]).setup("fit"))


def _fit_data_vocab_too_big(c: Ctx) -> Seen:
    import lightning as L

    from zoo.data.text import TextDataModule

    data = TextDataModule(dataset="files", train_files=[str(c.tsv())], vocab_size=100)
    model = zoo.create("transformer_tiny", src_vocab_size=20, tgt_vocab_size=20)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return c.api(lambda: trainer.fit(model, data))


# -- hyperparameters
def _create(name: str, **kw: Any) -> Callable[[Ctx], Seen]:
    return lambda c: c.api(lambda: zoo.create(name, **kw))


def _unknown_optimizer(c: Ctx) -> Seen:
    return c.api(lambda: zoo.create("transformer_tiny", optimizer="adam").configure_optimizers())


def _unknown_lr_schedule(c: Ctx) -> Seen:
    return c.api(lambda: zoo.create("transformer_tiny", lr_schedule="linear").configure_optimizers())


def _min_lr_ratio_out_of_range(c: Ctx) -> Seen:
    return c.api(lambda: zoo.create("transformer_tiny", lr_schedule="cosine", min_lr_ratio=1.5).configure_optimizers())


def _cosine_with_plateau(c: Ctx) -> Seen:
    return c.api(lambda: zoo.create("transformer_tiny", lr_schedule="cosine", lr_plateau_factor=0.1).configure_optimizers())


# -- inputs to translation models
def _translate(**kw: Any) -> Callable[[Ctx], Seen]:
    sentences = kw.pop("sentences", ["Ein Mann fährt Fahrrad."])
    return lambda c: c.api(lambda: c.model.translate(sentences, **kw))


def _translate_too_long(c: Ctx) -> Seen:
    long = " ".join(["Ein Mann fährt Fahrrad."] * 60)
    return c.warning(lambda: c.model.translate([long], beam_size=1, max_len=4))


def _translate_no_tokenizer(c: Ctx) -> Seen:
    c.model.tokenizers = None
    return c.api(lambda: c.model.translate(["Ein Hund."]))


def _forward_out_of_vocab(c: Ctx) -> Seen:
    v = c.tok.vocab_size
    return c.api(lambda: c.model(torch.tensor([[5, v + 3, 3]]), torch.tensor([[2, 5]])))


def _generate_out_of_vocab(c: Ctx) -> Seen:
    return c.api(lambda: c.model.generate_ids(torch.tensor([[5, -1, 3]])))


def _generate_float_ids(c: Ctx) -> Seen:
    return c.api(lambda: c.model.generate_ids(torch.tensor([[5.0, 6.0, 3.0]])))


def _generate_one_dim(c: Ctx) -> Seen:
    return c.api(lambda: c.model.generate_ids(torch.tensor([5, 6, 3])))


def _forward_too_long(c: Ctx) -> Seen:
    return c.api(lambda: c.model(torch.randint(4, 50, (1, 300)), torch.tensor([[2, 5]])))


def _convs2s_too_long(c: Ctx) -> Seen:
    model = zoo.create("convs2s_tiny", src_vocab_size=50, tgt_vocab_size=50).eval()
    return c.api(lambda: model(torch.randint(4, 50, (1, 200)), torch.tensor([[2, 5]])))


def _attention_without_attention(c: Ctx) -> Seen:
    v = c.tok.vocab_size
    lstm = zoo.create("seq2seq_lstm", src_vocab_size=v, tgt_vocab_size=v, emb_dim=16, hidden_dim=16)
    lstm.tokenizers = c.model.tokenizers
    return c.api(lambda: lstm.translate(["Ein Hund."], return_attention=True))


# -- inputs to language models
def _lm(method: str, *args: Any, **kw: Any) -> Callable[[Ctx], Seen]:
    return lambda c: c.api(lambda: getattr(c.lm(), method)(*args, **kw))


def _lm_score_out_of_vocab(c: Ctx) -> Seen:
    lm = c.lm("ngram", order=2)
    v = c.tok.vocab_size
    return c.api(lambda: lm.score(torch.tensor([[2, 5]]), torch.tensor([[5, v]])))


def _lm_forward_out_of_vocab(c: Ctx) -> Seen:
    lm = c.lm()
    return c.api(lambda: lm(torch.tensor([[2, c.tok.vocab_size + 7]])))


# -- the command line
def _cli_unknown_name(c: Ctx) -> Seen:
    return c.cli("info", "transformer_smal")


def _cli_translate_beam(c: Ctx) -> Seen:
    return c.cli("translate", str(c.saved()), "Ein Hund.", "--beam", "0")


def _cli_translate_empty(c: Ctx) -> Seen:
    return c.cli("translate", str(c.saved()), "  ")


def _cli_sample_temperature(c: Ctx) -> Seen:
    return c.cli("sample", str(c.saved("lm", c.lm())), "A man", "--temperature", "0")


def _cli_sample_top_p(c: Ctx) -> Seen:
    return c.cli("sample", str(c.saved("lm", c.lm())), "--top-p", "1.5")


def _cli_sample_translation_model(c: Ctx) -> Seen:
    return c.cli("sample", str(c.saved()))


def _cli_no_folder(c: Ctx) -> Seen:
    c.monkeypatch.chdir(c.tmp)
    return c.cli("translate", "./runs/my-model", "Ein Hund.")


# -- MIDI
def _midi_text(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    path = c.tmp / "song.mid"
    path.write_text("X:1\nT:a tune in ABC notation\nK:G\nGABc|\n", encoding="utf-8")
    return c.api(lambda: EventTokenizer().encode_file(path))


def _midi_empty(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    path = c.tmp / "song.mid"
    path.write_bytes(b"")
    return c.api(lambda: EventTokenizer().encode_file(path))


def _midi_damaged(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    path = c.tmp / "song.mid"
    path.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10\x00\x00\x90")
    return c.api(lambda: EventTokenizer().encode_file(path))


def _midi_no_notes(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    path = c.midi_file("silence.mid", notes=False)
    return c.api(lambda: EventTokenizer().encode_file(path))


def _midi_drums_only(c: Ctx) -> Seen:
    from symusic import Note, Score, Track

    from zoo.data.midi import EventTokenizer

    score = Score(480)
    drums = Track(name="kit", program=0, is_drum=True)
    drums.notes.append(Note(0, 120, 36, 100))
    score.tracks.append(drums)
    score.dump_midi(str(c.tmp / "drums.mid"))
    return c.api(lambda: EventTokenizer().encode_file(c.tmp / "drums.mid"))


def _midi_bad_note(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    return c.api(lambda: EventTokenizer().encode([(60, 0.0, 0.5, 80), (130, 0.5, 1.0, 80)]))


def _midi_decode_out_of_vocab(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    return c.api(lambda: EventTokenizer().decode([1, 5, 391]))


def _midi_decode_nothing(c: Ctx) -> Seen:
    from zoo.data.midi import EventTokenizer

    return c.api(lambda: EventTokenizer().decode_to_midi([1, 2], c.tmp / "out.mid"))


def _midi_folder_empty(c: Ctx) -> Seen:
    from zoo.data.midi import MIDIDataModule

    (c.tmp / "songs").mkdir()
    (c.tmp / "songs" / "notes.txt").write_text("no MIDI here", encoding="utf-8")
    return c.api(lambda: MIDIDataModule(source="folder", data_dir=str(c.tmp / "songs")).pieces("train"))


def _midi_folder_unreadable(c: Ctx) -> Seen:
    from zoo.data.midi import MIDIDataModule

    (c.tmp / "songs").mkdir()
    (c.tmp / "songs" / "a.mid").write_bytes(b"")
    (c.tmp / "songs" / "b.mid").write_text("not MIDI", encoding="utf-8")
    return c.api(lambda: MIDIDataModule(source="folder", data_dir=str(c.tmp / "songs")).pieces("train"))


def _midi_folder_some_unreadable(c: Ctx) -> Seen:
    from zoo.data.midi import read_folder

    songs = c.tmp / "songs"
    songs.mkdir()
    c.midi_file("a.mid", folder=songs)
    (songs / "b.mid").write_bytes(b"")
    return c.warning(lambda: read_folder(songs))


def _ngram_ddp(c: Ctx) -> Seen:
    import lightning as L

    model = zoo.create("ngram", vocab_size=c.tok.vocab_size)
    model.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    return c.api(lambda: model.setup("fit"))


# -- the Music Transformer
def _chorale_model(**kw: Any) -> Any:
    from zoo.data.midi import ChoraleTokenizer

    tok = ChoraleTokenizer()
    model = zoo.create("music_transformer_tiny", vocab_size=tok.vocab_size, pad_id=0, bos_id=1, eos_id=2, **kw)
    model.tokenizers = (tok, tok)
    return model.eval()


def _music_call(method: str, *args: Any, model_kw: dict[str, Any] | None = None, **kw: Any) -> Callable[[Ctx], Seen]:
    return lambda c: c.api(lambda: getattr(_chorale_model(**(model_kw or {})), method)(*args, **kw))


def _music_primer_too_long(c: Ctx) -> Seen:
    model = _chorale_model(attention="absolute", max_len=64)
    return c.warning(lambda: model.generate([10] * 100, max_events=30, seed=0))


def _music_out_not_midi(c: Ctx) -> Seen:
    return c.api(lambda: _chorale_model().generate_midi(c.tmp / "piece.wav"))


def _music_midi_primer_for_chorales(c: Ctx) -> Seen:
    return c.api(lambda: _chorale_model().generate(str(c.midi_file("primer.mid"))))


def _music_text_model(c: Ctx) -> Seen:
    model = zoo.create("rnn_lm", vocab_size=c.tok.vocab_size, layers=1, emb_dim=16, hidden_dim=16)
    model.tokenizers = (c.tok, c.tok)
    return c.api(lambda: model.generate(max_events=8))


# -- images
def _pixels(shape: tuple[int, ...], value: Any = 0) -> Callable[[Ctx], Seen]:
    def trigger(c: Ctx) -> Seen:
        from zoo.data.pixels import PixelTokenizer

        tok = PixelTokenizer(17, 16, height=8, width=8)
        return c.api(lambda: tok.encode(np.full(shape, value)))

    return trigger


def _pixel_decode_start_token(c: Ctx) -> Seen:
    from zoo.data.pixels import PixelTokenizer

    tok = PixelTokenizer(17, 16, height=2, width=2)
    return c.api(lambda: tok.decode([[0, 17, 3, 4]]))


def _pixel_levels(c: Ctx) -> Seen:
    from zoo.data.pixels import PixelDataModule

    return c.api(lambda: PixelDataModule(source="mnist", levels=100))


def _pixel_shift_range(c: Ctx) -> Seen:
    from zoo.data.pixels import PixelDataModule

    return c.api(lambda: PixelDataModule(source="digits", shift=8))


def _pixel_shift_super_resolution(c: Ctx) -> Seen:
    from zoo.data.pixels import PixelDataModule

    return c.api(lambda: PixelDataModule(source="digits", task="super_resolution", shift=2))


def _calibrate_trained_on_val(c: Ctx) -> Seen:
    from types import SimpleNamespace

    from zoo.calibrate import calibrate_image_model
    from zoo.data.pixels import PixelDataModule

    task = SimpleNamespace(net=zoo.create("image_transformer_tiny"))
    return c.api(lambda: calibrate_image_model(task, PixelDataModule(source="digits", train_on_val=True)))


def _labels_out_of_range(c: Ctx) -> Seen:
    from zoo.data.pixels import load_splits

    _idx(c.tmp / "t10k-images-idx3-ubyte", np.zeros((20, 28, 28)))
    _idx(c.tmp / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 12] * 5))
    return c.api(lambda: load_splits("mnist", str(c.tmp), download=False))


def _mnist_missing(c: Ctx) -> Seen:
    import zoo.data.pixels as pixels

    c.no_data_dirs(pixels)
    return c.api(lambda: pixels.PixelDataModule(source="mnist", data_dir=str(c.tmp / "mnist"), download=False).setup())


def _mnist_corrupt(c: Ctx) -> Seen:
    import zoo.data.pixels as pixels

    c.no_data_dirs(pixels)
    (c.tmp / "t10k-images-idx3-ubyte").write_bytes(b"<html>rate limited</html>")
    _idx(c.tmp / "t10k-labels-idx1-ubyte", np.zeros(4))
    return c.api(lambda: pixels.PixelDataModule(source="mnist", data_dir=str(c.tmp), download=False).setup())


def _image_model(pixel_task: str = "class_conditional") -> Any:
    from zoo.data.pixels import PixelTokenizer

    shape = {"src_height": 4, "src_width": 4} if pixel_task == "super_resolution" else {}
    model = zoo.create("image_transformer_tiny", pixel_task=pixel_task, num_classes=10, **shape)
    tok = PixelTokenizer(17, 16, height=8, width=8)
    model.tokenizers = (PixelTokenizer(17, 16, height=4, width=4) if shape else tok, tok)
    return model.eval()


def _babi_not_format(c: Ctx) -> Seen:
    from zoo.data.babi import parse_babi

    return c.api(lambda: parse_babi(["1 Mary moved to the bathroom.", "Where is Mary?"], source="qa1_train.txt"))


def _babi_task_out_of_range(c: Ctx) -> Seen:
    from zoo.data.babi import BabiDataModule

    return c.api(lambda: BabiDataModule(tasks=[21]))


def _memn2n_sentence_too_long(c: Ctx) -> Seen:
    model = zoo.create("memn2n_tiny", vocab_size=30, sentence_length=2)
    return c.api(lambda: model.net(torch.tensor([[[3, 4, 5]]]), torch.tensor([[3]])))


def _answer_empty_story(c: Ctx) -> Seen:
    return c.api(lambda: zoo.create("memn2n_tiny", vocab_size=30).answer([], "Where is Mary?"))


def _babi_unknown_words(c: Ctx) -> Seen:
    from zoo.data.babi import babi_tokenizer

    tok = babi_tokenizer(["Mary moved to the garden.", "Where is Mary?"], ["garden"])
    model = zoo.create("memn2n_tiny", vocab_size=tok.vocab_size)
    model.tokenizers = (tok, tok)
    return c.warning(lambda: model.answer(["Mary moved to the zorbatorium."], "Where is Mary?"))


def _image_call(method: str, *args: Any, pixel_task: str = "class_conditional", **kw: Any) -> Callable[[Ctx], Seen]:
    return lambda c: c.api(lambda: getattr(_image_model(pixel_task), method)(*args, **kw))


def _multi30k_missing(c: Ctx) -> Seen:
    import zoo.data.text as text

    c.monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    c.monkeypatch.setattr(text, "REPO_ROOT", c.tmp / "repo")
    c.monkeypatch.setattr(text, "DOWNLOAD_DIR", c.tmp / "cache")
    return c.api(lambda: text.find_multi30k(str(c.tmp / "multi30k"), download=False))


def _ptb_missing(c: Ctx) -> Seen:
    import zoo.data.text as text

    c.monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    c.monkeypatch.setattr(text, "REPO_ROOT", c.tmp / "repo")
    c.monkeypatch.setattr(text, "DOWNLOAD_DIR", c.tmp / "cache")
    return c.api(lambda: text.find_ptb(str(c.tmp / "ptb"), download=False))


def _ptb_split_missing(c: Ctx) -> Seen:
    import zoo.data.text as text

    c.monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    c.monkeypatch.setattr(text, "REPO_ROOT", c.tmp / "repo")
    c.monkeypatch.setattr(text, "DOWNLOAD_DIR", c.tmp / "cache")
    folder = c.tmp / "ptb"
    folder.mkdir()
    for name in ("ptb.train.txt", "ptb.test.txt"):
        (folder / name).write_text("a b\n")
    return c.api(lambda: text.find_ptb(str(folder), download=False))


def _data_dir_typo(c: Ctx) -> Seen:
    import zoo.data.text as text

    return c.warning(lambda: text._candidate_dirs(str(c.tmp / "multi30K")))


TRIGGERS: dict[str, Callable[[Ctx], Seen]] = {
    # names, folders, files
    "unknown-arch": _create("transformr_tiny"),
    "unknown-pretrained": _unknown_pretrained,
    "unknown-name-cli": _cli_unknown_name,
    "no-folder": _cli_no_folder,
    "no-config": _no_config,
    "not-a-folder": _not_a_folder,
    "config-not-json": _config_not_json,
    "config-not-zoo": _config_not_zoo,
    "weights-missing": _weights_missing,
    "weights-truncated": _weights_truncated,
    "weights-corrupt": _weights_garbage,
    "weights-other-arch": _weights_other_arch,
    "weights-other-size": _weights_other_size,
    "weights-tampered": _weights_tampered,
    "load-unknown-argument": _load_unknown_override,
    "bad-repo-id": _bad_repo_id,
    "bad-revision": _bad_revision,
    "hub-offline": _hub_offline,
    "ckpt-pickle": _pickled_checkpoint,
    "ckpt-remote": _remote_checkpoint,
    "tokenizer-not-json": _tokenizer_garbage,
    "tokenizer-foreign": _tokenizer_not_special,
    "midi-tokenizer-not-json": _midi_tokenizer_garbage,
    "midi-tokenizer-other-kind": _midi_tokenizer_other,
    # configurations
    "create-unknown-argument": _create("transformer_tiny", learning_rate=1e-3),
    "create-wrong-type": _create("transformer_tiny", lr="fast"),
    "arch-args-unknown": _create("transformer_tiny", arch_args={"d_modle": 32}),
    "arch-args-wrong-type": _create("transformer_tiny", arch_args={"d_model": "big"}),
    "arch-args-yaml-float": _create("transformer_tiny", arch_args={"dropout": "1e-1"}),
    "fit-config-missing": _fit_config_missing,
    "fit-config-not-yaml": _fit_config_not_yaml,
    "fit-unknown-key": _fit_unknown_key,
    "fit-wrong-type": _fit_wrong_type,
    "fit-override-wrong-type": _fit_override_wrong_type,
    "fit-unknown-section": _fit_top_level_key,
    "fit-unknown-arch": _fit_unknown_arch,
    "fit-arch-args-unknown": _fit_arch_args_unknown,
    "fit-arch-args-wrong-type": _fit_arch_args_type,
    "fit-arch-args-impossible": _fit_arch_args_impossible,
    # impossible hyperparameters
    "zero-heads": _create("transformer_tiny", n_heads=0),
    "heads-do-not-divide": _create("transformer_tiny", d_model=66, n_heads=4),
    "negative-dropout": _create("transformer_tiny", dropout=-0.1),
    "dropout-one": _create("rnn_lm", dropout=1.0),
    "zero-layers": _create("transformer_tiny", encoder_layers=0),
    "rnn-zero-layers": _create("rnn_lm", layers=0),
    "seq2seq-zero-layers": _create("seq2seq_lstm", layers=0),
    "convs2s-kernel-zero": _create("convs2s_tiny", kernel_size=0),
    "ngram-order-zero": _create("ngram", order=0),
    "ngram-order-too-high": _create("ngram", order=6, vocab_size=8000),
    "vocab-zero": _create("transformer_tiny", src_vocab_size=0, tgt_vocab_size=0),
    "pad-outside-vocab": _create("transformer_tiny", src_vocab_size=10, tgt_vocab_size=10, pad_id=10),
    "share-embeddings-vocab": _create("transformer_tiny", src_vocab_size=100, tgt_vocab_size=120),
    "unknown-cell": _create("rnn_lm", cell="lstn"),
    "unknown-attention": _create("seq2seq_luong", attention="cosine"),
    "val-beam-zero": _create("transformer_tiny", val_beam_size=0),
    "unknown-optimizer": _unknown_optimizer,
    "unknown-lr-schedule": _unknown_lr_schedule,
    "min-lr-ratio-range": _min_lr_ratio_out_of_range,
    "cosine-with-plateau": _cosine_with_plateau,
    # training data
    "train-file-missing": _fit_missing_train_file,
    "train-file-not-utf8": _fit_train_not_utf8,
    "train-file-empty": _fit_train_empty,
    "data-vocab-too-big": _fit_data_vocab_too_big,
    "multi30k-missing": _multi30k_missing,
    "ptb-missing": _ptb_missing,
    "ptb-split-missing": _ptb_split_missing,
    "data-dir-not-a-folder": _data_dir_typo,
    # translation inputs
    "translate-empty-list": _translate(sentences=[]),
    "translate-empty-string": _translate(sentences=["Ein Hund.", ""]),
    "translate-bare-string": _translate(sentences="Ein Hund."),
    "translate-too-long": _translate_too_long,
    "translate-no-tokenizer": _translate_no_tokenizer,
    "beam-zero": _translate(beam_size=0),
    "max-len-zero": _translate(max_len=0),
    "batch-size-zero": _translate(batch_size=0),
    "ids-out-of-vocab-forward": _forward_out_of_vocab,
    "ids-out-of-vocab-generate": _generate_out_of_vocab,
    "ids-float": _generate_float_ids,
    "ids-no-batch": _generate_one_dim,
    "source-too-long": _forward_too_long,
    "convs2s-source-too-long": _convs2s_too_long,
    "attention-unavailable": _attention_without_attention,
    "cli-translate-beam-zero": _cli_translate_beam,
    "cli-translate-blank": _cli_translate_empty,
    # language-model inputs
    "perplexity-empty-list": _lm("perplexity", []),
    "perplexity-empty-string": _lm("perplexity", ["A dog runs.", " "]),
    "perplexity-bare-string": _lm("perplexity", "A dog runs."),
    "sample-empty-prompts": _lm("sample", []),
    "temperature-zero": _lm("sample", ["A man"], temperature=0),
    "top-p-out-of-range": _lm("sample", ["A man"], top_p=0.0),
    "top-k-negative": _lm("sample", ["A man"], top_k=-5),
    "sample-max-len-zero": _lm("sample", ["A man"], max_len=0),
    "lm-ids-out-of-vocab-score": _lm_score_out_of_vocab,
    "lm-ids-out-of-vocab-forward": _lm_forward_out_of_vocab,
    "cli-sample-temperature": _cli_sample_temperature,
    "cli-sample-top-p": _cli_sample_top_p,
    "cli-sample-translation-model": _cli_sample_translation_model,
    # MIDI
    "midi-not-midi": _midi_text,
    "midi-empty-file": _midi_empty,
    "midi-damaged": _midi_damaged,
    "midi-no-notes": _midi_no_notes,
    "midi-drums-only": _midi_drums_only,
    "midi-bad-note": _midi_bad_note,
    "midi-ids-out-of-vocab": _midi_decode_out_of_vocab,
    "midi-decode-no-notes": _midi_decode_nothing,
    "midi-folder-no-midi": _midi_folder_empty,
    "midi-folder-unreadable": _midi_folder_unreadable,
    "midi-folder-some-unreadable": _midi_folder_some_unreadable,
    "ngram-ddp": _ngram_ddp,
    # the Music Transformer
    "music-max-relative-distance": _create("music_transformer_tiny", max_relative_distance=0),
    "music-local-absolute": _create("music_transformer_tiny", attention="absolute", block_len=64),
    "music-relative-pitch-local": _create("music_transformer_tiny", relative_pitch=12, block_len=64),
    "music-relative-pitch-vocab": _create("music_transformer_tiny", vocab_size=391, relative_pitch=12),
    "music-primer-out-of-vocab": _music_call("generate", [10, 500]),
    "music-primer-special": _music_call("generate", [1, 10]),
    "music-primer-too-long": _music_primer_too_long,
    "music-max-events": _music_call("generate", max_events=5000),
    "music-out-not-midi": _music_out_not_midi,
    "music-midi-primer-for-chorales": _music_midi_primer_for_chorales,
    "music-text-model": _music_text_model,
    # images
    "image-wrong-size": _pixels((2, 7, 7)),
    "image-wrong-channels": _pixels((2, 8, 8, 3)),
    "image-no-batch": _pixels((8, 8)),
    "image-values-out-of-range": _pixels((1, 8, 8), 40),
    "image-floats": _pixels((1, 8, 8), 0.5),
    "pixel-levels": _pixel_levels,
    "pixel-shift-range": _pixel_shift_range,
    "pixel-shift-super-resolution": _pixel_shift_super_resolution,
    "calibrate-trained-on-val": _calibrate_trained_on_val,
    "pixel-decode-start-token": _pixel_decode_start_token,
    "labels-out-of-range": _labels_out_of_range,
    "mnist-missing": _mnist_missing,
    "mnist-corrupt": _mnist_corrupt,
    "image-blocks-do-not-tile": _create("image_transformer_tiny", query_height=3),
    "image-unknown-attention": _create("image_transformer_tiny", attention="global"),
    "image-unknown-output": _create("image_transformer_tiny", output="logistic"),
    "image-model-wrong-size": _image_call("bits_per_dim", np.zeros((2, 7, 7), dtype=np.uint8), labels=[0, 1]),
    "image-model-wrong-channels": _image_call("bits_per_dim", np.zeros((2, 8, 8, 3), dtype=np.uint8), labels=[0, 1]),
    "image-label-out-of-range": _image_call("generate", labels=[1, 12]),
    "image-labels-missing": _image_call("bits_per_dim", np.zeros((2, 8, 8), dtype=np.uint8)),
    "image-src-missing": _image_call("generate", 4, pixel_task="super_resolution"),
    "babi-not-format": _babi_not_format,
    "babi-task-out-of-range": _babi_task_out_of_range,
    "memn2n-hops-zero": _create("memn2n_tiny", hops=0),
    "memn2n-memory-zero": _create("memn2n_tiny", memory_size=0),
    "memn2n-sentence-too-long": _memn2n_sentence_too_long,
    "answer-empty-story": _answer_empty_story,
    "babi-unknown-words": _babi_unknown_words,
}


# -- the tests ------------------------------------------------------------------------------
def test_the_table_is_well_formed():
    ids = [r.id for r in ROWS]
    assert len(ids) >= 30, f"docs/errors.md has {len(ids)} rows"
    assert len(set(ids)) == len(ids), f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    for r in ROWS:
        assert re.fullmatch(r"(API|CLI) · \S+( \d)?", r.where), f"{r.id}: where must read 'API · Error' or 'CLI · exit 2'"
        assert r.did and r.todo, f"{r.id}: say what the user did and what to do"
        assert "\n" not in r.message


def test_every_row_has_a_trigger():
    doc, tests = {r.id for r in ROWS}, set(TRIGGERS)
    assert not doc - tests, f"rows of docs/errors.md without a trigger here: {sorted(doc - tests)}"
    assert not tests - doc, f"triggers here without a row in docs/errors.md: {sorted(tests - doc)}"


@pytest.fixture
def ctx(tmp_path, tokenizer, tiny_model, capsys, caplog, monkeypatch):
    return Ctx(tmp_path, tokenizer, tiny_model, capsys, caplog, monkeypatch)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, ctx: Ctx):
    if row.id not in TRIGGERS:
        pytest.fail(f"no trigger for {row.id}")
    seen = TRIGGERS[row.id](ctx)
    assert "\n" not in seen.message, f"{row.id}: the message is more than one line:\n{seen.message}"
    assert seen.where == row.where, f"{row.id}: seen as {seen.where!r}, the doc says {row.where!r}"
    assert template(row.message).fullmatch(seen.message), (
        f"{row.id}: the message differs from docs/errors.md\n  doc:  {row.message}\n  seen: {seen.message}"
    )
