"""End-to-end memory networks and bAbI: stories and their memories, the validation split, position
encoding, weight tying, the padding word, linear start, answer(), zoo answer, a fit of the recipe."""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import zoo
from zoo.data.babi import ALL_TASKS, BabiDataModule, babi_tokenizer, find_babi, parse_babi, task_file
from zoo.models.memory_network import MemN2N, MemN2NConfig, centred_position_encoding, memn2n_tiny, position_encoding

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "memn2n.babi.yaml"


# -- a small bAbI of our own: the real file format, 20 tasks, a few stories each -----------
PEOPLE, PLACES = ["Mary", "John", "Sandra", "Daniel"], ["kitchen", "garden", "office", "hallway", "bathroom"]


def story_lines(seed: int, questions: int = 3) -> list[str]:
    """One story: moves, then a question about the last move of someone, with its supporting fact."""
    lines, where, n = [], {}, 0
    for q in range(questions):
        for i in range(2):
            person, place = PEOPLE[(seed + q + i) % 4], PLACES[(seed * 3 + q + 2 * i) % 5]
            n += 1
            lines.append(f"{n} {person} moved to the {place}.")
            where[person] = (place, n)
        person = PEOPLE[(seed + q) % 4]
        n += 1
        lines.append(f"{n} Where is {person}? \t{where[person][0]}\t{where[person][1]}")
    return lines


@pytest.fixture(scope="module")
def mini_babi(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("babi") / "tasks_1-20_v1-2"
    (root / "en").mkdir(parents=True)
    for task in ALL_TASKS:
        for split, stories in (("train", 10), ("test", 4)):
            lines = [line for s in range(stories) for line in story_lines(task + s)]
            (root / "en" / task_file(task, split)).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# -- stories ------------------------------------------------------------------------------
def test_stories_restart_at_line_one_and_keep_their_supporting_facts():
    lines = ["1 Mary moved to the bathroom.", "2 John went to the hallway.", "3 Where is Mary? \tbathroom\t1",
             "4 Daniel went back to the hallway.", "5 Where is Daniel? \thallway\t4",
             "1 Sandra travelled to the office.", "2 Sandra went to the bathroom.", "3 Where is Sandra? \tbathroom\t2",
             "1 Mary got the football there.", "2 Mary went to the garden.", "3 What is Mary carrying? \tfootball\t1 2"]
    qs = parse_babi(lines, task=8)
    assert [q.question for q in qs] == ["Where is Mary?", "Where is Daniel?", "Where is Sandra?", "What is Mary carrying?"]
    assert qs[0].story == ["Mary moved to the bathroom.", "John went to the hallway."] and qs[0].support == [0]
    assert qs[1].story[-1] == "Daniel went back to the hallway." and len(qs[1].story) == 3  # questions are no memory
    assert qs[1].support == [2]  # line 4 is the third statement
    assert qs[2].story == ["Sandra travelled to the office.", "Sandra went to the bathroom."]  # a new story
    assert qs[3].support == [0, 1] and qs[3].answer == "football" and qs[3].task == 8
    with pytest.raises(ValueError, match="line 2"):
        parse_babi(["1 Mary moved.", "oops"])


def test_the_memory_holds_the_most_recent_statements():
    lines = [f"{i} Mary moved to room{i}." for i in range(1, 61)] + ["61 Where is Mary? \troom60\t60 3"]
    (q,) = parse_babi(lines, memory_size=50)
    assert len(q.story) == 50 and q.story[0] == "Mary moved to room11." and q.story[-1] == "Mary moved to room60."
    assert q.support == [49]  # fact 3 fell out of the memory
    (whole,) = parse_babi(lines, memory_size=None)
    assert len(whole.story) == 60 and whole.support == [59, 2]


def test_words_are_lowercased_with_punctuation_split_and_answers_are_one_word():
    tok = babi_tokenizer(["Mary moved to the bathroom.", "Where is Mary?"], ["bathroom", "n,s"])
    assert tok.tokens("Where is MARY?") == ["where", "is", "mary", "?"]
    assert tok.tok.token_to_id("n,s") is not None  # task 19's two-step path: one answer word
    assert tok.pad_id == 0 and tok.unk_id not in tok.encode("Mary moved to the bathroom.")


def test_validation_questions_are_fixed_by_the_seed(mini_babi):
    a = BabiDataModule(data_dir=str(mini_babi), seed=0)
    b = BabiDataModule(data_dir=str(mini_babi), seed=0)
    c = BabiDataModule(data_dir=str(mini_babi), seed=1)
    assert a.held_out(3, 1000).tolist() == b.held_out(3, 1000).tolist() != c.held_out(3, 1000).tolist()
    assert len(a.held_out(3, 1000)) == 100 and a.held_out(3, 1000).tolist() != a.held_out(4, 1000).tolist()
    train, val = a.questions("train"), a.questions("val")
    assert len(train) == 20 * 27 and len(val) == 20 * 3  # 10% of each task's 30 training questions
    key = lambda q: (q.task, tuple(q.story), q.question)  # noqa: E731
    assert not {key(q) for q in train} & {key(q) for q in val}
    assert [key(q) for q in val] == [key(q) for q in b.questions("val")]
    assert {q.task for q in a.questions("test")} == set(ALL_TASKS)
    one = BabiDataModule(data_dir=str(mini_babi), task=7, test_limit=2)
    assert {q.task for q in one.questions("test")} == {7} and len(one.questions("test")) == 2
    with pytest.raises(ValueError, match="numbered 1..20"):
        BabiDataModule(task=21)


def test_batches_put_the_most_recent_statement_first(mini_babi):
    dm = BabiDataModule(data_dir=str(mini_babi), tasks=[1, 2], batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    q = dm.questions("val")[0]
    tok = dm.tokenizer
    assert batch["story"][0, 0, : len(tok.encode(q.story[-1]))].tolist() == tok.encode(q.story[-1])
    assert batch["answer"][0] == tok.tok.token_to_id(q.answer) and batch["task"][0] == q.task
    first = list(dm.question_batches("test", first=1))
    assert sum(len(b["task"]) for b in first) == 2


def test_missing_data_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("zoo.data.text.REPO_ROOT", tmp_path / "nowhere" / "repo")
    monkeypatch.setattr("zoo.data.text.DOWNLOAD_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as err:
        find_babi(download=False)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "ZOO_DATA_DIR" in message


def test_a_download_keeps_only_task_files_whose_sha256_is_the_published(tmp_path, monkeypatch):
    import io
    import tarfile

    from zoo.data import babi

    try:
        here = find_babi(download=False) / "en"
    except FileNotFoundError:
        pytest.skip("bAbI is not available locally (set ZOO_DATA_DIR)")

    def archive(tamper: str | None = None) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in babi.BABI_SHA256:
                data = (here / name).read_bytes() + (b"1 Mary moved.\n" if name == tamper else b"")
                info = tarfile.TarInfo(f"tasks_1-20_v1-2/en/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def fake_fetch(data: bytes):
        def fetch(urls, target, **checksum):
            assert checksum == {"sha256": babi.BABI_ARCHIVE_SHA256, "timeout": 60} and "tasks_1-20_v1-2" in urls[0]
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_bytes(data)
            return Path(target)
        return fetch

    monkeypatch.setattr(babi, "fetch", fake_fetch(archive()))
    dest = babi._download_babi(tmp_path / "ok")
    assert sorted(p.name for p in (dest / "en").iterdir()) == sorted(babi.BABI_SHA256)
    assert not (dest / "tasks_1-20_v1-2.tar.gz").exists()
    name = task_file(3, "test")
    monkeypatch.setattr(babi, "fetch", fake_fetch(archive(tamper=name)))
    with pytest.raises(OSError, match=f"{name} in tasks_1-20_v1-2.tar.gz is not the published file"):
        babi._download_babi(tmp_path / "bad")


# -- the network -----------------------------------------------------------------------------
def test_position_encoding_is_the_papers():
    l = position_encoding(torch.tensor([4]), width=4, dim=3)[0]  # (J, d)
    J, d = 4, 3
    for j in range(1, J + 1):
        for k in range(1, d + 1):
            assert l[j - 1, k - 1].item() == pytest.approx((1 - j / J) - (k / d) * (1 - 2 * j / J))
    assert l[0, 0].item() == pytest.approx(0.75 - 1 / 6)


def test_the_centred_position_encoding_is_the_authors_code():
    l = centred_position_encoding(torch.tensor([3]), width=3, dim=2)[0]  # (J, d)
    assert l[0, 0].item() == pytest.approx(1 + 4 * (1 - 1.5) * (1 - 2) / 6)  # 4/3
    assert l[1].tolist() == pytest.approx([1.0, 1.0])  # the middle word of 3: weight 1
    assert l.mean().item() == pytest.approx(1.0)
    net = memn2n_tiny(vocab_size=10, encoding="position_centred")
    words = torch.tensor([[3, 4, 5]])
    expected = (centred_position_encoding(torch.tensor([3]), 3, 8)[0] * net.B.weight[[3, 4, 5]]).sum(0)
    torch.testing.assert_close(net.sentence(net.B, words)[0], expected)


def test_one_sentence_length_weighs_a_word_the_same_in_every_sentence():
    net = memn2n_tiny(vocab_size=10, sentence_length=5)
    short, long = torch.tensor([[3, 4, 0, 0, 0]]), torch.tensor([[3, 6, 7, 8, 0]])
    first_word = net.sentence(net.B, short[:, :1])  # word 3 at position 1, alone
    minus = lambda words: net.sentence(net.B, words) - first_word  # the rest of the sentence
    l = position_encoding(torch.tensor([5]), width=5, dim=8)[0]
    assert torch.allclose(minus(short), l[1] * net.B.weight[4], atol=1e-6)
    assert torch.allclose(minus(long), (l[1:4] * net.B.weight[[6, 7, 8]]).sum(0), atol=1e-6)
    with pytest.raises(ValueError, match="a sentence of 6 words is longer than sentence_length=5; set sentence_length to at least 6"):
        net.sentence(net.B, torch.tensor([[1, 2, 3, 4, 5, 6]]))
    with pytest.raises(ValueError, match="sentence_length must be at least 0"):
        memn2n_tiny(vocab_size=10, sentence_length=-1)


def test_adjacent_tying_shares_the_matrices():
    net = MemN2N(MemN2NConfig(vocab_size=30, dim=8, hops=3, memory_size=10))
    for k in range(2):
        assert net.A(k + 1) is net.C(k) and net.T_A(k + 1) is net.T_C(k)  # A_k+1 = C_k
    assert net.B is net.A(0)  # B = A_1
    assert net.answer_weight() is net.C(2).weight  # W^T = C_K
    assert len(net.embed) == 4 and len(net.temporal) == 4  # K + 1 of each


def test_layerwise_tying_shares_across_hops_and_maps_the_state():
    net = MemN2N(MemN2NConfig(vocab_size=30, dim=8, hops=3, memory_size=10, tying="layerwise"))
    assert net.A(0) is net.A(2) and net.C(0) is net.C(2) and net.T_A(0) is net.T_A(1)
    assert net.B is not net.A(0) and net.answer_weight() is net.out.weight and net.H is not None
    with pytest.raises(ValueError, match="unknown tying"):
        MemN2N(MemN2NConfig(tying="both"))


@pytest.mark.parametrize("settings", [dict(), dict(encoding="bow"), dict(tying="layerwise"), dict(temporal=False)])
@pytest.mark.parametrize("linear", [False, True])
def test_forward_backward_at_a_tiny_size(settings, linear):
    torch.manual_seed(0)
    net = memn2n_tiny(vocab_size=30, **settings)
    story = torch.randint(4, 30, (3, 6, 5))
    story[0, 3:] = 0  # a shorter story
    story[:, :, 4] = 0  # shorter sentences
    logits, attention = net(story, torch.randint(4, 30, (3, 4)), linear=linear)
    assert logits.shape == (3, 30) and attention.shape == (3, 2, 6)
    assert logits[:, 0].eq(float("-inf")).all() and torch.isfinite(logits[:, 1:]).all()  # the padding word is no answer
    assert attention[0, :, 3:].eq(0).all()  # empty slots get nothing
    if not linear:
        torch.testing.assert_close(attention.sum(-1), torch.ones(3, 2))
    torch.nn.functional.cross_entropy(logits, torch.randint(4, 30, (3,))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_read_empty_lets_every_empty_slot_of_the_memory_score_zero():
    torch.manual_seed(0)
    net = memn2n_tiny(vocab_size=30, read_empty=True)  # 10 slots
    story = torch.randint(4, 30, (2, 4, 3))
    story[0, 2:] = 0  # 2 statements; the other story 4
    query = torch.randint(4, 30, (2, 3))
    logits, attention = net(story, query)
    assert attention.shape == (2, 2, 10)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2))
    first = net.sentence(net.B, query)[0] @ net.memory(0, story[:1], torch.arange(4)[None])[0, :2].T  # hop 1's real scores
    expected = torch.cat([first, torch.zeros(8)]).softmax(-1)  # 8 empty slots scoring 0
    torch.testing.assert_close(attention[0, 0], expected)
    again, _ = net(torch.nn.functional.pad(story, (0, 0, 0, 6)), query)  # the same story with its empty slots given
    torch.testing.assert_close(again, logits)
    torch.nn.functional.cross_entropy(logits, torch.tensor([5, 6])).backward()
    assert net.temporal[0].grad[4:].eq(0).all()  # empty slots carry no temporal encoding


@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
def test_the_padding_word_stays_zero(tying):
    torch.manual_seed(0)
    net = memn2n_tiny(vocab_size=30, tying=tying)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for _ in range(3):
        story, query = torch.randint(0, 30, (4, 5, 6)), torch.randint(0, 30, (4, 3))
        logits, _ = net(story, query)
        torch.nn.functional.cross_entropy(logits, torch.randint(1, 30, (4,))).backward()
        opt.step()
        opt.zero_grad()
    rows = [e.weight[0] for e in net.embed] + ([net.out.weight[0]] if net.out is not None else [])
    assert all(r.eq(0).all() for r in rows)


def test_random_noise_spreads_statements_over_more_slots_in_order():
    torch.manual_seed(0)
    task = zoo.create("memn2n_tiny", vocab_size=30, random_noise=0.5)
    story = torch.randint(4, 30, (64, 20, 3))
    story[:, 12:] = 0  # 12 statements each
    times = task.noisy_times(story)
    real = times[:, :12]
    assert (real[:, 1:] > real[:, :-1]).all()  # order kept, slots distinct
    assert (real[:, -1] >= 11).all() and (real[:, -1] <= 11 + 5).all()  # at most ceil(0.5 * 12) - 1 blanks
    assert (real[:, -1] > 11).any()


def test_clip_each_clips_every_weights_gradient_alone():
    task = zoo.create("memn2n_tiny", vocab_size=30, clip_each=True)
    params = list(task.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 10.0 if i % 2 else 1e-4)
    before = [p.grad.clone() for p in params]
    task.configure_gradient_clipping(None, gradient_clip_val=1.0)
    for i, (p, g) in enumerate(zip(params, before)):
        if i % 2:  # large: norm 1, same direction
            assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
            assert torch.allclose(p.grad / p.grad.norm(), g / g.norm())
        else:  # small: untouched, whatever the others' norms
            assert torch.equal(p.grad, g)


def test_linear_start_ends_when_the_validation_loss_stops_falling(tmp_path):
    task = zoo.create("memn2n_tiny", vocab_size=30, linear_start=True, linear_start_lr=0.005, lr=0.01,
                      lr_schedule="step", lr_step_epochs=15, optimizer="sgd")
    assert task.linear is None  # a loaded or fresh model answers with its softmaxes
    task.setup("fit")
    assert task.linear is True and task.step_lr_factor(0) == 0.5  # 0.005 of 0.01
    task._end_linear_start(2.0)
    task._end_linear_start(1.5)
    assert task.linear
    task._end_linear_start(1.6)  # no better: softmax back, the schedule starts over
    assert task.linear is False and task.schedule_start == 1
    assert task.step_lr_factor(1) == 1.0 and task.step_lr_factor(15) == 1.0 and task.step_lr_factor(16) == 0.5
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    again = zoo.create("memn2n_tiny", vocab_size=30, linear_start=True)
    again.on_load_checkpoint(checkpoint)
    again.setup("fit")  # a resumed run keeps what it had reached
    assert again.linear is False and again.schedule_start == 1


def test_linear_start_without_patience_lasts_its_epochs():
    with pytest.raises(ValueError, match="linear_start_max_epochs"):
        zoo.create("memn2n_tiny", vocab_size=30, linear_start=True, linear_start_patience=None)
    task = zoo.create("memn2n_tiny", vocab_size=30, linear_start=True, linear_start_patience=None,
                      linear_start_max_epochs=2)
    task.setup("fit")
    for loss in (2.0, 2.5, 3.0):  # worse and worse within the first epoch: the validation loss does not end it
        task._end_linear_start(loss)
    assert task.linear
    with mock.patch.object(type(task), "current_epoch", new_callable=mock.PropertyMock, return_value=1):
        task._end_linear_start(1.0)
    assert task.linear is False and task.schedule_start == 2


# -- answering ---------------------------------------------------------------------------------
STORY = ["Mary moved to the bathroom.", "John went to the hallway.", "Daniel went back to the office.",
         "Mary travelled to the garden."]


def tiny_reader():
    tok = babi_tokenizer(STORY + ["Where is Mary?"], ["garden"])
    torch.manual_seed(0)
    model = zoo.create("memn2n_tiny", vocab_size=tok.vocab_size, memory_size=3)
    model.tokenizers = (tok, tok)
    return model.eval()


def test_answer_reads_the_most_recent_sentences():
    model = tiny_reader()
    word = model.answer(STORY, "Where is Mary?")
    assert isinstance(word, str) and word in model.tokenizers[1].tok.get_vocab()
    item = model.answer(STORY, "Where is Mary?", return_attention=True)
    assert item.text == word and item.sentences == STORY[1:] and item.dropped == 1  # 3 slots
    assert item.attention.shape == (2, 3)
    torch.testing.assert_close(item.attention.sum(-1), torch.ones(2))
    with pytest.raises(TypeError, match="list of sentences"):
        model.answer("Mary moved to the bathroom.", "Where is Mary?")
    with pytest.raises(ValueError, match="story is empty"):
        model.answer([], "Where is Mary?")


def test_words_never_seen_in_training_read_as_unknown_and_are_named_once(mini_babi, caplog, tmp_path):
    model = tiny_reader()
    story = ["Mary moved to the zorbatorium.", "John went to the hallway."]
    with caplog.at_level(logging.WARNING, logger="zoo"):
        model.answer(story, "Where is Mary?")
        model.answer(story, "Where is Mary?")
        model.answer(story, "Where is Blick?")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("zoo")]
    assert len(said) == 2 and "(zorbatorium)" in said[0] and "(blick)" in said[1], said
    tok = model.tokenizers[1]
    assert tok.encode("the zorbatorium")[1] == tok.unk_id

    root = tmp_path / "tasks_1-20_v1-2"
    shutil.copytree(mini_babi, root)
    (root / "en" / task_file(1, "test")).write_text("1 Mary flew to the Moon.\n2 Where is Mary?\tmoon\t1\n")
    data = BabiDataModule(data_dir=str(root), task=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo"):
        data.setup("test")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("zoo")]
    assert len(said) == 1 and "the test stories, questions and answers hold 2 words" in said[0]
    assert "(flew, moon)" in said[0]


def test_a_qa_model_round_trips_through_the_hub(tmp_path):
    model = tiny_reader()
    model.save_pretrained(tmp_path / "m")
    back = zoo.load(str(tmp_path / "m"))
    assert back.answer(STORY, "Where is Mary?") == model.answer(STORY, "Where is Mary?")
    assert back.linear is None


def run_zoo(*args):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})


def test_zoo_answer_errors_are_one_line(tmp_path):
    model = tiny_reader()
    model.save_pretrained(tmp_path / "m")
    story = tmp_path / "story.txt"
    story.write_text("\n".join(STORY) + "\n", encoding="utf-8")
    out = run_zoo("answer", str(tmp_path / "m"), "--story", str(story), "Where is Mary?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == model.answer(STORY, "Where is Mary?")
    missing = run_zoo("answer", str(tmp_path / "m"), "--story", str(tmp_path / "none.txt"), "Where is Mary?")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "none.txt does not exist" in missing.stderr
    other = run_zoo("answer", "ngram.multi30k_en", "--story", str(story), "Where is Mary?")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "is a text language model; zoo answer needs a question-answering model" in other.stderr
    drawn = run_zoo("attention", str(tmp_path / "m"), "Where is Mary?", "--story", str(story), "--support", "4",
                    "--out", str(tmp_path / "a.png"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    bad = run_zoo("attention", str(tmp_path / "m"), "Where is Mary?", "--story", str(story), "--support", "9")
    assert bad.returncode == 2 and "--support 9 is not a sentence of the story" in bad.stderr


def test_memory_attention_figure_has_a_panel_per_hop():
    from zoo.viz import memory_attention_figure

    fig = memory_attention_figure(torch.rand(3, 4), STORY, support=[3], title="Where is Mary? garden")
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[3].endswith("*") and labels[0].startswith("1. Mary")


# -- training ---------------------------------------------------------------------------------
def test_the_recipe_fits_at_a_tiny_size(mini_babi, tmp_path, monkeypatch):
    """configs/memn2n.babi.yaml through zoo fit, on CPU, two epochs of a tiny network with linear start."""
    from zoo.cli import run

    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--config", str(RECIPE), "--model.init_args.arch", "memn2n_tiny",
               "--data.init_args.data_dir", str(mini_babi), "--data.init_args.batch_size", "16",
               "--trainer.max_epochs", "2", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
               "--trainer.logger.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path / "run")])
    metrics = cli.trainer.callback_metrics
    assert {f"val/error/task_{t}" for t in ALL_TASKS} <= set(metrics)
    assert math.isfinite(float(metrics["val/loss"]))
    model = zoo.load(os.path.join(cli.trainer.log_dir, "pretrained"))
    assert model.task_name == "qa" and isinstance(model.answer(STORY, "Where is Mary?"), str)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert math.isfinite(float(cli.trainer.callback_metrics["test/error"]))


# -- the published checkpoint ------------------------------------------------------------------
def test_memn2n_babi_answers_the_first_question_of_bAbI():
    if "memn2n.babi" not in zoo.list_models(pretrained=True):
        pytest.skip("memn2n.babi is not published yet")
    model = zoo.load("memn2n.babi")
    item = model.answer(["Mary moved to the bathroom.", "John went to the hallway."], "Where is Mary?",
                        return_attention=True)
    assert item.text == "bathroom"
    assert item.attention[0].argmax() == 0  # the first hop finds Mary's move


# -- the language model of section 5 -----------------------------------------------------------
def test_the_language_model_is_causal_and_reads_a_stream_in_chunks():
    from zoo.models.memory_network import memn2n_lm

    torch.manual_seed(0)
    net = memn2n_lm(vocab_size=40, dim=12, hops=3, memory_size=5, relu_units=6)
    tokens = torch.randint(1, 40, (2, 9))
    logits, history = net(tokens)
    assert logits.shape == (2, 9, 40) and history.tolist() == tokens[:, -4:].tolist()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 39 + 1
    torch.testing.assert_close(net(changed)[0][:, :6], logits[:, :6])  # no output sees a later word
    assert not torch.allclose(net(changed)[0][:, 6], logits[:, 6])
    first, carried = net(tokens[:, :4])
    torch.testing.assert_close(net(tokens[:, 4:], carried)[0], logits[:, 4:])  # chunks of a stream = the whole
    lm = zoo.create("memn2n_lm", vocab_size=40, dim=12, hops=2, memory_size=5, relu_units=6)
    assert lm.task_name == "lm" and torch.isfinite(lm.net.score(tokens, tokens.roll(-1, 1))).all()


def _windowed_lm_reference(net, tokens, history):
    """Section 5 as written: each position embeds its own window of N words, slot 0 the word itself."""
    c = net.config
    seq = torch.cat([history, tokens], 1)
    windows = seq.unfold(1, c.memory_size, 1).flip(-1)  # (B, T, N)
    m, cm = net.A(windows) + net.T_A, net.C(windows) + net.T_C  # (B, T, N, d)
    pad = windows.eq(c.pad_id)
    pad[..., 0] = False
    u = torch.full(tokens.shape + (c.dim,), c.query)
    for _ in range(c.hops):
        p = torch.einsum("btd,btnd->btn", u, m).masked_fill(pad, float("-inf")).softmax(-1)
        u = net.H(u) + torch.einsum("btn,btnd->btd", p, cm)
        u = torch.cat([torch.relu(u[..., : c.relu_units]), u[..., c.relu_units :]], -1)
    return torch.nn.functional.linear(u, net.output_weight())


def test_the_language_model_reads_the_same_band_as_a_window_per_position():
    from zoo.models.memory_network import memn2n_lm

    torch.manual_seed(0)
    net = memn2n_lm(vocab_size=30, dim=10, hops=3, memory_size=6, relu_units=5)
    tokens = torch.randint(1, 30, (3, 8))
    history = torch.randint(1, 30, (3, 5))
    history[0, :3] = 0  # the start of a stream: padding, never read
    logits, carried = net(tokens, history)
    expected = _windowed_lm_reference(net, tokens, history)
    torch.testing.assert_close(logits, expected)
    assert carried.tolist() == tokens[:, -5:].tolist()
    grads = torch.autograd.grad(logits.square().sum(), [net.A.weight, net.T_C, net.H.weight])
    ref = torch.autograd.grad(expected.square().sum(), [net.A.weight, net.T_C, net.H.weight])
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r)
    short, _ = net(tokens, history[:, 3:])  # a short history is padded on the left
    torch.testing.assert_close(short, net(tokens, torch.cat([torch.zeros_like(history[:, :3]), history[:, 3:]], 1))[0])


def test_the_language_models_tied_output_layer_is_the_output_memorys_embedding():
    from zoo.models.memory_network import memn2n_lm

    torch.manual_seed(0)
    kw = dict(vocab_size=30, dim=10, hops=2, memory_size=4, relu_units=5)
    net, tied = memn2n_lm(**kw), memn2n_lm(**kw, tie_output=True)
    assert tied.out is None and tied.output_weight() is tied.C.weight
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in tied.parameters()) == 30 * 10
    tokens, history = torch.randint(1, 30, (2, 6)), torch.randint(1, 30, (2, 3))
    logits = tied(tokens, history)[0]
    assert logits[..., 0].eq(float("-inf")).all()  # padding is never predicted
    torch.testing.assert_close(logits[..., 1:], _windowed_lm_reference(tied, tokens, history)[..., 1:])
    before = tied.C.weight.detach().clone()
    opt = torch.optim.SGD(tied.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(tied(tokens)[0].flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    opt.step()
    assert not torch.equal(tied.C.weight, before)  # one matrix, trained by both of its uses
    assert tied.output_weight() is tied.C.weight and tied.C.weight[0].eq(0).all()  # padding stays zero


def test_the_language_model_drops_units_only_in_training():
    from zoo.models.memory_network import memn2n_lm

    torch.manual_seed(0)
    net = memn2n_lm(vocab_size=30, dim=10, hops=2, memory_size=4, relu_units=5, dropout=0.5)
    tokens = torch.randint(1, 30, (2, 6))
    net.train()
    assert not torch.allclose(net(tokens)[0], net(tokens)[0])
    net.eval()
    torch.testing.assert_close(net(tokens)[0], net(tokens)[0])
    with pytest.raises(ValueError, match=r"dropout is a probability in \[0, 1\), got 1.0"):
        memn2n_lm(vocab_size=30, dropout=1.0)
