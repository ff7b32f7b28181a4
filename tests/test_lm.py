"""Language models: n-gram smoothing, RNN LMs with truncated BPTT, one perplexity for all."""

import math

import pytest
import torch

import zoo
from zoo.models.ngram import NGramConfig, NGramLM
from zoo.nn.decoding import filter_logits
from zoo.registry import build_network


def toy_corpus(seed=0, n=60, v=15):
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(4, v, (n, 7), generator=g)
    tokens = torch.cat([torch.full((n, 1), 2), body], 1)
    targets = torch.cat([body, torch.full((n, 1), 3)], 1)
    tokens[:10, 6:] = 0  # some shorter sentences
    targets[:10, 5:] = 0
    targets[:10, 5] = 3
    return tokens, targets


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ngram_probabilities_sum_to_one_and_are_never_zero(order):
    lm = NGramLM(NGramConfig(vocab_size=15, order=order))
    tokens, targets = toy_corpus()
    lm.observe(tokens, targets)
    contexts = torch.tensor([[2, 5, 6, 7], [2, 14, 14, 14], [2, 2, 2, 2]])  # seen, unseen, start
    probs = lm(contexts).exp()  # (3, 4, V)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4))
    assert probs.min() > 0  # smoothing: no token is impossible, seen or not


def test_ngram_kneser_ney_by_hand():
    """A bigram model on a corpus small enough to work out on paper."""
    lm = NGramLM(NGramConfig(vocab_size=8, order=2))
    # sentences: <s> 4 5 </s>, <s> 4 6 </s>, <s> 5 5 </s>
    tokens = torch.tensor([[2, 4, 5], [2, 4, 6], [2, 5, 5]])
    targets = torch.tensor([[4, 5, 3], [4, 6, 3], [5, 5, 3]])
    lm.observe(tokens, targets)
    # bigram counts: (2,4)=2 (2,5)=1 (4,5)=1 (4,6)=1 (5,3)=2 (6,3)=1 (5,5)=1 -> n1=5, n2=2, D2=5/9
    d2 = 5 / 9
    # continuation counts N1+(. w): 4:{2}=1, 5:{2,4,5}=3, 6:{4}=1, 3:{5,6}=2 -> total 7, n1=2, n2=1, D1=0.5
    d1 = 0.5
    p1 = {w: max(c - d1, 0) / 7 + d1 * 4 / 7 / 8 for w, c in {4: 1, 5: 3, 6: 1, 3: 2, 7: 0}.items()}
    # P(5 | 4): c(4 5)=1, c(4 .)=2, N1+(4 .)=2
    expected = (1 - d2) / 2 + d2 * 2 / 2 * p1[5]
    got = lm.log_prob(torch.tensor([[4]]), torch.tensor([5])).exp().item()
    assert math.isclose(got, expected, rel_tol=1e-5)
    # an unseen context backs off to the continuation unigram; an unseen token still gets mass
    assert math.isclose(lm.log_prob(torch.tensor([[7]]), torch.tensor([7])).exp().item(), p1[7], rel_tol=1e-5)
    assert p1[7] > 0


def test_ngram_order_must_be_positive():
    with pytest.raises(ValueError, match="n-gram order must be 1 or more, got 0"):
        build_network("ngram", order=0)
    with pytest.raises(ValueError, match="does not fit a 64-bit key"):
        build_network("ngram", order=6, vocab_size=8000)


def test_ngram_round_trip_resizes_count_tables(tmp_path, tokenizer):
    model = zoo.create("ngram", vocab_size=tokenizer.vocab_size, order=3)
    model.tokenizers = (tokenizer, tokenizer)
    tokens, targets = toy_corpus(v=tokenizer.vocab_size)
    model.net.observe(tokens, targets)
    model.save_pretrained(tmp_path)
    loaded = zoo.load(str(tmp_path))
    assert torch.equal(loaded.net.score(tokens, targets), model.net.score(tokens, targets))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rnn_lm_causal_and_stepwise(cell):
    torch.manual_seed(0)
    net = build_network("rnn_lm", vocab_size=30, emb_dim=8, hidden_dim=12, layers=2, cell=cell, dropout=0.0).eval()
    x = torch.randint(4, 30, (2, 9))
    logits, _ = net(x)
    changed = x.clone()
    changed[:, 5] = 7
    assert torch.equal(net(changed)[0][:, :5], logits[:, :5])
    state = net.init_state(2)
    steps = torch.stack([net.step(x[:, i : i + 1], state) for i in range(9)], 1)
    torch.testing.assert_close(steps, logits, atol=1e-5, rtol=1e-5)
    # carrying the state across chunks equals reading the whole stream (truncated BPTT's forward)
    first, s = net(x[:, :4])
    second, _ = net(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=1e-5, rtol=1e-5)
    assert net.out.weight is net.embed.weight  # tied


def test_filter_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.64 < 0.7 <= 0.88
    with pytest.raises(ValueError, match="temperature must be > 0"):
        filter_logits(logits, temperature=0)


def lm_data(tmp_path, mode):
    from zoo.data.text import TextLMDataModule

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["a man rides a bike", "a woman reads a book", "two dogs play in the snow",
                               "a child eats an apple"] * 15) + "\n", encoding="utf-8")
    return TextLMDataModule(dataset="files", train_files=[str(text)], val_files=[str(text)], test_files=[str(text)],
                            vocab_size=60, mode=mode, batch_size=4, bptt=8, max_tokens=256)


def test_stream_batches_follow_each_other(tmp_path):
    dm = lm_data(tmp_path, "stream")
    batches = list(dm.train_dataloader())
    assert batches[0]["reset"] and not batches[1]["reset"]
    first, second = batches[0], batches[1]
    real = first["targets"][:, :-1] != 0  # each target is the next input (where it is predicted at all)
    assert torch.equal(first["targets"][:, :-1][real], first["tokens"][:, 1:][real])
    carried = first["targets"][:, -1]  # the next chunk goes on where this one stopped
    assert torch.equal(second["tokens"][:, 0][carried != 0], carried[carried != 0])
    assert not (batches[0]["targets"] == 2).any()  # <s> is given, never predicted


@pytest.mark.parametrize("arch,mode,extra", [("rnn_lm", "stream", {}), ("rnn_lm", "sentences", {}),
                                              ("ngram", "sentences", {"order": 3})])
def test_fit_through_the_trainer_and_perplexity(tmp_path, arch, mode, extra):
    import lightning as L

    dm = lm_data(tmp_path, mode)
    small = {"emb_dim": 16, "hidden_dim": 16, "layers": 1, "dropout": 0.0} if arch == "rnn_lm" else {}
    model = zoo.create(arch, vocab_size=dm.vocab_size, lr=1e-2, arch_args={**small, **extra})
    before = None
    if arch == "rnn_lm":
        model.tokenizers = dm.tokenizers
        before = model.perplexity(dm.texts("test"))
    trainer = L.Trainer(max_epochs=1 if arch == "ngram" else 8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    ppl = model.perplexity(dm.texts("test"))
    metrics = trainer.validate(model, dm, verbose=False)[0]
    assert math.isclose(metrics["val/ppl"], ppl, rel_tol=1e-3)  # one definition of perplexity
    assert ppl < (before or dm.vocab_size) / 2
    text = model.sample(["a man"], max_len=6, seed=0, top_k=5)[0]
    assert text.startswith("a man")


def test_count_based_model_refuses_a_second_epoch(tmp_path):
    import lightning as L

    dm = lm_data(tmp_path, "sentences")
    model = zoo.create("ngram", vocab_size=dm.vocab_size)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="must see the training data once: set trainer.max_epochs=1"):
        trainer.fit(model, dm)


def test_step_schedule_holds_lr_then_cuts_every_period():
    """Zaremba et al. 2014's medium recipe: 6 epochs at lr 1, then x 1/1.2 every epoch (the rnn_lm.ptb recipe)."""
    task = zoo.create("rnn_lm", vocab_size=50, emb_dim=8, hidden_dim=8, optimizer="sgd", lr=1.0,
                      lr_schedule="step", lr_step_start=6, lr_step_epochs=1, lr_step_factor=1 / 1.2)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0] * 6 + [1 / 1.2, 1 / 1.2**2, 1 / 1.2**3])
    # without lr_step_start the first cut comes after one period, as before
    plain = zoo.create("rnn_lm", vocab_size=50, emb_dim=8, hidden_dim=8, lr_schedule="step", lr_step_epochs=25)
    assert [plain.step_lr_factor(e) for e in (0, 24, 25, 49, 50)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="lr_step_start of 0 or more"):
        zoo.create("rnn_lm", vocab_size=50, lr_schedule="step", lr_step_start=-1).configure_optimizers()
