"""Tokenizers and their files: subword text tokenizers, the base of the small JSON ones,
and the one reader that turns any tokenizer.json of the zoo into its tokenizer.

Text: byte-pair encoding (Sennrich et al. 2016), trained with Hugging Face ``tokenizers``
over Unicode-normalised text, with a Metaspace pre-tokeniser so that decoding restores the
original spacing: what ``decode(encode(s))`` returns is detokenised text, ready for
sacreBLEU. Special tokens have fixed ids in every zoo text tokeniser: <pad>=0, <unk>=1,
<s>=2, </s>=3.

MIDI events, chorale grids and pixels have tokenizers described by a few numbers, saved as
a small JSON object whose ``"type"`` names the kind (``JSON_KINDS``); they derive from
:class:`JsonTokenizer`. :func:`tokenizer_from_str` and :func:`read_tokenizer` read a
tokenizer of any kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from zoo.io import atomic_write, write_text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
EOS_NAMES = (EOS, "<eos>")  # the end token: </s>, or <eos> in corpora that write it so (Penn Treebank)


class TextTokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the zoo's special ids."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, tokenizer: Tokenizer) -> None:
        for i, tok in enumerate(SPECIALS):
            names = EOS_NAMES if tok == EOS else (tok,)
            if all(tokenizer.token_to_id(name) != i for name in names):
                raise ValueError(
                    f"a zoo tokenizer maps {tok} to id {i} and this one does not; "
                    "train one with TextTokenizer.train (the data modules do)"
                )
        self.tok = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "TextTokenizer":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS, show_progress=False
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def words(cls, texts: Iterable[str], eos: str = "<eos>") -> "TextTokenizer":
        """A closed word-level vocabulary: every whitespace-separated word of ``texts``, nothing
        split into subwords, a word not among them read as <unk>. The specials come first
        (``eos`` names the end token), then the words by falling frequency (ties alphabetical)."""
        if eos not in EOS_NAMES:
            raise ValueError(f"the end token is one of {', '.join(EOS_NAMES)}, not {eos!r}")
        counts: dict[str, int] = {}
        for text in texts:
            for word in text.split():
                counts[word] = counts.get(word, 0) + 1
        specials = [PAD, UNK, BOS, eos]
        vocab = {w: i for i, w in enumerate(specials)}
        for word in sorted(counts, key=lambda w: (-counts[w], w)):
            vocab.setdefault(word, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens([PAD, BOS, eos])  # <unk> is a word of such corpora: decoding keeps it
        return cls(tok)

    @property
    def kind(self) -> str:
        """What kind of tokenizer this is, in words (for config.json)."""
        model = json.loads(self.tok.to_str())["model"]["type"]
        return "WordLevel (whitespace split, closed vocabulary)" if model == "WordLevel" else \
            "BPE (Hugging Face tokenizers, Metaspace, NFKC)"

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for bad JSON
            raise ValueError(f"cannot read tokenizer {path}: {err}; re-save it or retrain it") from None
        try:
            return cls(tok)
        except ValueError as err:
            raise ValueError(f"{path} is not a zoo tokenizer: {err}") from None

    def to_str(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_str(cls, text: str) -> "TextTokenizer":
        return cls(Tokenizer.from_str(text))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, lambda tmp: self.tok.save(tmp))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return self.tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The subword string of each id (for labelling attention pictures)."""
        return [self.tok.id_to_token(int(i)) or "<?>" for i in ids]

    def tokens(self, text: str) -> list[str]:
        return self.tok.encode(text, add_special_tokens=False).tokens


# -- the small JSON tokenizers (MIDI events, chorale grid, pixels) ------------------------
def tokenizer_json(text: str, what: str = "zoo tokenizer") -> dict[str, Any]:
    """The JSON object of a tokenizer file, or a one-line ValueError that names ``what`` was expected."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not a {what} file: it is not JSON ({err}); give the tokenizer.json saved with the model") from None
    if not isinstance(d, dict):
        raise ValueError(f"not a {what} file: it holds a JSON {type(d).__name__}, not an object; "
                         "give the tokenizer.json saved with the model")
    return d


def read_tokenizer_text(path: str | os.PathLike, what: str = "zoo tokenizer") -> str:
    """The text of a tokenizer file; a file that is not UTF-8 is a one-line ValueError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a {what} file (not UTF-8 text); give the tokenizer.json saved with the model") from None


class JsonTokenizer:
    """Base of the tokenizers described by a small JSON object (MIDI events, chorale grid, pixels).

    Subclasses define ``to_dict`` (with a ``"type"`` naming their kind, listed in
    ``JSON_KINDS``) and ``from_dict``; the text form, files (written atomically) and equality
    follow from them. ``what`` names the kind of file in the errors of a file that is not one.
    """

    what = "zoo tokenizer"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        raise NotImplementedError

    def to_str(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_str(cls, text: str) -> Any:
        return cls.from_dict(tokenizer_json(text, cls.what))

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Any:
        return cls.from_str(read_tokenizer_text(path, cls.what))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_str())


# -- every kind of zoo tokenizer, from its JSON --------------------------------------
# Text tokenizers are Hugging Face tokenizer.json files (no top-level "type"); the others
# write a small JSON object whose "type" names their class, imported only when needed.
JSON_KINDS = {
    "midi_events": ("zoo.data.midi.tokenizer", "EventTokenizer"),
    "chorale_grid": ("zoo.data.midi.tokenizer", "ChoraleTokenizer"),
    "pixels": ("zoo.data.pixels.tokenizer", "PixelTokenizer"),
}


def tokenizer_from_str(text: str) -> Any:
    """The zoo tokenizer (text, MIDI events, chorale grid or pixels) that ``text`` describes."""
    try:
        d = tokenizer_json(text)
    except ValueError:  # not a JSON object: Hugging Face tokenizers says what is wrong with it
        d = {}
    if d.get("type") in JSON_KINDS:
        import importlib

        module, name = JSON_KINDS[d["type"]]
        return getattr(importlib.import_module(module), name).from_dict(d)
    return TextTokenizer.from_str(text)


def read_tokenizer(path: str | os.PathLike) -> Any:
    """A tokenizer file of any kind (see :func:`tokenizer_from_str`)."""
    try:
        text = read_tokenizer_text(path)
    except OSError as err:
        raise ValueError(f"cannot read tokenizer {path}: {err.strerror}; check the path") from None
    try:
        return tokenizer_from_str(text)
    except ValueError as err:
        raise ValueError(f"{path} is not a zoo tokenizer: {err}") from None
    except Exception as err:  # tokenizers raises a bare Exception for JSON it cannot read
        raise ValueError(f"cannot read tokenizer {path}: {err}; re-save it or retrain it") from None
