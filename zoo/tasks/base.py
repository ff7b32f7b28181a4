"""What every zoo LightningModule shares: the optimiser settings and recipe, fine-tuning
starts, the vocabulary that travels with checkpoints, and the Hub methods."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import types
import typing
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

try:
    # Lightning's guard that makes ``model.load_from_checkpoint(...)`` on an instance an error (it
    # returns a new model and leaves the instance as it was). Lightning has no public name for it,
    # hence the pinned range of lightning in pyproject.toml; without it the override below is a
    # plain classmethod, which loads the same but lets that mistake pass.
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


OPTIMIZERS = ("adamw", "nag", "sgd")
LR_SCHEDULES = ("inverse_sqrt", "cosine", "step")


class ZooModule(L.LightningModule):
    """Base of the zoo's tasks.

    Subclasses set ``task_name``, build ``self.net`` through the registry from plain
    JSON-able arguments (so ``save_hyperparameters``, ``load_from_checkpoint`` and the Hub
    ``config.json`` agree), and carry ``self.tokenizers`` as a (source, target) pair, the
    same object twice for one vocabulary.
    """

    task_name: str = ""
    tokenizers: Any = None

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lr_schedule: str = "inverse_sqrt",
        min_lr_ratio: float = 0.0,
        optimizer: str = "adamw",
        momentum: float = 0.99,
        lr_plateau_factor: float = 0.0,
        lr_step_epochs: int = 25,
        lr_step_factor: float = 0.5,
        lr_step_start: int = 0,
    ) -> None:
        """The optimiser settings, the same for every task: a task's ``__init__`` takes them as
        ``**optim`` and passes them here (LightningCLI follows them, so ``--model.init_args.lr``
        works on every task), and its ``save_hyperparameters`` records all of them.

        Args:
            lr: peak learning rate (after the warm-up).
            warmup_steps: steps of linear warm-up, then inverse square root decay (0: constant).
            betas: AdamW's betas.
            eps: AdamW's epsilon.
            weight_decay: AdamW's decoupled weight decay, of matrices only (not of biases, norms
                or embeddings).
            lr_schedule: ``"inverse_sqrt"`` (above), ``"cosine"``: after the warm-up, half a
                cosine down to ``min_lr_ratio`` x lr at the run's last step, or ``"step"``: lr
                multiplied by ``lr_step_factor`` every ``lr_step_epochs`` epochs (no warm-up;
                the memory network's recipe: 0.5 every 25 epochs, or 15 for joint training).
            min_lr_ratio: the cosine's floor as a fraction of lr, between 0 and 1.
            optimizer: ``"adamw"``, ``"nag"``: SGD with Nesterov momentum ``momentum``
                (ConvS2S's recipe: lr 0.25, momentum 0.99, gradient norm clipped at 0.1), or
                ``"sgd"``: plain stochastic gradient descent, no momentum (the memory network's).
            momentum: the momentum of ``"nag"``.
            lr_plateau_factor: when > 0, multiply the learning rate by this factor after each
                validation that does not improve the validation loss (ConvS2S: 0.1); the warm-up
                schedule is then not used (and ``lr_schedule="cosine"`` or ``"step"`` is refused:
                two schedules).
            lr_step_epochs, lr_step_factor: the ``"step"`` schedule's period and factor.
            lr_step_start: the epochs at the full lr before the ``"step"`` schedule's first cut
                (0: one period, ``lr_step_epochs``); Zaremba et al. 2014's medium LSTM: 6 epochs
                at lr 1, then x 1/1.2 every epoch (``lr_step_epochs: 1``).
        """
        super().__init__()
        self._optimizer_settings = dict(
            lr=lr, warmup_steps=warmup_steps, betas=betas, eps=eps, weight_decay=weight_decay,
            lr_schedule=lr_schedule, min_lr_ratio=min_lr_ratio, optimizer=optimizer, momentum=momentum,
            lr_plateau_factor=lr_plateau_factor, lr_step_epochs=lr_step_epochs, lr_step_factor=lr_step_factor,
            lr_step_start=lr_step_start,
        )

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Lightning's ``save_hyperparameters``, with every optimiser setting on record.

        Lightning records what the task's ``__init__`` was given, and of the settings that came
        through ``**optim`` only those given; the rest are added at their defaults, so that
        Lightning checkpoints, config.json and the logged run name every setting in use.
        """
        frame = frame or inspect.currentframe().f_back  # the task's __init__, whose arguments Lightning reads
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        missing = {k: v for k, v in self._optimizer_settings.items() if k not in self.hparams}
        if missing:
            super().save_hyperparameters({**self.hparams, **missing}, frame=frame, logger=logger)

    @classmethod
    def init_arguments(cls) -> dict[str, inspect.Parameter]:
        """The keyword arguments ``cls(...)`` takes: its ``__init__``'s own, and the optimiser
        settings it passes on through ``**optim``."""
        own = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
        passes_on = any(p.kind is p.VAR_KEYWORD for p in own.values())
        own = {n: p for n, p in own.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if passes_on:
            base = inspect.signature(ZooModule.__init__).parameters
            own.update({n: p for n, p in base.items() if p.kind is p.KEYWORD_ONLY and n not in own})
        return own

    @classmethod
    def init_types(cls) -> dict[str, Any]:
        """The annotations of :meth:`init_arguments`, resolved."""
        return {**typing.get_type_hints(ZooModule.__init__), **typing.get_type_hints(cls.__init__)}

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

    # -- evaluation: each task measures a batch in _eval_step(batch, "val" | "test") --
    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -- Lightning checkpoints -------------------------------------------------
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
    def configure_optimizers(self) -> Any:
        """AdamW (or Nesterov SGD), with warm-up then 1/sqrt or cosine decay, or cut on a plateau.

        The settings are read from ``self.hparams`` (which Lightning's learning-rate finder
        updates). The cosine schedule reaches its floor at the run's last step as Lightning
        estimates it (``max_steps``, else ``max_epochs`` x batches an epoch), so a resumed run
        with the same settings continues the same curve.
        """
        hp = self.hparams
        if hp.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if hp.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {hp.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        floor = hp.min_lr_ratio
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"min_lr_ratio is the cosine's floor as a fraction of lr, between 0 and 1; got {floor}")
        if hp.lr_schedule in ("cosine", "step") and hp.lr_plateau_factor > 0:
            raise ValueError(f"lr_schedule '{hp.lr_schedule}' and lr_plateau_factor > 0 are two schedules; set "
                             f"lr_plateau_factor: 0 for the {hp.lr_schedule} schedule, or lr_schedule: inverse_sqrt "
                             "for the plateau cuts")
        if hp.lr_schedule == "step" and (hp.warmup_steps > 0 or hp.lr_step_epochs < 1 or hp.get("lr_step_start", 0) < 0):
            raise ValueError("lr_schedule 'step' takes no warm-up (set warmup_steps: 0), lr_step_epochs of 1 or more "
                             "and lr_step_start of 0 or more")
        decay, no_decay = [], []
        for pname, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or "embed" in pname else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "nag":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        if hp.lr_plateau_factor > 0:
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=hp.lr_plateau_factor, patience=0, min_lr=1e-5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        if hp.lr_schedule == "step":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: self.step_lr_factor(epoch))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.lr_schedule == "cosine":
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

    def step_lr_factor(self, epoch: int) -> float:
        """The ``"step"`` schedule's multiple of lr in ``epoch`` (counted from 0): lr_step_factor^cuts, with no cut
        before epoch ``lr_step_start`` (0: ``lr_step_epochs``) and one more every ``lr_step_epochs`` from there."""
        hp = self.hparams
        first = hp.get("lr_step_start", 0) or hp.lr_step_epochs  # checkpoints from before the setting have none
        cuts = 0 if epoch < first else 1 + (epoch - first) // hp.lr_step_epochs
        return hp.lr_step_factor ** cuts


def split_overrides(
    cls: type[ZooModule], arch: str, overrides: dict[str, Any], *, fixed: Sequence[str] = (), what: str, hint: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword overrides for task ``cls`` building architecture ``arch`` -> (task arguments, architecture arguments).

    What ``zoo.create`` and ``zoo.load`` both do with their keywords. A name the task takes
    (optimiser settings included) is a task argument; else a field of the architecture's
    config goes into its ``arch_args`` (on top of an ``arch_args`` dict given). ``fixed``
    names task arguments the caller sets itself. Anything else is a TypeError that ends with
    ``hint``, or else lists the names there are; task arguments of plain types are type-checked.
    """
    from zoo.models.base import check_types
    from zoo.registry import get_architecture

    overrides = dict(overrides)
    arch_args = dict(overrides.pop("arch_args", None) or {})
    task_names = set(cls.init_arguments()) - {"arch", "arch_args", *fixed}
    net_fields = {f.name for f in dataclasses.fields(get_architecture(arch).config)}
    unknown = sorted(set(overrides) - task_names - net_fields)
    if unknown:
        hint = hint or (f"give task arguments ({', '.join(sorted(task_names))}) "
                        f"or the architecture's ({', '.join(sorted(net_fields))})")
        raise TypeError(f"{what}: unknown argument(s) {', '.join(unknown)}; {hint}")
    task_args = {k: v for k, v in overrides.items() if k in task_names}
    arch_args.update({k: v for k, v in overrides.items() if k not in task_names})
    check_types(cls.__name__, cls.init_types(), task_args)
    return task_args, arch_args
