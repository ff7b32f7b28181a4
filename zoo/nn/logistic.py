"""A discretized mixture of logistics over ``levels`` intensities (Salimans et al. 2017, PixelCNN++).

The intensities ``0 .. L-1`` sit at the centres ``x_v = 2v / (L-1) - 1`` of ``L`` bins that
tile the real line: bin ``v`` spans ``x_v +- 1/(L-1)``, the first one reaches down to
-inf and the last one up to +inf. A mixture of ``K`` logistic distributions
(weights ``pi_k``, means ``mu_k``, scales ``s_k``) gives each bin the mass that falls in it,
so the ``L`` probabilities sum to one exactly and neighbouring intensities share
probability: the network learns one smooth density instead of ``L`` separate logits, which
is what makes the mixture generalise from little data.

The network emits ``3K`` numbers per position, ``(logit pi, mu, log s)``, concatenated.
``log_probs(params, levels)`` gives the whole distribution (B, T, L), for sampling;
``log_probs(params, levels, targets)`` gives only the targets' (B, T), for training and
evaluation, without ever building the (B, T, L, K) tensor.

Every bin's log-mass is computed in a form that stays finite in float32 whatever the
parameters: with ``a`` and ``b`` the standardised upper and lower edges,
``log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) - softplus(b) + log(-expm1(b - a))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor: a scale of e^-7 still spreads a bin over ~8 standard units


def num_params(mixtures: int) -> int:
    """Outputs per position a network needs for a ``mixtures``-component mixture."""
    return 3 * mixtures


def _bin_log_mass(x: Tensor, v: Tensor, levels: int, mu: Tensor, log_s: Tensor) -> Tensor:
    """log P(bin v) under each component: x, v (...) or broadcastable; mu, log_s (..., K) -> (..., K)."""
    half = 1.0 / (levels - 1)
    inv_s = torch.exp(-log_s)
    a = (x[..., None] + half - mu) * inv_s  # standardised upper edge
    b = (x[..., None] - half - mu) * inv_s  # standardised lower edge
    interior = F.logsigmoid(a) - F.softplus(b) + torch.log(-torch.expm1(-2.0 * half * inv_s))
    first = F.logsigmoid(a)  # (-inf, x_0 + half]
    last = -F.softplus(b)  # [x_{L-1} - half, inf)
    v = v[..., None]
    return torch.where(v == 0, first, torch.where(v == levels - 1, last, interior))


def log_probs(params: Tensor, levels: int, targets: Tensor | None = None) -> Tensor:
    """Mixture parameters (B, T, 3K) -> log P of every intensity (B, T, L), or of ``targets`` (B, T).

    Computed in float32 whatever the input's dtype (bf16 autocast included).
    """
    logit_pi, mu, log_s = params.float().chunk(3, dim=-1)  # each (B, T, K)
    log_pi = logit_pi.log_softmax(-1)
    log_s = log_s.clamp(min=MIN_LOG_SCALE)
    if targets is None:
        v = torch.arange(levels, device=params.device)  # (L,)
        x = 2.0 * v / (levels - 1) - 1.0
        mass = _bin_log_mass(x, v, levels, mu[..., None, :], log_s[..., None, :])  # (B, T, L, K)
        return torch.logsumexp(log_pi[..., None, :] + mass, dim=-1)
    x = 2.0 * targets.float() / (levels - 1) - 1.0
    mass = _bin_log_mass(x, targets, levels, mu, log_s)  # (B, T, K)
    return torch.logsumexp(log_pi + mass, dim=-1)
