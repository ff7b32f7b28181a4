"""zoo.nn.Dropout: the fast bf16 path draws the same distribution as nn.Dropout."""

import pytest
import torch

from zoo.nn.dropout import Dropout


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_keeps_one_minus_p_and_rescales(dtype):
    torch.manual_seed(0)
    drop = Dropout(0.25).train()
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = drop(x)
    assert y.dtype == dtype
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.005)
    assert torch.all(y[kept] == torch.tensor(1 / 0.75, dtype=dtype))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the kept units only


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5, dtype=torch.bfloat16)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
