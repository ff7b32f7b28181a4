"""Recurrent encoder-decoders: causality, step-by-step decoding, attention, the paper's tricks."""

import pytest
import torch

import zoo
from zoo.models.rnn_seq2seq import reverse_padded
from zoo.nn.decoding import beam_search, greedy_search
from zoo.registry import build_network

IDS = dict(bos_id=2, eos_id=3, pad_id=0)
VARIANTS = {
    "lstm": ("seq2seq_lstm", {}),
    "lstm-bi-gru": ("seq2seq_lstm", {"bidirectional": True, "cell": "gru", "reverse_source": False}),
    "bahdanau": ("seq2seq_bahdanau", {}),
    "bahdanau-reversed": ("seq2seq_bahdanau", {"reverse_source": True}),
    "luong-general": ("seq2seq_luong", {}),
    "luong-bi": ("seq2seq_luong", {"bidirectional": True}),
    "luong-dot": ("seq2seq_luong", {"attention": "dot", "bidirectional": False}),
    "luong-concat-no-feed": ("seq2seq_luong", {"attention": "concat", "input_feeding": False}),
    "luong-scaled": ("seq2seq_luong", {"attention": "scaled_dot", "bidirectional": False, "cell": "rnn"}),
    "luong-tied": ("seq2seq_luong", {"share_embeddings": True, "tie_output": True}),
}


def tiny(name, seed=0, **kw):
    torch.manual_seed(seed)
    return build_network(name, src_vocab_size=40, tgt_vocab_size=40, emb_dim=12, hidden_dim=16, attn_dim=8,
                         dropout=0.0, **kw).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (3, 7), generator=g)
    src[1, 4:] = 0
    return src, torch.randint(4, 40, (3, 6), generator=g)


def test_reverse_padded_keeps_padding_in_place():
    x = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    assert reverse_padded(x, 0).tolist() == [[7, 6, 5, 0], [9, 8, 0, 0]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_finite(variant):
    name, kw = VARIANTS[variant]
    net = tiny(name, **kw).train()
    src, tgt = batch()
    logits = net(src, tgt)
    assert logits.shape == (3, 6, 40)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_is_causal_and_steps_equal_full(variant):
    name, kw = VARIANTS[variant]
    net = tiny(name, seed=1, **kw)
    src, tgt = batch(1)
    full = net(src, tgt)
    changed = tgt.clone()
    changed[:, 3] = 5
    assert torch.equal(net(src, changed)[:, :3], full[:, :3])
    enc = net.encode(src)
    state = net.init_state(enc)
    steps = torch.stack([net.decode_step(tgt[:, i : i + 1], enc, state) for i in range(6)], 1)
    assert (steps - full).abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["lstm", "bahdanau", "luong-general"])
def test_source_padding_is_ignored(variant):
    name, kw = VARIANTS[variant]
    net = tiny(name, seed=2, **kw)
    src, tgt = batch(2)
    longer = torch.cat([src, torch.zeros(3, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(net(src, tgt), net(longer, tgt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_search_never_below_greedy(variant):
    name, kw = VARIANTS[variant]
    net = tiny(name, seed=3, **kw)
    src, _ = batch(3)
    _, g = greedy_search(net, src, max_len=8, **IDS)
    _, b = beam_search(net, src, max_len=8, beam_size=3, alpha=0.0, **IDS)
    assert (b >= g - 1e-4).all()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.startswith("lstm")])
def test_attention_maps_are_distributions_over_real_source(variant):
    name, kw = VARIANTS[variant]
    net = tiny(name, seed=4, **kw)
    src, tgt = batch(4)
    (w,) = net.attention_maps(src, tgt).values()
    assert w.shape == (3, 1, 6, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 1, 6))
    assert w[1, ..., 4:].abs().max() == 0


def test_reversed_source_attention_is_shown_in_source_order():
    """With the source reversed, the weights are mapped back so token i of the picture is token i of the input."""
    torch.manual_seed(0)
    plain = tiny("seq2seq_bahdanau", seed=5)
    rev = tiny("seq2seq_bahdanau", seed=5, reverse_source=True)
    src, tgt = batch(5)
    # the reversed model fed the reversed source sees exactly what the plain model sees
    w_plain = plain.attention_maps(src, tgt)["bahdanau (additive)"]
    w_rev = rev.attention_maps(reverse_padded(src, 0), tgt)["bahdanau (additive)"]
    torch.testing.assert_close(w_rev, reverse_padded_weights_ref(w_plain, src.eq(0)))


def reverse_padded_weights_ref(w, pad):
    out = w.clone()
    for i in range(w.size(0)):
        n = int((~pad[i]).sum())
        out[i, ..., :n] = w[i, ..., :n].flip(-1)
    return out


def test_heatmap_request_for_a_model_without_attention(tokenizer):
    model = zoo.create("seq2seq_lstm", src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, hidden_dim=16)
    model.tokenizers = (tokenizer, tokenizer)
    with pytest.raises(ValueError, match="seq2seq_lstm has no attention over the source to show"):
        model.translate(["Ein Mann."], return_attention=True)


def test_unknown_cell_and_decoder():
    with pytest.raises(ValueError, match="unknown cell 'lstn'; choose one of lstm, gru, rnn"):
        build_network("seq2seq_lstm", cell="lstn")
    with pytest.raises(ValueError, match="unknown decoder 'graves'; choose one of sutskever, bahdanau, luong"):
        build_network("seq2seq_lstm", decoder="graves")


def test_tied_and_shared_embeddings():
    net = tiny("seq2seq_luong", share_embeddings=True, tie_output=True)
    assert net.tgt_embed is net.encoder.embed and net.out_proj.weight is net.tgt_embed.weight
    with pytest.raises(ValueError, match="share_embeddings needs src_vocab_size == tgt_vocab_size"):
        build_network("seq2seq_luong", src_vocab_size=10, tgt_vocab_size=12, share_embeddings=True)


def test_forget_gate_bias_option():
    net = tiny("seq2seq_luong", forget_bias=1.0)
    for rnn in (net.encoder.rnn, net.decoder.rnn):
        h = rnn.hidden_size
        for layer in range(rnn.num_layers):
            total = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
            assert torch.equal(total[h : 2 * h], torch.ones(h))  # gates: input, forget, cell, output
            assert total[:h].abs().max() <= 0.16  # the others keep the uniform initialisation
