"""What every zoo LightningModule shares: the Hub methods and the optimiser recipe."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch


def inverse_sqrt(step: int, warmup: int) -> float:
    """Vaswani et al. 2017 eq. 3 relative to its peak: linear warm-up, then 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


class ZooModule(L.LightningModule):
    """Base of the zoo's tasks.

    Subclasses set ``task_name``, build ``self.net`` through the registry from plain
    JSON-able arguments (so ``save_hyperparameters``, ``load_from_checkpoint`` and the Hub
    ``config.json`` agree), and may carry ``self.tokenizers``.
    """

    task_name: str = ""
    tokenizers: Any = None

    # -- Hub layout -----------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json, model.safetensors, tokenizer file(s) and a README.md card."""
        from zoo.hub import save_pretrained

        save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, revision: str | None = None, **overrides: Any) -> "ZooModule":
        """Load a folder, a registered ``arch.tag`` name or a Hub repo id, strictly."""
        from zoo.hub import load

        model = load(name_or_path, revision=revision, **overrides)
        if not isinstance(model, cls):
            raise TypeError(f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Save to a temporary folder and upload it to ``repo_id``; returns the commit URL."""
        from zoo.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # -- optimisation ---------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        if hp.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: inverse_sqrt(s + 1, hp.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
