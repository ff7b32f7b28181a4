"""The pixel data module: a source's splits tokenised for one of the Image Transformer's
tasks (unconditional, class-conditional, super-resolution) and batched.

Super-resolution pairs: the low-resolution image is the mean of each 2x2 or 4x4 block of
the raw intensities, per channel, rounded half up, then quantised to the same ``levels``
(8x8 digits -> 4x4 or 2x2; MNIST 28 -> 14 or 7; CIFAR-10 32 -> 16 or 8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import EvalBatchSampler, ProcessRNG, SequenceDataModule, TokenBatchSampler, batch_loader
from zoo.data.pixels.augment import shift_images
from zoo.data.pixels.sources import SOURCES, Split, load_splits
from zoo.data.pixels.tokenizer import PixelTokenizer


def downsample(images: Any, factor: int) -> np.ndarray:
    """Average each ``factor`` x ``factor`` block of (N, H, W[, C]) integer images, rounding half up.

    The result keeps the dtype and range; tokenizing it requantises it to the levels in use.
    """
    x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
    if x.ndim not in (3, 4):
        raise ValueError(f"downsample takes images (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w = x.shape[:3]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"cannot downsample {h}x{w} images by {factor}: the factor must divide height and width")
    c = x.shape[3] if x.ndim == 4 else 1
    blocks = x.reshape(n, h // factor, factor, w // factor, factor, c).astype(np.float64)
    small = np.floor(blocks.mean(axis=(2, 4)) + 0.5).astype(x.dtype)
    return small if x.ndim == 4 else small[..., 0]


class PixelSet(Dataset):
    """Tokenised images of one split; a loader's indices come back as one batch through :meth:`collate`.

    With ``shift > 0`` (training only) each batch's images are moved afresh by :func:`shift_images`;
    ``shape`` is the (H, W, C) of an image, to undo the raster order."""

    def __init__(self, pixels: Tensor, labels: Tensor, bos_id: int, src: Tensor | None = None,
                 shift: int = 0, shape: tuple[int, int, int] | None = None, seed: int = 0) -> None:
        if shift and (src is not None or shape is None):
            raise ValueError("shift augmentation needs the image shape and does not apply to super-resolution pairs")
        self.pixels, self.labels, self.bos_id, self.src = pixels, labels, bos_id, src
        self.shift, self.shape = shift, shape
        self.rng = ProcessRNG(seed)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        """tokens (B, T) = <s> + pixels[:-1]; targets (B, T) = pixels; labels (B,); src (B, S) if any."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        targets = self.pixels[idx].long()
        if self.shift:
            h, w, c = self.shape
            images = targets.numpy().reshape(len(idx), h, w, c)
            targets = torch.from_numpy(shift_images(images, self.shift, self.rng()).reshape(len(idx), -1))
        tokens = torch.cat([torch.full((len(idx), 1), self.bos_id, dtype=torch.long), targets[:, :-1]], dim=1)
        batch = {"tokens": tokens, "targets": targets, "labels": self.labels[idx]}
        if self.src is not None:
            batch["src"] = self.src[idx].long()
        return batch


class PixelDataModule(SequenceDataModule):
    """Images as pixel sequences for the Image Transformer: unconditional, class-conditional
    or super-resolution.

    Args:
        source: ``"digits"`` (scikit-learn, offline), ``"mnist"`` (IDX files) or ``"cifar10"``
            (binary batches); splits and sizes in the module docstring.
        data_dir: where MNIST / CIFAR-10 lie (else ``$ZOO_DATA_DIR``, ``../shared/data``, download).
        levels: intensities per sub-pixel; must divide the source's range evenly. Default: all
            of them (17 for digits, 256 for MNIST and CIFAR-10); 128, 64, ... 2 are coarser.
        task: ``"unconditional"``, ``"class_conditional"`` (the model reads ``batch["labels"]``)
            or ``"super_resolution"`` (the model reads ``batch["src"]``, the image shrunk by
            ``downsample`` with block averages and quantised to the same levels).
        downsample: 2 or 4, for super-resolution.
        batch_size, eval_batch_size: images per training / evaluation batch.
        train_limit, val_limit, test_limit: use only the first N images of a split.
        seed: the training order (each epoch draws its order from ``seed + epoch``).
        split_seed: the fixed train / val / test permutation; leave it at 0 to compare models.
        download: fetch MNIST or CIFAR-10 when no local copy is found.
        shift: augmentation for training images: each is moved by a random whole number of
            pixels, up to ``shift`` each way vertically and horizontally, afresh every batch,
            never pushing a non-background pixel out of the frame (0, black, fills in). 0: off.
            Not for super-resolution.
        train_on_val: train on the validation images too (all 9,000 of MNIST's t10k pool
            that are not held out for test). Validation figures are then measured on
            images the model trained on: use it for a last run whose recipe was chosen
            beforehand, and take a temperature fitted on an earlier run (``make_checkpoint.py
            --temperature``), not one fitted on these images.
    """

    TASKS = ("unconditional", "class_conditional", "super_resolution")

    def __init__(
        self,
        source: str = "digits",
        data_dir: str | None = None,
        levels: int | None = None,
        task: str = "unconditional",
        downsample: int = 2,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
        download: bool = True,
        shift: int = 0,
        train_on_val: bool = False,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        if task not in self.TASKS:
            raise ValueError(f"task must be one of {', '.join(self.TASKS)}, not {task!r}")
        if downsample not in (2, 4):
            raise ValueError(f"downsample must be 2 or 4, not {downsample!r}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, not {batch_size} and {eval_batch_size}")
        self.save_hyperparameters()
        self.source = SOURCES[source]
        h, w, c = self.source.shape
        if not 0 <= shift < min(h, w):
            raise ValueError(f"shift must be 0 (off) or a number of pixels below the image's side {min(h, w)}, not {shift!r}")
        if shift and task == "super_resolution":
            raise ValueError("shift augmentation is for the unconditional and class-conditional tasks; "
                             "set shift: 0 for super-resolution")
        levels = self.source.max_value + 1 if levels is None else levels
        if self.hparams.get("levels") != levels:  # record the resolved value: zoo fit links it into the model,
            self.save_hyperparameters({**self.hparams, "levels": levels})  # whose hparams must agree with ours
        self.hp = self.hparams
        self._tokenizer = PixelTokenizer(levels, self.source.max_value, c, height=h, width=w)
        self._src_tokenizer = (
            PixelTokenizer(levels, self.source.max_value, c, height=h // downsample, width=w // downsample)
            if task == "super_resolution" else self._tokenizer
        )
        self._raw: dict[str, Split] | None = None
        self.datasets: dict[str, PixelSet] = {}

    # -- vocabulary and shape ------------------------------------------------------------
    @property
    def tokenizer(self) -> PixelTokenizer:
        return self._tokenizer

    @property
    def tokenizers(self) -> tuple[PixelTokenizer, PixelTokenizer]:
        """(source, target): the low-resolution and full images' tokenizers for super-resolution, else one twice."""
        return self._src_tokenizer, self._tokenizer

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the target images."""
        return self.source.shape

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    # what ``zoo fit`` links into the model (zoo.cli.LINKABLE): the image's shape and levels
    @property
    def levels(self) -> int:
        return self._tokenizer.levels

    @property
    def height(self) -> int:
        return self.image_shape[0]

    @property
    def width(self) -> int:
        return self.image_shape[1]

    @property
    def channels(self) -> int:
        return self.image_shape[2]

    @property
    def src_height(self) -> int:
        """Height of the low-resolution input of super-resolution; 0 for the other tasks."""
        return self._src_tokenizer.height if self.hp.task == "super_resolution" else 0

    @property
    def src_width(self) -> int:
        """Width of the low-resolution input of super-resolution; 0 for the other tasks."""
        return self._src_tokenizer.width if self.hp.task == "super_resolution" else 0

    @property
    def pixel_task(self) -> str:
        """``unconditional``, ``class_conditional`` or ``super_resolution``."""
        return self.hp.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

    # -- raw images --------------------------------------------------------------------
    def _split(self, split: str) -> Split:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        if self._raw is None:
            hp = self.hp
            self._raw = load_splits(hp.source, hp.data_dir, hp.download, hp.split_seed)
            if hp.get("train_on_val", False):
                (x, y), (vx, vy) = self._raw["train"], self._raw["val"]
                self._raw["train"] = (np.concatenate([x, vx]), np.concatenate([y, vy]))
        images, labels = self._raw[split]
        limit = getattr(self.hp, f"{split}_limit")
        return (images[:limit], labels[:limit]) if limit else (images, labels)

    def images(self, split: str) -> np.ndarray:
        """Raw uint8 images of a split: (N, H, W) for grey sources, (N, H, W, 3) for colour."""
        return self._split(split)[0]

    def labels(self, split: str) -> np.ndarray:
        return self._split(split)[1]

    def low_res(self, split: str) -> np.ndarray:
        """The split's images shrunk by ``downsample`` (what super-resolution starts from)."""
        return downsample(self.images(split), self.hp.downsample)

    def describe(self) -> dict[str, Any]:
        """What the data was, for config.json and the model card."""
        hp, tok = self.hp, self._tokenizer
        d = {
            "dataset": hp.source,
            "description": self.source.description,
            "image_shape": list(self.image_shape),
            "levels": tok.levels,
            "max_value": tok.max_value,
            "order": "raster, channels interleaved",
            "task": hp.task,
            "num_classes": self.num_classes,
            "split_seed": hp.split_seed,
            "splits": {s: int(len(self.labels(s))) for s in ("train", "val", "test")},
        }
        if hp.get("shift", 0):
            d["augment"] = {"shift": hp.shift}
        if hp.get("train_on_val", False):
            d["train_on_val"] = True  # "train" counts the validation images too
        if hp.task == "super_resolution":
            d["downsample"] = hp.downsample
            d["low_res_shape"] = list(self._src_tokenizer.shape)
        return d

    # -- datasets ------------------------------------------------------------------------
    def _dataset(self, split: str) -> PixelSet:
        if split not in self.datasets:
            images, labels = self._split(split)
            pixels = torch.from_numpy(self._tokenizer.encode_array(images))
            src = None
            if self.hp.task == "super_resolution":
                src = torch.from_numpy(self._src_tokenizer.encode_array(downsample(images, self.hp.downsample)))
            shift = self.hp.get("shift", 0) if split == "train" else 0
            self.datasets[split] = PixelSet(pixels, torch.from_numpy(labels), self.bos_id, src,
                                            shift=shift, shape=self.image_shape, seed=self.hp.seed)
        return self.datasets[split]

    def _setup_split(self, split: str) -> None:
        self._dataset(split)

    def train_dataloader(self) -> DataLoader:
        data = self._dataset("train")
        t = self._tokenizer.seq_len
        sampler = TokenBatchSampler([t] * len(data), self.hp.batch_size * t, shuffle=True, seed=self.hp.seed)
        return batch_loader(data, sampler, data.collate, self.hp.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        data = self._dataset(split)
        return batch_loader(data, EvalBatchSampler(len(data), self.hp.eval_batch_size), data.collate,
                            self.hp.num_workers)
