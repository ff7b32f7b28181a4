"""Training that survives being killed: atomic Lightning checkpoints, a periodic ``last``
checkpoint, random state that resumes, and Lightning checkpoints read without unpickling code.

``zoo fit`` installs all of this (see ``zoo.cli``); with the Lightning Trainer directly::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()],
                        callbacks=[LastCheckpoint("runs/x/checkpoints", every_n_train_steps=500), RandomState()])

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary
file lives in the system temp folder: moving it into place is a copy, not a rename, when
that folder is on another file system (a tmpfs ``/tmp``, a container's overlay), nothing is
fsynced, and a killed run leaves its temporary behind. ``AtomicCheckpointIO`` writes the
temporary beside the checkpoint, fsyncs it, and renames it over the old file: a checkpoint
is always either the previous complete file or the new complete file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import weakref
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from zoo.io import atomic_write

__all__ = [
    "AtomicCheckpointIO",
    "LastCheckpoint",
    "RandomState",
    "load_checkpoint",
    "install_atomic_checkpoint_io",
    "DEFAULT_EVERY_N_STEPS",
]

DEFAULT_EVERY_N_STEPS = 500


def _local_path(path: Any) -> str | None:
    """The file-system path of a local ``path`` or ``file://`` URL; None for remote ones."""
    if not isinstance(path, (str, os.PathLike)) or get_protocol(os.fspath(path)) != "file":
        return None
    text = os.fspath(path)
    return text[len("file://"):] if text.startswith("file://") else text


def checked_source(path: Any, weights_only: bool | None = None) -> str:
    """The local file path of the Lightning checkpoint ``path``, or a one-line error saying why zoo will not read it."""
    if weights_only is False:
        raise ValueError(
            "zoo reads Lightning checkpoints with weights_only=True only; drop weights_only=False "
            "(to load a file you made and trust with other objects, use torch.load yourself)"
        )
    local = _local_path(path)
    if local is None:
        raise ValueError(
            f"{path}: zoo reads Lightning checkpoints only from local files; download it, make sure "
            "where it came from, and give its local path (published weights load by name: zoo.load)"
        )
    if not os.path.isfile(local):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    return local


def refused(path: Any, err: pickle.UnpicklingError) -> ValueError:
    """The one-line error for a checkpoint that torch.load(weights_only=True) would not unpickle."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    what = f"a reference to {found.group(1)}" if found else "Python objects that are not tensors or plain values"
    return ValueError(
        f"{path} holds {what}, which torch.load(weights_only=True) refuses: zoo does not unpickle "
        "code from checkpoints; if you made this file and trust it, allow its classes with "
        "torch.serialization.add_safe_globals"
    )


def load_checkpoint(path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
    """Read a Lightning checkpoint the safe way: a local file, ``torch.load(weights_only=True)``.

    weights_only loading rebuilds tensors and plain Python values and refuses everything else,
    so a file that would run code when unpickled (an object whose ``__reduce__`` calls
    ``os.system``) is refused before any of it runs. Errors are one line.
    """
    local = checked_source(path, weights_only)
    try:
        return torch.load(local, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise refused(path, err) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written checkpoint, and loads safely.

    Local files are written to a temporary file in the checkpoint's folder, fsynced, and
    renamed over the target (``os.replace``); the temporaries of a run killed mid-write are
    removed at the next save of that file. Remote URLs (``s3://``) go through Lightning's
    fsspec transaction as before. Loading is :func:`load_checkpoint`: local files only,
    weights_only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        local = _local_path(path)
        if local is None or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: torch.save(checkpoint, tmp))
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def install_atomic_checkpoint_io(trainer: Any) -> bool:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` where it would use Lightning's default one.

    A checkpoint IO the user chose (a plugin of their own, the XLA or DeepSpeed one) is kept;
    an ``AsyncCheckpointIO`` around the default keeps its asynchrony, around an atomic writer.
    Returns whether it installed one.
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io  # where none was chosen, Lightning fills in its default here
    if type(current) is AsyncCheckpointIO and type(current.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AsyncCheckpointIO(AtomicCheckpointIO())
        return True
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


class LastCheckpoint(ModelCheckpoint):
    """Only ``last.ckpt`` in ``dirpath``: rewritten every ``every_n_train_steps`` steps and when training ends.

    Resume with ``--ckpt_path last``. The folder should not depend on the logger's version
    (Lightning's default puts checkpoints under ``<logger>/version_N/``, which a resumed run
    does not look in), so ``zoo fit`` uses ``<default_root_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int = DEFAULT_EVERY_N_STEPS) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, not {every_n_train_steps}")
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)
        self.saved_step: int | None = None  # the global step of the last checkpoint the trainer wrote

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The final weights too, whether or not the last step fell on the interval.

        Lightning's own ``on_train_end`` writes ``last.ckpt`` only when no step did.
        """
        if trainer.fast_dev_run or self.saved_step == trainer.global_step:
            return
        self.last_model_path = self.last_model_path or self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path)
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # as after ModelCheckpoint's own saves (W&B's log_model uploads it)
                logger.after_save_checkpoint(weakref.proxy(self))


class RandomState(Callback):
    """Keeps the random generators' state in each checkpoint and restores it on resume.

    Lightning restores weights, optimiser and loops but not the generators, so dropout
    after a resume would differ from the uninterrupted run. With this callback a run
    resumed from a checkpoint draws the numbers the uninterrupted run drew. Under DDP the
    checkpoint holds rank 0's state and every rank gets it back (``seed_everything`` gives
    all ranks the same seed anyway).
    """

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        version, mt, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": [version, list(mt), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import numpy as np

        torch.set_rng_state(state["torch"])
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
