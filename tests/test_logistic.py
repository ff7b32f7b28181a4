"""zoo.nn.logistic: the discretized mixture of logistics of the Image Transformer's dmol output."""

from __future__ import annotations

import pytest
import torch

from zoo.nn import logistic


def params(b=3, t=5, k=4, spread=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3 * k, generator=g) * spread


def reference(p: torch.Tensor, levels: int) -> torch.Tensor:
    """The bins' masses written out in float64: CDF differences, the end bins taking the tails."""
    logit_pi, mu, log_s = p.double().chunk(3, dim=-1)
    s = log_s.clamp(min=logistic.MIN_LOG_SCALE).exp()
    x = torch.linspace(-1, 1, levels, dtype=torch.float64)[:, None]  # (L, 1) bin centres
    half = 1.0 / (levels - 1)
    upper = torch.sigmoid((x + half - mu[..., None, :]) / s[..., None, :])
    lower = torch.sigmoid((x - half - mu[..., None, :]) / s[..., None, :])
    upper[..., -1, :] = 1.0
    lower[..., 0, :] = 0.0
    return ((upper - lower) * logit_pi.softmax(-1)[..., None, :]).sum(-1)  # (B, T, L)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_masses_equal_the_written_out_cdf_differences_and_sum_to_one(levels):
    p = params()
    probs = logistic.log_probs(p, levels).exp()
    torch.testing.assert_close(probs.double(), reference(p, levels), atol=1e-6, rtol=1e-4)
    assert (probs.sum(-1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_targets_path_equals_the_whole_distribution_at_the_targets(levels):
    p = params(seed=1)
    targets = torch.randint(0, levels, (3, 5), generator=torch.Generator().manual_seed(2))
    targets[0, :2] = torch.tensor([0, levels - 1])  # both tails
    full = logistic.log_probs(p, levels)
    assert torch.equal(logistic.log_probs(p, levels, targets), full.gather(-1, targets[..., None]).squeeze(-1))


def test_extreme_parameters_stay_finite_with_finite_gradients():
    p = torch.zeros(1, 4, 3)  # one component
    p[0, :, 1] = torch.tensor([40.0, -40.0, 0.0, 0.0])  # means far outside [-1, 1]
    p[0, :, 2] = torch.tensor([-30.0, -30.0, 30.0, -7.0])  # scales below the floor, huge, at the floor
    p.requires_grad_(True)
    targets = torch.tensor([[128, 0, 255, 127]])
    logp = logistic.log_probs(p, 256, targets)
    logp.sum().backward()
    assert torch.isfinite(logp).all() and torch.isfinite(p.grad).all()
    full = logistic.log_probs(p.detach(), 256)
    assert torch.isfinite(full).all() and (full.exp().sum(-1) - 1).abs().max() < 1e-4


def test_bf16_inputs_are_scored_in_float32():
    p = params()
    out = logistic.log_probs(p.bfloat16(), 256, torch.zeros(3, 5, dtype=torch.long))
    assert out.dtype == torch.float32
    assert logistic.num_params(10) == 30
