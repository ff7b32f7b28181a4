"""What every zoo LightningModule shares: the Hub methods and the optimiser recipe."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch

try:  # Lightning's guard against calling it on an instance (it returns a new model)
    from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
except ImportError:  # pragma: no cover
    _restricted_classmethod = classmethod  # type: ignore[misc,assignment]


def inverse_sqrt(step: int, warmup: int) -> float:
    """Vaswani et al. 2017 eq. 3 relative to its peak: linear warm-up, then 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warm-up, then half a cosine from the peak down to ``floor`` x peak at ``total`` steps."""
    step = max(step, 1)
    if step < warmup:
        return step / warmup
    done = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))


LR_SCHEDULES = ("inverse_sqrt", "cosine")


class ZooModule(L.LightningModule):
    """Base of the zoo's tasks.

    Subclasses set ``task_name``, build ``self.net`` through the registry from plain
    JSON-able arguments (so ``save_hyperparameters``, ``load_from_checkpoint`` and the Hub
    ``config.json`` agree), and carry ``self.tokenizers`` as a (source, target) pair, the
    same object twice for one vocabulary.
    """

    task_name: str = ""
    tokenizers: Any = None

    def resolve_start(self, arch: str, arch_args: dict[str, Any] | None, init_from: str | None) -> tuple[str, dict[str, Any], Any]:
        """Fine-tuning: the pretrained checkpoint's architecture and config, ``arch_args`` on top."""
        arch_args = dict(arch_args or {})
        if not init_from:
            return arch, arch_args, None
        from zoo.hub import read_pretrained

        start = read_pretrained(init_from)
        hparams = start.config["hparams"]
        arch, arch_args = hparams["arch"], {**hparams.get("arch_args", {}), **arch_args}
        self._resolved_start = {"arch": arch, "arch_args": dict(arch_args)}  # for on_save_checkpoint
        return arch, arch_args, start

    def take_start(self, start: Any) -> None:
        """Load the pretrained weights (strictly) and vocabulary resolved by :meth:`resolve_start`."""
        if start is not None:
            start.load_into(self.net, self.hparams.get("arch"))
            self.tokenizers = start.tokenizers

    # -- vocabulary follows the data, and travels with Lightning checkpoints ----
    def on_fit_start(self) -> None:
        """Take the data module's vocabulary, or check it is the one the weights were trained with."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "tokenizers"):
            return
        self._check_data_vocab(dm)
        if self.tokenizers is not None and any(
            a.to_str() != b.to_str() for a, b in zip(self.tokenizers, dm.tokenizers)
        ):
            raise ValueError(
                "the data module's vocabulary differs from the one this model was trained with; "
                "point data.init_args.tokenizer at the model's checkpoint folder (or its tokenizer.json)"
            )
        self.tokenizers = dm.tokenizers
        self.data_description = dm.describe()

    def _check_data_vocab(self, dm: Any) -> None:
        """The data's ids must fit the model's embeddings: say so now, not as an IndexError mid-step."""
        config = getattr(self.net, "config", None)
        for name in ("src_vocab_size", "tgt_vocab_size", "vocab_size"):
            ours = getattr(config, name, None)
            try:
                theirs = getattr(dm, name, None)
            except NotImplementedError:
                theirs = None
            if isinstance(ours, int) and isinstance(theirs, int) and theirs > ours:
                raise ValueError(
                    f"the data module's vocabulary has {theirs} tokens but the model's {name} is {ours}; "
                    f"build the model with {name}={theirs} (zoo fit links it from the data) or give the data "
                    "module the model's tokenizer"
                )

    def on_validation_start(self) -> None:
        self.on_fit_start()

    def on_test_start(self) -> None:
        self.on_fit_start()

    def on_predict_start(self) -> None:
        self.on_fit_start()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning checkpoints are our own training files: keep the vocabulary with them
        if self.tokenizers is not None:
            checkpoint["zoo_tokenizers"] = [t.to_str() for t in self.tokenizers]
        # ... and the architecture as built, so that loading one never reads the folder it started
        # from (which may since hold other weights, of another depth); the folder stays on record
        hp = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        resolved = getattr(self, "_resolved_start", None)
        if hp is not None and hp.get("init_from") and resolved is not None:
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = {**hp, **resolved, "init_from": None}
            checkpoint["zoo_init_from"] = hp["init_from"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "zoo_tokenizers" in checkpoint:
            from zoo.data.tokenizer import tokenizer_from_str

            texts = checkpoint["zoo_tokenizers"]
            src = tokenizer_from_str(texts[0])
            tgt = src if texts[-1] == texts[0] else tokenizer_from_str(texts[-1])
            self.tokenizers = (src, tgt)

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, for local files only and with ``weights_only=True``.

        A training checkpoint is read with ``torch.load(weights_only=True)``, which rebuilds
        tensors and plain values and refuses anything that would run code; loading is strict.
        Published weights load by name with :func:`zoo.load` (safetensors, never pickles).
        """
        import pickle

        from zoo.training import checked_source, refused

        checked_source(checkpoint_path, weights_only)
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
                weights_only=True, **kwargs,
            )
        except pickle.UnpicklingError as err:
            raise refused(checkpoint_path, err) from None

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
    OPTIMIZERS = ("adamw", "nag")

    def configure_optimizers(self) -> Any:
        """AdamW (or Nesterov SGD), with warm-up then 1/sqrt or cosine decay, or cut on a plateau.

        The cosine schedule reaches its floor at the run's last step as Lightning estimates it
        (``max_steps``, else ``max_epochs`` x batches an epoch), so a resumed run with the same
        settings continues the same curve.
        """
        hp = self.hparams
        name = hp.get("optimizer", "adamw")
        if name not in self.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(self.OPTIMIZERS)}")
        schedule = hp.get("lr_schedule", "inverse_sqrt")
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        floor = hp.get("min_lr_ratio", 0.0)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"min_lr_ratio is the cosine's floor as a fraction of lr, between 0 and 1; got {floor}")
        if schedule == "cosine" and hp.get("lr_plateau_factor", 0.0) > 0:
            raise ValueError("lr_schedule 'cosine' and lr_plateau_factor > 0 are two schedules; set lr_plateau_factor: 0 "
                             "for the cosine, or lr_schedule: inverse_sqrt for the plateau cuts")
        decay, no_decay = [], []
        for pname, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or "embed" in pname else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if name == "nag":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        if hp.get("lr_plateau_factor", 0.0) > 0:
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=hp.lr_plateau_factor, patience=0, min_lr=1e-5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        if schedule == "cosine":
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError("lr_schedule 'cosine' needs a finite run: set trainer.max_steps or trainer.max_epochs")
            warmup = max(hp.warmup_steps, 1)
            factor = lambda s: cosine(s + 1, warmup, int(total), floor)  # noqa: E731
        elif hp.warmup_steps > 0:
            factor = lambda s: inverse_sqrt(s + 1, hp.warmup_steps)  # noqa: E731
        else:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
