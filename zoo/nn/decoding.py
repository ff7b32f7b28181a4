"""Greedy and beam search for any encoder-decoder in the zoo.

A model takes part by providing three methods (see :class:`zoo.models.base.EncoderDecoder`):

* ``encode(src) -> enc``: whatever the decoder needs from the source, batch first;
* ``init_state(enc) -> state``: an empty decoding state (caches), batch first;
* ``decode_step(tokens, enc, state) -> logits``: one step, tokens (B, 1) -> (B, V),
  extending ``state`` in place.

Every tensor in ``enc`` and ``state`` has the batch on dim 0, so :func:`reorder` can
follow the beams generically; static caches (cross-attention keys) are identical for
the beams of one sentence and are left alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from zoo.nn.attention import KVCache


def reorder(state: Any, index: Tensor) -> Any:
    """Select batch rows ``index`` from every tensor in a nested state (in place for caches)."""
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, KVCache):
        return state.select(index)
    if isinstance(state, dict):
        return {key: reorder(val, index) for key, val in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(reorder(val, index) for val in state)
    if dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            setattr(state, f.name, reorder(getattr(state, f.name), index))
        return state
    return state


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha (Wu et al. 2016); alpha=0 ranks by raw log-prob."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


@torch.no_grad()
def greedy_search(model: Any, src: Tensor, *, bos_id: int, eos_id: int, pad_id: int, max_len: int) -> tuple[Tensor, Tensor]:
    """Most likely token at every step.

    Returns tokens (B, L) without BOS, padded with ``pad_id`` after EOS, and the
    summed log-probabilities (B,).
    """
    enc = model.encode(src)
    state = model.init_state(enc)
    b = src.size(0)
    tokens = torch.full((b, 1), bos_id, dtype=torch.long, device=src.device)
    scores = torch.zeros(b, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    for step in range(max_len):
        logp = model.decode_step(tokens[:, -1:], enc, state).float().log_softmax(-1)  # (B, V)
        logp[:, [pad_id, bos_id]] = float("-inf")  # never generated
        if step == max_len - 1:
            nxt = torch.full_like(finished, eos_id, dtype=torch.long)
        else:
            nxt = logp.argmax(-1)
        nxt = nxt.masked_fill(finished, pad_id)
        scores += logp.gather(1, nxt[:, None]).squeeze(1).masked_fill(finished, 0.0)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == eos_id
        if finished.all():
            break
    return tokens[:, 1:], scores


@torch.no_grad()
def beam_search(
    model: Any,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int,
    beam_size: int = 4,
    alpha: float = 0.6,
) -> tuple[Tensor, Tensor]:
    """Beam search with the GNMT length penalty.

    A finished beam stays in the beam and can only be extended by padding at no cost,
    so finished and open hypotheses compete on the same summed log-probability; the
    best of the final beam is chosen on the length-normalised score.

    Returns tokens (B, L) without BOS, padded after EOS, and each hypothesis's summed
    log-probability (B,) (not normalised).
    """
    b, k, device = src.size(0), beam_size, src.device
    enc = model.encode(src)
    enc = reorder(enc, torch.arange(b, device=device).repeat_interleave(k))  # B*k copies
    state = model.init_state(enc)
    tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: keep one
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    base = (torch.arange(b, device=device) * k)[:, None]  # (B, 1)
    for step in range(max_len):
        logp = model.decode_step(tokens[:, -1:], enc, state).float().log_softmax(-1)  # (B*k, V)
        v = logp.size(-1)
        logp[:, [pad_id, bos_id]] = float("-inf")  # never generated
        if step == max_len - 1:  # out of room: everything open must end now
            eos_only = torch.full_like(logp, float("-inf"))
            eos_only[:, eos_id] = logp[:, eos_id]
            logp = eos_only
        logp[finished] = float("-inf")
        logp[finished, pad_id] = 0.0
        cand = (scores.view(-1, 1) + logp).view(b, k * v)
        scores, flat = cand.topk(k, dim=-1)  # (B, k)
        rows = (base + flat // v).view(-1)  # which beam each survivor extends
        nxt = (flat % v).view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), nxt[:, None]], dim=1)
        finished = finished.index_select(0, rows) | (nxt == eos_id)
        state = reorder(state, rows)
        if finished.all():
            break
    tokens = tokens[:, 1:].view(b, k, -1)
    lengths = (tokens != pad_id).sum(-1)  # EOS counts, padding does not
    best = (scores / length_penalty(lengths, alpha)).argmax(-1)  # (B,)
    pick = torch.arange(b, device=device)
    return tokens[pick, best], scores[pick, best]


def check_sampling(temperature: float, top_p: float) -> None:
    """One-line errors for a temperature or nucleus mass that cannot sample."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Scale by 1/temperature, keep the top_k tokens and the smallest set whose mass reaches top_p."""
    check_sampling(temperature, top_p)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= top_p  # tokens after the nucleus is already full
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model: Any,
    prompt: Tensor,
    *,
    max_new: int,
    eos_id: int | None,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    never: tuple[int, ...] = (),
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling from a causal LM (``init_state`` / ``step``).

    prompt (B, P), starting with BOS -> (B, P + L) with the new tokens, padded after EOS.
    ``eos_id=None`` never stops early (and never draws an end token: pass it in ``never``);
    ``never`` lists other ids that are never drawn; ``progress`` shows a bar over the new tokens.
    """
    from tqdm.auto import tqdm

    state = model.init_state(prompt.size(0), prompt.device)
    logits = model.step(prompt, state)  # the whole prompt at once: logits after its last token
    tokens = prompt
    finished = torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)
    banned = [pad_id, *never]
    for i in tqdm(range(max_new), desc="sampling", unit="token", disable=not progress, leave=False):
        logits = filter_logits(logits, temperature, top_k, top_p)
        logits[:, banned] = float("-inf")
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(finished, pad_id)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        if eos_id is not None:
            finished |= nxt == eos_id
            if finished.all():
                break
        if i + 1 < max_new:  # the last token needs no logits after it
            logits = model.step(nxt[:, None], state)
    return tokens
