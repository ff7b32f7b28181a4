"""The shared attention module against a plain reference, masks and caches."""

import math

import torch

from zoo.nn.attention import KVCache, MultiHeadAttention, causal_mask


def reference(mha, q_in, kv_in, mask=None):
    """Textbook multi-head attention: softmax(QK^T / sqrt(d)) V, per head, with (B, T, S) mask."""
    b, t, c = q_in.shape
    h, d = mha.n_heads, mha.head_dim
    q = mha.q_proj(q_in).view(b, t, h, d).transpose(1, 2)
    k = mha.k_proj(kv_in).view(b, -1, h, d).transpose(1, 2)
    v = mha.v_proj(kv_in).view(b, -1, h, d).transpose(1, 2)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    out = torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)
    return mha.out_proj(out.transpose(1, 2).reshape(b, t, c))


def setup(seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(16, 4).eval(), torch.randn(2, 5, 16), torch.randn(2, 7, 16)


def test_causal_mask_offsets():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_cross_attention_with_padding_matches_reference():
    mha, q, kv = setup()
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    out, _ = mha(q, kv, key_padding_mask=pad)
    ref = reference(mha, q, kv, (~pad)[:, None, :].expand(2, 5, 7))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out_w, w = mha(q, kv, key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(out_w, ref, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 4, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert w[1, :, :, 4:].abs().max() == 0  # nothing on padding


def test_causal_self_attention_matches_reference():
    mha, q, _ = setup(1)
    out, _ = mha(q, causal=True)
    ref = reference(mha, q, q, causal_mask(5, 5)[None].expand(2, 5, 5))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out_w, _ = mha(q, causal=True, need_weights=True)
    torch.testing.assert_close(out_w, ref, atol=1e-5, rtol=1e-5)


def test_self_cache_step_by_step_equals_full():
    mha, q, _ = setup(2)
    full, _ = mha(q, causal=True)
    cache = KVCache()
    steps = [mha(q[:, i : i + 1], causal=True, cache=cache)[0] for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 5
    # two new tokens at once on top of a cache keep the causal order
    cache = KVCache()
    first, _ = mha(q[:, :3], causal=True, cache=cache)
    rest, _ = mha(q[:, 3:], causal=True, cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)


def test_static_cache_projects_memory_once():
    mha, q, kv = setup(3)
    cache = KVCache(static=True)
    a, _ = mha(q[:, :1], kv, cache=cache)
    k_before = cache.k
    b, _ = mha(q[:, 1:2], kv * 0, cache=cache)  # memory ignored: keys were cached
    assert cache.k is k_before
    ref, _ = mha(q[:, 1:2], kv)
    torch.testing.assert_close(b, ref)


# --- source attention (Bahdanau / Luong) against scores computed by hand -------------
import pytest  # noqa: E402

from zoo.nn.source_attention import SOURCE_ATTENTION, source_attention  # noqa: E402


def hand_scores(kind, att, q, k):
    """(B, T, Cq), (B, S, Ck) -> (B, T, S), one pair at a time, straight from the papers' formulas."""
    b, t, s = q.size(0), q.size(1), k.size(1)
    out = torch.zeros(b, t, s)
    for i in range(b):
        for j in range(t):
            for m in range(s):
                qi, km = q[i, j], k[i, m]
                if kind in ("additive", "concat"):  # v^T tanh(W1 q + W2 k)
                    out[i, j, m] = att.v.weight[0] @ torch.tanh(att.w_query.weight @ qi + att.w_key.weight @ km + att.w_key.bias)
                elif kind == "dot":
                    out[i, j, m] = qi @ km
                elif kind == "scaled_dot":
                    out[i, j, m] = qi @ km / math.sqrt(qi.numel())
                elif kind == "general":  # q^T W k
                    out[i, j, m] = qi @ (att.w.weight @ km)
    return out


@pytest.mark.parametrize("kind", list(SOURCE_ATTENTION))
def test_source_attention_scores_match_hand_computation(kind):
    torch.manual_seed(0)
    qd, kd = (6, 6) if "dot" in kind else (6, 10)
    att = source_attention(kind, qd, kd, attn_dim=5)
    q, k, v = torch.randn(2, 3, qd), torch.randn(2, 4, kd), torch.randn(2, 4, 7)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    keys = att.precompute(k)
    torch.testing.assert_close(att.score(q, keys), hand_scores(kind, att, q, k), atol=1e-5, rtol=1e-5)
    ctx, w = att(q, keys, v, pad)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))  # a distribution over the source
    assert w[1, :, 2:].abs().max() == 0  # nothing on padding
    expected = hand_scores(kind, att, q, k).masked_fill(pad[:, None], float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(ctx, expected, atol=1e-5, rtol=1e-5)


def test_unknown_attention_kind_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown attention 'cosine'; choose one of additive, concat, dot, general, scaled_dot"):
        source_attention("cosine", 4, 4, 4)
    with pytest.raises(ValueError, match="dot attention needs query_dim == key_dim"):
        source_attention("dot", 4, 8, 4)


def test_bf16_written_out_path_matches_sdpa(monkeypatch):
    """bf16 on the CPU writes attention out; it agrees with SDPA's kernel, forward and backward."""
    import zoo.nn.attention as attention

    mha, q, kv = setup(5)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    q, kv = q.bfloat16(), kv.bfloat16()
    mha = mha.bfloat16()
    assert attention.written_out(q[:, None], 7) and not attention.written_out(q.float()[:, None], 7)

    def run(**kw):
        x = q.clone().requires_grad_()
        memory = kv.clone().requires_grad_() if "key_padding_mask" in kw else None
        out, _ = mha(x, memory, **kw)
        out.float().square().sum().backward()
        return out.float(), x.grad.float()

    for kw in (dict(key_padding_mask=pad), dict(causal=True)):
        written = run(**kw)
        monkeypatch.setattr(attention, "WRITTEN_OUT_MAX_PAIRS", 0)  # every call through SDPA
        fused = run(**kw)
        monkeypatch.undo()
        for a, b in zip(written, fused):
            torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


def test_static_cache_is_contiguous_and_steps_match_bf16():
    mha, q, kv = setup(6)
    mha, q, kv = mha.bfloat16(), q.bfloat16(), kv.bfloat16()
    full, _ = mha(q, kv)
    cache = KVCache(static=True)
    steps = [mha(q[:, i : i + 1], kv, cache=cache)[0] for i in range(q.size(1))]
    assert cache.k.is_contiguous() and cache.v.is_contiguous()
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=2e-2, rtol=2e-2)


def test_growing_cache_steps_match_full_bf16():
    """bf16 steps (the written-out path) over a growing cache with spare room equal the full pass."""
    mha, q, _ = setup(7)
    mha, q = mha.bfloat16(), q.bfloat16()
    full, _ = mha(q, causal=True)
    cache = KVCache()
    first, _ = mha(q[:, :2], causal=True, cache=cache)  # a prompt of two, then one at a time
    steps = [first] + [mha(q[:, i : i + 1], causal=True, cache=cache)[0] for i in range(2, q.size(1))]
    assert cache._kbuf.size(2) > cache.length  # the keys are a strided view of the buffer
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=2e-2, rtol=2e-2)
