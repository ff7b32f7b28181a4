"""Shared fixtures: a tiny tokenizer and model, and Multi30k when it is available."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    ("Ein Mann fährt Fahrrad.", "A man rides a bike."),
    ("Eine Frau liest ein Buch.", "A woman reads a book."),
    ("Zwei Hunde spielen im Schnee.", "Two dogs play in the snow."),
    ("Ein Kind isst einen Apfel.", "A child eats an apple."),
    ("Drei Männer stehen vor einem Haus.", "Three men stand in front of a house."),
    ("Ein Mädchen springt ins Wasser.", "A girl jumps into the water."),
]


def multi30k_dir() -> Path | None:
    from zoo.data.text import find_multi30k

    try:
        return find_multi30k(download=False)
    except FileNotFoundError:
        return None


@pytest.fixture(scope="session")
def multi30k() -> Path:
    folder = multi30k_dir()
    if folder is None:
        pytest.skip("Multi30k is not available locally (set ZOO_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def tokenizer():
    from zoo.data.tokenizer import TextTokenizer

    texts = [s for pair in SENTENCES for s in pair] * 20
    return TextTokenizer.train(texts, vocab_size=120, min_frequency=1)


@pytest.fixture
def tiny_model(tokenizer):
    """A random transformer_tiny translation task with the tiny tokenizer attached, in eval mode."""
    import zoo

    torch.manual_seed(0)
    v = tokenizer.vocab_size
    model = zoo.create("transformer_tiny", src_vocab_size=v, tgt_vocab_size=v, dropout=0.0)
    model.tokenizers = (tokenizer, tokenizer)
    return model.eval()


@pytest.fixture
def parallel_tsv(tmp_path) -> Path:
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{de}\t{en}\n" for de, en in SENTENCES * 5), encoding="utf-8")
    return path
