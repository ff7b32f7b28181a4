"""Penn Treebank as the language-modelling papers read it (Mikolov's words, one <eos> a line, every
word and <eos> a target), modified Kneser-Ney, streams read in chunks, and the ngram.ptb checkpoint."""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import pytest
import torch

import zoo
from zoo.data import download, text
from zoo.data.text import PTB_FILES, PTB_MD5, TextLMDataModule, find_ptb
from zoo.models import ngram as ngram_module
from zoo.models.ngram import NGramConfig, NGramLM, modified_discounts

DATA = Path(os.environ.get("ZOO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
TOKENS = {"train": 929_589, "val": 73_760, "test": 82_430}  # words and <eos>: the papers' counts


def ptb_here() -> Path:
    try:
        return find_ptb(download=False)
    except FileNotFoundError:
        pytest.skip("Penn Treebank is not available locally (set ZOO_DATA_DIR)")


@pytest.fixture(scope="module")
def ptb() -> TextLMDataModule:
    ptb_here()
    return TextLMDataModule(dataset="ptb", mode="stream", batch_size=4, bptt=35)


# -- the data --------------------------------------------------------------------------
def test_ptb_counts_every_word_and_eos(ptb):
    tok = ptb.tokenizer
    assert tok.vocab_size == 10_002  # Mikolov's 10,000 words (<unk> and <eos> among them), <pad> and <s>
    assert [tok.tok.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "<eos>"]
    words = {w for line in ptb.texts("train") for w in line.split()}
    assert len(words) == 9_999 and set(tok.tok.get_vocab()) == words | {"<pad>", "<s>", "<eos>"}  # no subwords
    for split, n in TOKENS.items():
        flat = ptb._flat(split)
        assert len(flat) - 1 == n and flat[0] == tok.eos_id and flat[-1] == tok.eos_id
        assert flat.count(tok.eos_id) == len(ptb.texts(split)) + 1  # one after each line, one to start from
        assert tok.bos_id not in flat and tok.unk_id in flat  # no <s> inside the stream; <unk> is a word
    # evaluation: the test stream is one row whose targets are exactly its 82,430 tokens
    batches = ptb.stream_batches("test")
    targets = torch.cat([b["targets"] for b in batches], 1)[0]
    real = targets[targets.ne(tok.pad_id)]
    assert real.numel() == TOKENS["test"] and real.tolist() == ptb._flat("test")[1:]
    assert batches[0]["reset"] and not any(b["reset"] for b in batches[1:])
    # sentence mode counts the same targets: <s> line -> line <eos>
    sentences = TextLMDataModule(dataset="ptb", mode="sentences", tokenizer=None)
    sentences._tokenizer = tok
    assert not sentences.scores_stream and ptb.scores_stream
    assert sum(b["targets"].ne(0).sum().item() for b in sentences.test_dataloader()) == TOKENS["test"]


def test_ptb_decodes_to_its_lines_and_its_tokenizer_reads_back(ptb, tmp_path):
    from zoo.data.tokenizer import TextTokenizer, read_tokenizer

    line = ptb.texts("test")[5]
    ids = ptb.tokenizer.encode(line)
    assert ptb.tokenizer.decode(ids) == " ".join(line.split())  # <unk> kept: it is a word of the corpus
    ptb.tokenizer.save(tmp_path / "tokenizer.json")
    back = read_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(back, TextTokenizer) and back.encode(line) == ids and back.eos_id == 3
    assert back.kind.startswith("WordLevel")
    assert ptb.describe()["test_split"] == "test" and "vocab_size" not in ptb.hparams


def test_stream_windows_continue_each_other(ptb):
    """Training: each row of a window goes on where the same row of the window before stopped."""
    batches = ptb._stream_batches()
    assert batches[0]["reset"] and not any(b["reset"] for b in batches[1:])
    for a, b in zip(batches[:5], batches[1:6]):
        assert torch.equal(a["targets"][:, -1], b["tokens"][:, 0])
        assert torch.equal(a["targets"][:, :-1], a["tokens"][:, 1:])
    rows = torch.cat([b["tokens"] for b in batches], 1)  # (4, n): the stream in order, row after row
    flat = ptb._flat("train")
    assert rows.flatten().tolist() == flat[: rows.numel()]


def test_stream_scored_in_chunks_equals_scored_whole(ptb):
    """The state (an n-gram's last words, an RNN's hidden state) carries across the windows."""
    ids = torch.tensor(ptb._flat("val")[:3001])
    lm = NGramLM(NGramConfig(vocab_size=ptb.vocab_size, order=4, modified=True))
    whole = torch.tensor(ptb._flat("train")[:20001])
    history = None
    for a in range(0, 20000, 700):  # counted in chunks, carrying the last three words
        history = lm.observe(whole[None, a : min(a + 700, 20000)], whole[None, a + 1 : min(a + 701, 20001)], history)
    once = NGramLM(lm.config)
    once.observe(whole[None, :-1], whole[None, 1:])
    lm.tables(), once.tables()
    assert torch.equal(lm.grams, once.grams) and torch.equal(lm.counts, once.counts)
    full = once.score(ids[None, :-1], ids[None, 1:])
    state, parts = None, []
    for a in range(0, 3000, 35):
        b = min(a + 35, 3000)
        scores, state = once.score_stream(ids[None, a:b], ids[None, a + 1 : b + 1], state)
        parts.append(scores)
    torch.testing.assert_close(torch.cat(parts, 1), full)
    # through the task, in the data module's own chunks, for a count model and a recurrent one
    dm = TextLMDataModule(dataset="ptb", mode="stream", bptt=64, val_limit=100)
    dm._tokenizer = ptb.tokenizer
    flat = torch.tensor(dm._flat("val"))
    for arch, args in (("ngram", {"order": 3}), ("rnn_lm", {"emb_dim": 8, "hidden_dim": 8, "layers": 1})):
        torch.manual_seed(0)
        model = zoo.create(arch, vocab_size=dm.vocab_size, arch_args=args).eval()
        if arch == "ngram":
            model.net.observe(whole[None, :-1], whole[None, 1:])
        nll = model.mean_nll(dm.stream_batches("val"))
        with torch.no_grad():
            direct = -model.net.score(flat[None, :-1], flat[None, 1:]).mean().item()
        assert math.isclose(nll, direct, rel_tol=1e-5), arch


def test_fit_counts_the_stream_and_validates_it(ptb, tmp_path):
    import lightning as L

    dm = TextLMDataModule(dataset="ptb", mode="stream", batch_size=1, bptt=512, train_limit=1500, val_limit=100)
    model = zoo.create("ngram", vocab_size=dm.vocab_size, arch_args={"order": 3, "modified": True})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    model.net.tables()
    flat = torch.tensor(dm._flat("train"))
    once = NGramLM(model.net.config)
    once.observe(flat[None, :-1], flat[None, 1:])
    once.tables()
    assert torch.equal(model.net.grams, once.grams) and torch.equal(model.net.counts, once.counts)
    val = trainer.validate(model, dm, verbose=False)[0]["val/ppl"]
    assert math.isclose(val, math.exp(model.mean_nll(dm.stream_batches("val"))), rel_tol=1e-4)


# -- modified Kneser-Ney -----------------------------------------------------------------
def toy_stream(n=3000, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    skewed = torch.randint(0, v - 3, (n,), generator=g) // torch.randint(1, 4, (n,), generator=g)  # repeats: counts of 1-4+
    return torch.cat([torch.tensor([3]), skewed + 3])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_modified_kneser_ney_sums_to_one_and_is_never_zero(order):
    ids = toy_stream()
    lm = NGramLM(NGramConfig(vocab_size=40, order=order, modified=True))
    lm.observe(ids[None, :-1], ids[None, 1:])
    contexts = torch.stack([ids[100:108], ids[500:508], torch.full((8,), 39)])  # seen, seen, unseen
    probs = lm(contexts).exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 8))
    assert probs.min() > 0


def test_modified_discounts_by_hand():
    counts = torch.tensor([1.0] * 10 + [2.0] * 4 + [3.0] * 3 + [4.0] * 2 + [7.0])
    y = 10 / (10 + 2 * 4)
    expected = [0.0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3]
    torch.testing.assert_close(modified_discounts(counts), torch.tensor(expected))
    # a bigram by hand: P(w | h) = (c - D(c)) / c(h) + (D1 N1 + D2 N2 + D3 N3+) / c(h) * P_uni(w)
    lm = NGramLM(NGramConfig(vocab_size=8, order=2, modified=True))
    ids = torch.tensor([3, 4, 5, 4, 5, 4, 6, 4, 5, 3, 7, 4, 6, 3])
    lm.observe(ids[None, :-1], ids[None, 1:])
    uni, bi = lm.tables()
    d = bi["discounts"]
    # after 4: 5 three times, 6 twice -> c(4 .) = 5, N2 = 1, N3+ = 1
    p5 = (3 - d[3]) / 5 + (d[2] + d[3]) / 5 * lm.log_prob(torch.tensor([[1]]), torch.tensor([5])).exp()  # 1: unseen
    torch.testing.assert_close(lm.log_prob(torch.tensor([[4]]), torch.tensor([5])).exp(), p5)


def test_split_keys_score_as_one_key(monkeypatch):
    """The layout for vocabularies whose n-grams overflow one int64 key gives the same model."""
    ids = toy_stream()
    one = NGramLM(NGramConfig(vocab_size=40, order=4, modified=True))
    monkeypatch.setattr(ngram_module, "KEY_LIMIT", 40**3 + 1)  # 40^4 no longer fits, 40^3 does
    split = NGramLM(NGramConfig(vocab_size=40, order=4, modified=True))
    assert split.split_keys and not one.split_keys
    for lm in (one, split):
        lm.observe(ids[None, :1500], ids[None, 1:1501])
        lm.observe(ids[None, 1500:-1], ids[None, 1501:])  # merged with what was counted before
    assert split.counts.dtype == torch.int32 and split.last.dtype == torch.int32
    assert torch.equal(split.grams * 40 + split.last, one.grams) and torch.equal(split.counts.long(), one.counts)
    contexts = torch.stack([ids[:50], torch.randint(3, 40, (50,), generator=torch.Generator().manual_seed(1))])
    torch.testing.assert_close(split(contexts), one(contexts))
    with pytest.raises(ValueError, match="does not fit a 64-bit key"):
        NGramLM(NGramConfig(vocab_size=10_002, order=6))


def test_one_discount_stays_the_default():
    assert NGramConfig().modified is False
    lm = NGramLM(NGramConfig(vocab_size=10_002, order=4))
    assert not lm.split_keys and lm.counts.dtype == torch.long and not hasattr(lm, "last")


# -- the checkpoint ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def published():
    ptb_here()
    return zoo.load("ngram.ptb")


def test_ngram_ptb_sums_to_one_in_real_contexts(published, ptb):
    ids = torch.tensor(ptb.tokenizer.encode("the company said it expects to report"))[None]
    probs = published.net(ids).exp()  # (1, 7, V): after each prefix of the sentence
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, ids.size(1)), atol=1e-4, rtol=0)
    assert probs.min() > 0
    assert published.net.config.modified and published.net.split_keys


def test_ngram_ptb_reproduces_its_first_5000_test_tokens(published):
    from zoo.evaluate import evaluate
    from zoo.hub import checkpoints_dir, read_config

    config = read_config(checkpoints_dir() / "ngram.ptb")
    rep = config["reproduce"]
    assert rep["split"] == "test" and rep["first"] == 5000 and rep["items"] == "tokens"
    result = evaluate("ngram.ptb", split="test", limit=5000)
    assert abs(result["metrics"]["ppl"] - rep["ppl"]) <= 0.01 * rep["ppl"]
    assert result["recorded"] == {"ppl": rep["ppl"]}
    assert config["metrics"]["ppl"] <= 141.2  # Mikolov et al. 2011, KN5
    size = sum(f.stat().st_size for f in (checkpoints_dir() / "ngram.ptb").iterdir())
    assert size < 20e6


def test_rnn_lm_ptb_carries_its_state_across_chunks_and_beats_the_ngram(ptb):
    """rnn_lm.ptb scores a stream 35 tokens at a time as it scores it in one pass (the LSTM state goes
    on from chunk to chunk), and its recorded test perplexity is below ngram.ptb's. Its figure on the
    first 5,000 test tokens is checked with every checkpoint's in tests/test_pretrained.py."""
    lm = zoo.load("rnn_lm.ptb").eval()
    ids = torch.tensor(ptb._flat("val")[:351])[None]
    with torch.no_grad():
        whole, _ = lm.net.score_stream(ids[:, :-1], ids[:, 1:])
        state, parts = None, []
        for a in range(0, 350, 35):
            scores, state = lm.net.score_stream(ids[:, a : a + 35], ids[:, a + 1 : a + 36], state)
            parts.append(scores)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-4, rtol=1e-4)
    assert zoo.get_pretrained("rnn_lm.ptb").metrics["ppl"] < zoo.get_pretrained("ngram.ptb").metrics["ppl"]
    assert zoo.get_pretrained("rnn_lm.ptb").metrics["ppl"] <= 82.7  # Zaremba et al. 2014, medium


# -- finding and downloading -----------------------------------------------------------
def serve(pages):
    def urlopen(url, timeout=0):
        page = pages[url]
        if isinstance(page, Exception):
            raise page
        return io.BytesIO(page)

    return urlopen


@pytest.mark.parametrize("name", sorted(PTB_MD5))
def test_ptb_checksums_are_those_of_the_files(name):
    path = DATA / "ptb" / name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    assert hashlib.md5(path.read_bytes()).hexdigest() == PTB_MD5[name]


def test_ptb_download_through_the_one_fetch(tmp_path, monkeypatch):
    folder = ptb_here()
    pages = {text.PTB_URL.format(name=n): (folder / n).read_bytes() for n in PTB_MD5}
    monkeypatch.setattr(download, "urlopen", serve(pages))
    monkeypatch.setattr(text, "DOWNLOAD_DIR", tmp_path / "cache")
    monkeypatch.setattr(text, "_candidate_dirs", lambda d: [])
    found = find_ptb()
    assert found == tmp_path / "cache" / "ptb" and sorted(p.name for p in found.iterdir()) == sorted(PTB_MD5)
    dm = TextLMDataModule(dataset="ptb", test_limit=3)
    assert dm.texts("test") == (folder / PTB_FILES["test"]).read_text().splitlines()[:3]


def test_ptb_nowhere_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    from urllib.error import URLError

    pages = {text.PTB_URL.format(name=n): b"<html>rate limited</html>" for n in PTB_MD5}
    pages[text.PTB_URL.format(name="ptb.train.txt")] = URLError("Name or service not known")
    monkeypatch.setattr(download, "urlopen", serve(pages))
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(text, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(text, "DOWNLOAD_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as err:
        find_ptb(str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("Penn Treebank not found (looked in ")
    for place in ("nowhere", "env", str(tmp_path / "shared" / "data"), "cache"):
        assert place in message
    assert "download failed: could not download ptb.train.txt (" in message and "set data_dir or ZOO_DATA_DIR" in message
    assert not (tmp_path / "cache" / "ptb" / "ptb.train.txt").exists()
    with pytest.raises(FileNotFoundError, match="Penn Treebank not found"):
        TextLMDataModule(dataset="ptb").texts("train")
