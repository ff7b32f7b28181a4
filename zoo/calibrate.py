"""Temperature calibration: one scalar, fitted on validation data, folded into the output layer.

A network trained to fit a small data set past the point where held-out likelihood stops
improving is over-confident: its distributions are too peaked on images it has not seen.
Dividing its logits by a temperature T > 1 fitted on held-out validation data (Guo et al.
2017, "On Calibration of Modern Neural Networks") lowers the held-out NLL without touching
what the network ranks first. The NLL is convex in b = 1/T (a log-sum-exp of b * logits
minus b * the target's logit), so Newton's method finds the best b in a few steps.

The fitted temperature is folded into the weights: the output layer's weight and bias are
multiplied by 1/T, so the calibrated network is an ordinary checkpoint of the same
architecture, sampled and scored by the same code. ``scripts/make_checkpoint.py
--calibrate`` does this before it stores and measures a checkpoint, and records the
temperature and the validation figures before and after in its config.json; ``--temperature
T`` folds a temperature fitted earlier, for a run whose validation images were in training.

Only a softmax output whose layer is not shared with an input embedding can be folded
(a tied layer would also scale the inputs); the Image Transformer's is one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def temperature_nll(logits: Tensor, targets: Tensor, temperature: float, chunk: int = 65536) -> float:
    """Mean NLL in nats of ``targets`` (N,) under ``softmax(logits / temperature)`` (N, K),
    summed in float64 over chunks of ``chunk`` rows (a validation split's logits are large)."""
    total = 0.0
    for i in range(0, len(targets), chunk):
        scaled = logits[i : i + chunk].double() / temperature
        total += float((scaled.logsumexp(-1) - scaled.gather(-1, targets[i : i + chunk, None]).squeeze(-1)).sum())
    return total / max(len(targets), 1)


def fit_temperature(logits: Tensor, targets: Tensor, steps: int = 50, chunk: int = 65536) -> float:
    """The temperature T minimising the mean NLL of ``targets`` (N,) under ``softmax(logits / T)``.

    Newton's method on b = 1/T, from b = 1: the NLL's first derivative in b is the mean of
    E_p[z] - z_target and its second the mean variance of z under p (z: the logits), so each
    step is exact for the quadratic about the current b. Steps are halved while they would
    raise the NLL, which keeps b positive and the iteration monotone.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"fit_temperature takes logits (N, K) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if not len(targets):
        raise ValueError("fit_temperature needs at least one target")

    def derivatives(b: float) -> tuple[float, float]:
        grad = curv = 0.0
        for i in range(0, len(targets), chunk):
            z = logits[i : i + chunk].double()
            p = (b * z).softmax(-1)
            mean = (p * z).sum(-1)
            grad += float((mean - z.gather(-1, targets[i : i + chunk, None]).squeeze(-1)).sum())
            curv += float((p * z * z).sum(-1).sub(mean * mean).sum())
        return grad / len(targets), curv / len(targets)

    b, nll = 1.0, temperature_nll(logits, targets, 1.0, chunk)
    for _ in range(steps):
        grad, curv = derivatives(b)
        step = grad / curv if curv > 0 else math.copysign(0.1 * b, grad)
        while True:
            trial = b - step
            if trial > 0:
                trial_nll = temperature_nll(logits, targets, 1.0 / trial, chunk)
                if trial_nll <= nll:
                    break
            step /= 2
            if abs(step) < 1e-12 * b:
                return 1.0 / b
        if abs(trial - b) < 1e-9 * b:
            return 1.0 / trial
        b, nll = trial, trial_nll
    return 1.0 / b


def output_layer(net: nn.Module) -> nn.Linear:
    """The network's final linear map to logits, if a temperature can be folded into it."""
    config = getattr(net, "config", None)
    if getattr(config, "output", "softmax") != "softmax":
        raise ValueError(f"only a softmax output can be calibrated by a temperature, this network's is {config.output!r}")
    layer = getattr(net, "out_proj", None)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{type(net).__name__} has no out_proj linear layer to fold a temperature into")
    shared = [n for n, p in net.named_parameters(remove_duplicate=False) if p is layer.weight]
    if len(shared) > 1:
        raise ValueError(f"{type(net).__name__}'s output layer is tied to {shared[0]}; scaling it would scale the inputs too")
    return layer


@torch.no_grad()
def fold_temperature(net: nn.Module, temperature: float) -> None:
    """Divide the network's logits by ``temperature`` for good: scale its output layer by 1/T."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    layer = output_layer(net)
    layer.weight.mul_(1.0 / temperature)
    if layer.bias is not None:
        layer.bias.mul_(1.0 / temperature)


@torch.no_grad()
def image_logits(model: Any, batches: Iterable[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """An image task's logits (N, levels) and target sub-pixels (N,) over data-module batches, in float32."""
    net = model.net
    output_layer(net)
    model.eval()
    logits, targets = [], []
    for batch in batches:
        lab, low = model._conditions(batch)
        logits.append(net.out_proj(net.hidden(batch["tokens"], lab, low)).float().flatten(0, -2))
        targets.append(batch["targets"].flatten())
    if not logits:
        raise ValueError("no batches to calibrate on: the validation split is empty")
    return torch.cat(logits), torch.cat(targets)


def calibrate_image_model(model: Any, dm: Any, temperature: float | None = None) -> dict[str, float]:
    """Fit a temperature on ``dm``'s validation split and fold it into ``model``; returns the
    temperature and the validation bits/dim before and after, for the checkpoint's config.

    With ``temperature`` given (one fitted by an earlier run), fold that one instead: the way
    for a run that trained on its validation images (``train_on_val``), on which a fit would
    measure how well the network remembers them rather than how it generalises."""
    if temperature is not None:
        fold_temperature(model.net, temperature)
        return {"temperature": float(temperature), "fitted_on": "given"}
    if dm.hparams.get("train_on_val", False):
        raise ValueError("this run trained on its validation images, so a temperature fitted on them would not "
                         "correct its over-confidence on new images; give one fitted by an earlier run (make_checkpoint.py --temperature T)")
    dm.setup("validate")
    logits, targets = image_logits(model, dm.val_dataloader())
    t = fit_temperature(logits, targets)
    before, after = (temperature_nll(logits, targets, x) / math.log(2) for x in (1.0, t))
    fold_temperature(model.net, t)
    return {"temperature": round(t, 4), "fitted_on": "val", "val_bpd_before": round(before, 4),
            "val_bpd_after": round(after, 4)}
