"""Subword tokenisers, trained with Hugging Face ``tokenizers`` and saved as tokenizer.json.

Byte-pair encoding (Sennrich et al. 2016) over Unicode-normalised text, with a
Metaspace pre-tokeniser so that decoding restores the original spacing: what
``decode(encode(s))`` returns is detokenised text, ready for sacreBLEU.

Special tokens have fixed ids in every zoo tokeniser: <pad>=0, <unk>=1, <s>=2, </s>=3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class TextTokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the zoo's special ids."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, tokenizer: Tokenizer) -> None:
        for i, tok in enumerate(SPECIALS):
            if tokenizer.token_to_id(tok) != i:
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
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)

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


class JsonTokenizer:
    """Base of the tokenizers described by a small JSON object (MIDI events, chorale grid, pixels).

    Subclasses define ``to_dict`` (with a ``"type"`` naming their kind) and ``from_dict``;
    the text form, files (written atomically) and equality follow from them. ``_parse`` and
    ``_read`` may be overridden to word their errors for the kind of file they expect.
    """

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def _parse(cls, text: str) -> dict[str, Any]:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.__name__} file is not valid JSON ({err}); re-save it") from None
        return d if isinstance(d, dict) else {}

    @classmethod
    def _read(cls, path: str | os.PathLike) -> str:
        return Path(path).read_text(encoding="utf-8")

    def to_str(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_str(cls, text: str) -> Any:
        return cls.from_dict(cls._parse(text))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Any:
        return cls.from_str(cls._read(path))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_str())


# -- every kind of zoo tokenizer, from its JSON --------------------------------------
# Text tokenizers are Hugging Face tokenizer.json files; the MIDI and pixel tokenizers
# write a small JSON object whose "type" names their kind.
_KINDS = {"midi_events": "zoo.data.midi", "chorale_grid": "zoo.data.midi", "pixels": "zoo.data.pixels"}


def tokenizer_from_str(text: str) -> Any:
    """The zoo tokenizer (text, MIDI events, chorale grid or pixels) that ``text`` describes."""
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        kind = None
    if kind in _KINDS:
        import importlib

        module = importlib.import_module(_KINDS[kind])
        if kind == "pixels":
            return module.PixelTokenizer.from_str(text)
        return module.tokenizer_from_str(text)
    return TextTokenizer.from_str(text)


def read_tokenizer(path: str | os.PathLike) -> Any:
    """A tokenizer file of any kind (see :func:`tokenizer_from_str`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read tokenizer {path}: {err.strerror}; check the path") from None
    try:
        return tokenizer_from_str(text)
    except ValueError as err:
        raise ValueError(f"{path} is not a zoo tokenizer: {err}") from None
    except Exception as err:  # tokenizers raises a bare Exception for JSON it cannot read
        raise ValueError(f"cannot read tokenizer {path}: {err}; re-save it or retrain it") from None
