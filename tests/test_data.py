"""The text data module: Multi30k slices, user corpora, token batching, clear errors."""

import gzip

import pytest
import torch

from zoo.data.text import TextDataModule, TokenBatchSampler, find_multi30k, read_parallel
from zoo.data.tokenizer import TextTokenizer


def test_multi30k_slice(multi30k):
    dm = TextDataModule(data_dir=str(multi30k), train_limit=2000, val_limit=50, test_limit=30, vocab_size=1000, max_tokens=800)
    src, tgt = dm.texts("train")
    assert len(src) == len(tgt) == 2000
    assert src[0].startswith("Zwei junge weiße Männer") and tgt[0].startswith("Two young, White males")
    assert dm.src_vocab_size == dm.tgt_vocab_size == 1000 and dm.joint and dm.pad_id == 0
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    seen = 0
    for b in batches:
        assert b["src"].size(0) * max(b["src"].size(1), b["tgt_in"].size(1)) <= 800
        assert (b["src"].gather(1, b["src"].ne(0).sum(1, keepdim=True) - 1) == 3).all()  # ends in </s>
        assert (b["tgt_in"][:, 0] == 2).all()
        torch.testing.assert_close(b["tgt_in"][:, 1:], b["tgt_out"][:, :-1].masked_fill(b["tgt_out"][:, :-1] == 3, 0))
        seen += b["src"].size(0)
    assert seen == len(dm.datasets["train"])
    val = next(iter(dm.val_dataloader()))
    assert val["tgt_text"][0] == dm.texts("val")[1][0]
    test = next(iter(dm.test_dataloader()))
    assert len(test["src_text"]) == 30


def test_tokenizer_round_trip_is_detokenised(multi30k):
    dm = TextDataModule(data_dir=str(multi30k), train_limit=3000, vocab_size=2000)
    tok = dm.tokenizers[1]
    for sentence in dm.texts("val")[1][:50]:
        assert tok.decode(tok.encode(sentence)) == sentence


def test_separate_vocabularies(parallel_tsv):
    dm = TextDataModule(dataset="files", train_files=[str(parallel_tsv)], vocab_size=80, joint_vocab=False)
    assert not dm.joint
    assert dm.tokenizers[0] is not dm.tokenizers[1]


def test_user_corpus_two_files(tmp_path):
    (tmp_path / "a.de").write_text("Hallo Welt\nGuten Tag\n", encoding="utf-8")
    with gzip.open(tmp_path / "a.en.gz", "wt", encoding="utf-8") as f:
        f.write("Hello world\nGood day\n")
    assert read_parallel([str(tmp_path / "a.de"), str(tmp_path / "a.en.gz")]) == (["Hallo Welt", "Guten Tag"], ["Hello world", "Good day"])


def test_misaligned_files_and_bad_tsv(tmp_path):
    (tmp_path / "a").write_text("1\n2\n")
    (tmp_path / "b").write_text("1\n")
    with pytest.raises(ValueError, match="has 2 lines but .* has 1; they must align"):
        read_parallel([str(tmp_path / "a"), str(tmp_path / "b")])
    (tmp_path / "c.tsv").write_text("ok\tfine\nbroken line\n")
    with pytest.raises(ValueError, match="line 2 has 1 tab-separated fields"):
        read_parallel([str(tmp_path / "c.tsv")])


def test_length_filter_reports_what_it_dropped(parallel_tsv, tmp_path, caplog):
    long = tmp_path / "long.tsv"
    long.write_text(("lang " * 300) + "\tlong\n" + parallel_tsv.read_text(), encoding="utf-8")
    dm = TextDataModule(dataset="files", train_files=[str(long)], vocab_size=100, max_len=40)
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 29 and len(dm.datasets["val"]) == 1  # 5% held out
    assert "dropped 1 of 30 training pairs" in caplog.text


def test_missing_data_folder_says_where_it_looked(tmp_path, monkeypatch):
    import zoo.data.text as text

    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(text, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(text, "DOWNLOAD_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"Multi30k not found \(looked in .*nowhere.*env.*\); set data_dir or ZOO_DATA_DIR"):
        find_multi30k(str(tmp_path / "nowhere"), download=False)


def test_token_batches_respect_budget_and_cover_everything():
    lengths = [((i * 7919) % 40) + 1 for i in range(500)]
    sampler = TokenBatchSampler(lengths, max_tokens=120, shuffle=True, seed=3)
    epoch1, epoch2 = list(sampler), list(sampler)
    for batches in (epoch1, epoch2):
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(len(b) * max(lengths[i] for i in b) <= 120 for b in batches)
    assert epoch1 != epoch2  # a new order each epoch
    sampler.set_epoch(1)  # as Lightning does when a run resumes at epoch 1
    assert list(sampler) == epoch2
    resumed = TokenBatchSampler(lengths, max_tokens=120, shuffle=True, seed=3)
    it = iter(resumed)
    resumed.set_epoch(1)  # Lightning builds the loader's iterator first, then sets the epoch
    assert [next(it) for _ in range(3)] == epoch2[:3]
    fixed = TokenBatchSampler(lengths, max_tokens=120, shuffle=False)
    assert list(fixed) == list(fixed)
    with pytest.raises(ValueError, match="smaller than the longest example"):
        TokenBatchSampler([5, 50], max_tokens=20)


def test_tokenizer_file_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        TextTokenizer.from_file(tmp_path / "bad.json")
