"""ConvS2S: the block arithmetic, causality, cached decoding, weight norm and the paper's recipe."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.models.convs2s import ConvGLU, ConvS2S, scale_grad
from zoo.nn.decoding import beam_search, greedy_search
from zoo.registry import build_network

IDS = dict(bos_id=2, eos_id=3, pad_id=0)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"emb_dim": 16, "hidden_dim": 12, "encoder_layers": 2, "decoder_layers": 3, "dropout": 0.0, **kw}
    return build_network("convs2s_tiny", src_vocab_size=40, tgt_vocab_size=40, **kw).eval()


def batch(seed=0, t=9):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (3, 7), generator=g)
    src[1, 4:] = 0
    return src, torch.randint(4, 40, (3, t), generator=g)


def test_glu_residual_and_scale_on_a_hand_checked_example():
    block = ConvGLU(channels=1, kernel_size=3, dropout=0.0, causal=True)
    with torch.no_grad():  # conv(x)_t = [x_{t-2} + x_{t-1} + x_t, x_t] before the GLU
        block.conv.parametrizations.weight.original1.copy_(torch.tensor([[[1.0, 1.0, 1.0]], [[0.0, 0.0, 1.0]]]))
        block.conv.parametrizations.weight.original0.copy_(torch.tensor([[[math.sqrt(3.0)]], [[1.0]]]))
        block.conv.bias.zero_()
    x = torch.tensor([[[1.0, 2.0, 0.0]]])  # (B=1, C=1, T=3)
    sig = torch.sigmoid
    expected = [
        (1 * sig(torch.tensor(1.0)) + 1) * math.sqrt(0.5),  # window [0, 0, 1]
        (3 * sig(torch.tensor(2.0)) + 2) * math.sqrt(0.5),  # window [0, 1, 2]
        (3 * sig(torch.tensor(0.0)) + 0) * math.sqrt(0.5),  # window [1, 2, 0]
    ]
    torch.testing.assert_close(block(x)[0, 0], torch.stack(expected))


def test_encoder_blocks_see_both_sides_and_decoder_blocks_only_the_past():
    enc = ConvGLU(8, kernel_size=3, dropout=0.0, causal=False)
    dec = ConvGLU(8, kernel_size=3, dropout=0.0, causal=True)
    x = torch.randn(1, 8, 6)
    later = x.clone()
    later[:, :, 4] += 1.0
    assert torch.equal(dec(x)[:, :, :4], dec(later)[:, :, :4])
    assert not torch.equal(enc(x)[:, :, 3], enc(later)[:, :, 3])  # position 3 sees 4 in the encoder
    assert torch.equal(enc(x)[:, :, :3], enc(later)[:, :, :3])


def test_forward_backward_finite():
    net = tiny().train()
    src, tgt = batch()
    logits = net(src, tgt)
    assert logits.shape == (3, 9, 40)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_decoder_is_causal():
    net = tiny(seed=1)
    src, tgt = batch(1)
    changed = tgt.clone()
    changed[:, 5] = 7
    torch.testing.assert_close(net(src, changed)[:, :5], net(src, tgt)[:, :5], atol=0, rtol=0)


@pytest.mark.parametrize("kernel", [2, 3, 5])
def test_cached_decoding_equals_full_forward(kernel):
    net = tiny(seed=2, kernel_size=kernel, decoder_layers=4)
    src, tgt = batch(2, t=12)
    full = net(src, tgt)
    enc = net.encode(src)
    state = net.init_state(enc)
    steps = torch.stack([net.decode_step(tgt[:, i : i + 1], enc, state) for i in range(12)], 1)
    assert (steps - full).abs().max() <= 1e-4
    assert all(w.shape == (3, 12, kernel - 1) for w in state["windows"])  # O(1) state per layer


def test_source_padding_is_ignored():
    net = tiny(seed=3)
    src, tgt = batch(3)
    longer = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(net(src, tgt), net(longer, tgt), atol=1e-5, rtol=1e-5)
    weights = net.attention_maps(longer, tgt)
    assert len(weights) == 3 and all(w.shape == (3, 1, 9, 11) for w in weights.values())
    w = weights["layer 1"]
    assert w[1, :, :, 4:].abs().max() == 0  # padding gets no attention
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 1, 9))


def test_weight_norm_on_every_layer_but_the_embeddings():
    net = tiny(tie_output=False)
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert len(layers) == 2 + 2 * 2 + 3 * 3 + 1  # in/out projections, 2 encoder blocks, 3 x (conv, attn in, out), softmax
    assert all(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in layers)
    embeddings = [m for m in net.modules() if isinstance(m, nn.Embedding)]
    assert embeddings and not any(hasattr(m, "parametrizations") for m in embeddings)
    tied = tiny(share_embeddings=True, tie_output=True)
    assert tied.out_proj.weight is tied.tgt_embed.weight  # a tied output layer shares the embedding as it is


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    net = build_network("convs2s_tiny", src_vocab_size=2000, tgt_vocab_size=2000, emb_dim=256, hidden_dim=256,
                        encoder_layers=1, decoder_layers=1, dropout=0.2)
    std = lambda m: m.parametrizations.weight.original1.std().item()  # noqa: E731  (direction before normalising)
    assert net.encoder.embed.weight[1:].std().item() == pytest.approx(0.1, rel=0.05)
    conv = net.encoder.blocks[0].conv  # feeds a GLU, input dropped out: sqrt(4 p / n), n = k * d
    assert std(conv) == pytest.approx(math.sqrt(4 * 0.8 / (3 * 256)), rel=0.05)
    assert std(net.proj_in) == pytest.approx(math.sqrt(0.8 / 256), rel=0.05)
    assert std(net.layers[0].attn_in) == pytest.approx(math.sqrt(1 / 256), rel=0.05)
    # weight norm starts from the initial weights: g = |v|
    g = conv.parametrizations.weight.original0
    torch.testing.assert_close(g.flatten(), conv.parametrizations.weight.original1.flatten(1).norm(dim=1))


def test_encoder_gradients_are_scaled_by_the_number_of_attention_layers():
    x = torch.ones(3, requires_grad=True)
    scale_grad(x, 0.25).sum().backward()
    assert x.grad.tolist() == [0.25] * 3
    net = tiny(decoder_layers=3)
    assert net.encoder.grad_scale == pytest.approx(1 / 6)


def test_conditional_input_scaled_by_sqrt_of_source_length():
    net = tiny(seed=4)
    src, _ = batch(4)
    enc = net.encode(src)
    torch.testing.assert_close(enc["length_scale"].flatten(), torch.tensor([7.0, 4.0, 7.0]).sqrt())
    torch.testing.assert_close(enc["values"] - enc["keys"], F.dropout(net.encoder.embed(src) + net.encoder.positions(torch.arange(7)), 0.0))


def test_greedy_and_beam_search_through_the_shared_decoding():
    net = tiny(seed=5)
    src, _ = batch(5)
    greedy, g_score = greedy_search(net, src, max_len=10, **IDS)
    beam, b_score = beam_search(net, src, max_len=10, beam_size=4, alpha=0.0, **IDS)
    assert greedy.shape[0] == beam.shape[0] == 3
    assert (b_score >= g_score - 1e-4).all()
    one, _ = greedy_search(net, src[1:2, :4], max_len=10, **IDS)  # alone and unpadded: same output
    assert one[0].tolist() == greedy[1, : one.size(1)].tolist()


def test_optimizer_choices_and_a_few_training_steps(tokenizer):
    import lightning as L

    from zoo.tasks.translation import TranslationTask

    v = tokenizer.vocab_size
    task = TranslationTask(arch="convs2s_tiny", src_vocab_size=v, tgt_vocab_size=v, optimizer="nag", lr=0.25,
                           momentum=0.99, lr_plateau_factor=0.1)
    conf = task.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD) and conf["optimizer"].defaults["nesterov"]
    assert conf["lr_scheduler"]["monitor"] == "val/loss"
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; choose one of adamw, nag, sgd"):
        TranslationTask(arch="convs2s_tiny", src_vocab_size=v, tgt_vocab_size=v, optimizer="adam").configure_optimizers()

    src = torch.tensor([tokenizer.encode("Ein Mann fährt Fahrrad.") + [3]] * 4)
    tgt = torch.tensor([[2] + tokenizer.encode("A man rides a bike.") + [3]] * 4)
    data = [{"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}] * 30
    task = TranslationTask(arch="convs2s_tiny", src_vocab_size=v, tgt_vocab_size=v, optimizer="nag", lr=0.25,
                           warmup_steps=0, label_smoothing=0.0)
    first = task._loss(data[0], 0.0)[0].item()
    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=0.1)
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert task._loss(data[0], 0.0)[0].item() < first / 2


def test_registered_and_created_by_name():
    assert {"convs2s_tiny", "convs2s_small", "convs2s_large"} <= set(zoo.list_models())
    model = zoo.create("convs2s_tiny", src_vocab_size=30, tgt_vocab_size=30)
    assert isinstance(model.net, ConvS2S) and model.net.has_attention


@pytest.mark.parametrize("bad, message", [
    ({"encoder_layers": 0}, "encoder_layers and decoder_layers must be at least 1"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"share_embeddings": True, "src_vocab_size": 30}, "share_embeddings needs src_vocab_size == tgt_vocab_size"),
])
def test_impossible_settings_are_one_clear_line(bad, message):
    kw = {"src_vocab_size": 40, "tgt_vocab_size": 40, **bad}
    with pytest.raises(ValueError, match=message):
        build_network("convs2s_tiny", **kw)
