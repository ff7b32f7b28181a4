"""The Transformer: causality, cached decoding, beam search, translation API."""

import pytest
import torch

from zoo.nn.decoding import beam_search, greedy_search
from zoo.registry import build_network

IDS = dict(bos_id=2, eos_id=3, pad_id=0)


def tiny(pre_norm=False, seed=0):
    torch.manual_seed(seed)
    return build_network("transformer_tiny", src_vocab_size=60, tgt_vocab_size=60, dropout=0.0, pre_norm=pre_norm).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 60, (3, 9), generator=g)
    src[1, 6:] = 0  # padding
    tgt = torch.randint(4, 60, (3, 8), generator=g)
    return src, tgt


@pytest.mark.parametrize("pre_norm", [False, True])
def test_changing_a_later_target_token_changes_no_earlier_output(pre_norm):
    net = tiny(pre_norm)
    src, tgt = batch()
    out = net(src, tgt)
    for pos in (0, 3, 7):
        changed = tgt.clone()
        changed[:, pos] = (changed[:, pos] + 1) % 56 + 4
        out2 = net(src, changed)
        assert torch.equal(out[:, :pos], out2[:, :pos]), f"position {pos} leaked backwards"
        assert not torch.allclose(out[:, pos:], out2[:, pos:])


def test_source_padding_is_ignored():
    net = tiny()
    src, tgt = batch()
    longer = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(net(src, tgt), net(longer, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cached_decoding_equals_full_forward(pre_norm):
    net = tiny(pre_norm, seed=1)
    src, tgt = batch(1)
    full = net(src, tgt)  # (B, T, V)
    enc = net.encode(src)
    state = net.init_state(enc)
    steps = torch.stack([net.decode_step(tgt[:, i : i + 1], enc, state) for i in range(tgt.size(1))], 1)
    assert (steps - full).abs().max().item() <= 1e-4


def sequence_logprob(net, src, out):
    """Summed log-probability of generated tokens ``out`` (B, L), padding after EOS excluded."""
    tgt_in = torch.cat([torch.full((out.size(0), 1), 2), out[:, :-1]], 1)
    logp = net(src, tgt_in).log_softmax(-1).gather(-1, out[..., None]).squeeze(-1)
    return (logp * out.ne(0)).sum(-1)


@pytest.mark.parametrize("seed", range(5))
def test_beam_never_scores_below_greedy(seed):
    net = tiny(seed=seed)
    src, _ = batch(seed)
    g, g_score = greedy_search(net, src, max_len=12, **IDS)
    b, b_score = beam_search(net, src, max_len=12, beam_size=4, alpha=0.0, **IDS)
    assert (b_score >= g_score - 1e-4).all()
    # the scores the search reports are the model's own log-probabilities of its output
    torch.testing.assert_close(g_score, sequence_logprob(net, src, g), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b_score, sequence_logprob(net, src, b), atol=1e-4, rtol=1e-4)


def test_beam_size_one_is_greedy():
    net = tiny(seed=3)
    src, _ = batch(3)
    g, _ = greedy_search(net, src, max_len=10, **IDS)
    b, _ = beam_search(net, src, max_len=10, beam_size=1, alpha=0.0, **IDS)
    assert torch.equal(g, b)


def test_outputs_end_with_eos_then_padding():
    net = tiny(seed=4)
    src, _ = batch(4)
    for out, _ in (greedy_search(net, src, max_len=6, **IDS), beam_search(net, src, max_len=6, **IDS)):
        for row in out.tolist():
            assert 3 in row, "every hypothesis ends (forced at max_len)"
            end = row.index(3)
            assert all(t == 0 for t in row[end + 1 :])
            assert 0 not in row[:end] and 2 not in row[:end]


def test_translate_returns_one_string_per_sentence(tiny_model):
    out = tiny_model.translate(["Ein Mann fährt Fahrrad.", "Zwei Hunde.", "Ein Kind isst einen Apfel."], beam_size=2, max_len=8)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    greedy = tiny_model.translate(["Zwei Hunde."], beam_size=1, max_len=8)
    assert greedy == tiny_model.translate(["Zwei Hunde."], beam_size=1, max_len=8)  # deterministic


def test_translate_keeps_order_when_batching(tiny_model):
    sents = ["Ein Mann fährt Fahrrad.", "Hund.", "Drei Männer stehen vor einem Haus.", "Ein Kind."]
    together = tiny_model.translate(sents, beam_size=1, max_len=8, batch_size=2)
    alone = [tiny_model.translate([s], beam_size=1, max_len=8)[0] for s in sents]
    assert together == alone
