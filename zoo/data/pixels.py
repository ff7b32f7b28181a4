"""Images as sequences of pixel intensities, for the Image Transformer (Parmar et al. 2018).

An image becomes a sequence in raster order, the channels of a pixel side by side
(r, g, b of pixel (0, 0), then of pixel (0, 1), ...), each intensity quantised to
``levels`` values. A model predicts each intensity from all the earlier ones: a
softmax over ``levels`` classes per sub-pixel, as in the paper (which uses 256).

Sources, with their fixed splits (a permutation drawn once from ``split_seed``, 0 by
default, and kept apart from the training-order ``seed`` so that every run of every
model is measured on the same images):

=====================  ========  ======  ======  =====  ======  ===============================
source                 image     range   train   val    test    test images
=====================  ========  ======  ======  =====  ======  ===============================
``digits``             8x8x1     0..16   1,497   150    150     held out of the 1,797
``mnist`` (t10k only)  28x28x1   0..255  8,500   500    1,000   held out of the 10,000
``mnist`` (full)       28x28x1   0..255  55,000  5,000  10,000  the official t10k file
``cifar10``            32x32x3   0..255  45,000  5,000  10,000  the official ``test_batch.bin``
=====================  ========  ======  ======  =====  ======  ===============================

``digits`` is scikit-learn's copy of the UCI handwritten digits (shipped in the package,
so it works offline). MNIST is read from IDX files (gzip or plain) in a folder found as
for Multi30k (``data_dir``, ``$ZOO_DATA_DIR``, ``../shared/data``, the download cache),
or downloaded from a public mirror when online. With only the 10,000-image t10k file, as
in ``../shared/data/mnist``, the model trains on 9,000 images (8,500 + 500 for
validation) and is measured on the other 1,000. Smaller files than these (your own, or
a test's) keep the same rules with validation and test capped at a tenth of the pool.

CIFAR-10 is read in its *binary* version (``cifar-10-batches-bin``: ``data_batch_1.bin``
... ``data_batch_5.bin``, ``test_batch.bin``; each record one label byte and 3,072 pixel
bytes, red plane, green plane, blue plane, each row-major). The better known "python
version" is a set of pickles, and the zoo never unpickles a download: unpickling runs
whatever code the file names, and a restricted unpickler is one more thing to get exactly
right. The binary version holds the same images and is read with ``numpy.fromfile``.

Super-resolution pairs: the low-resolution image is the mean of each 2x2 or 4x4 block of
the raw intensities, per channel, rounded half up, then quantised to the same ``levels``
(8x8 digits -> 4x4 or 2x2; MNIST 28 -> 14 or 7; CIFAR-10 32 -> 16 or 8).

Tokens: ``0 .. levels-1`` are intensities, ``bos_id = levels`` starts every sequence,
and ``pad_id = levels + 1`` is a real id that never occurs in a batch (every image has
the same length). It is not shared with ``bos_id`` because the zoo's models build
``nn.Embedding(padding_idx=pad_id)``, which keeps that row at zero and never trains it:
a start token sharing it would have no embedding of its own. The loss's
``ignore_index=pad_id`` then ignores nothing, as it should. There is no end token: a
sampler stops after ``height * width * channels`` tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import EvalBatchSampler, ProcessRNG, SequenceDataModule, TokenBatchSampler, batch_loader
from zoo.data.text import DOWNLOAD_DIR, _candidate_dirs
from zoo.data.tokenizer import JsonTokenizer

log = logging.getLogger(__name__)


class MissingDataError(FileNotFoundError, ValueError):
    """A data folder or file is missing: a ``FileNotFoundError`` that is also a ``ValueError``."""


# -- tokenizer ------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def check_levels(levels: int, max_value: int) -> None:
    """``levels`` must split ``0..max_value`` into equal bins."""
    if not isinstance(levels, int) or levels < 2 or (max_value + 1) % levels:
        works = ", ".join(map(str, _divisors(max_value + 1)))
        raise ValueError(
            f"levels={levels} does not divide the {max_value + 1} intensities 0..{max_value} evenly; use one of {works}"
        )


def check_labels(labels: Any, num_classes: int, where: str = "labels") -> None:
    """Every label must be a class index ``0 .. num_classes-1``."""
    arr = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    bad = arr[(arr < 0) | (arr >= num_classes)] if arr.size else arr
    if bad.size:
        raise ValueError(
            f"label {int(bad.flat[0])} in {where} is outside the {num_classes} classes 0..{num_classes - 1}; "
            "give class indices, or check the label file"
        )


class PixelTokenizer(JsonTokenizer):
    """Images (N, H, W) or (N, H, W, C) of integers 0..max_value <-> token sequences (N, H*W*C).

    ``token = value * levels // (max_value + 1)``; decoding gives the value in the middle of
    the token's bin (the upper middle one when the bin is even), which is the value itself
    when ``levels == max_value + 1``. Saved as a small JSON file beside a checkpoint.
    """

    eos_id = None  # fixed-length sequences: no end token

    def __init__(self, levels: int, max_value: int = 255, channels: int = 1, *, height: int, width: int) -> None:
        for name, v in (("max_value", max_value), ("channels", channels), ("height", height), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        check_levels(levels, max_value)
        self.levels, self.max_value, self.channels, self.height, self.width = levels, max_value, channels, height, width
        self.bin = (max_value + 1) // levels  # intensities per token

    # -- ids and shape ---------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self.levels

    @property
    def pad_id(self) -> int:
        return self.levels + 1

    @property
    def vocab_size(self) -> int:
        return self.levels + 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images this tokenizer reads."""
        return self.height, self.width, self.channels

    @property
    def seq_len(self) -> int:
        return self.height * self.width * self.channels

    def coords(self) -> np.ndarray:
        """(T, 3): the (row, column, channel) of every position of a sequence."""
        r, c, ch = np.unravel_index(np.arange(self.seq_len), self.shape)
        return np.stack([r, c, ch], axis=1)

    # -- values <-> tokens -----------------------------------------------------------
    def quantize(self, values: Any) -> np.ndarray:
        """Intensities 0..max_value (any shape) -> tokens 0..levels-1, same shape."""
        v = np.asarray(values.cpu() if isinstance(values, Tensor) else values)
        if v.dtype.kind == "f":
            if v.size and not np.all(np.isfinite(v) & (v == np.round(v))):
                raise ValueError(
                    f"pixel values must be whole numbers 0..{self.max_value}; got fractions "
                    f"(scale floats in [0, 1] by {self.max_value} and round them first)"
                )
        elif v.dtype.kind not in "iub":
            raise ValueError(f"pixel values must be integers 0..{self.max_value}, not {v.dtype}")
        if v.size and (v.min() < 0 or v.max() > self.max_value):
            raise ValueError(
                f"pixel values must lie in 0..{self.max_value} for this tokenizer; found {v.min()}..{v.max()} "
                "(rescale the images, or make a tokenizer with a larger max_value)"
            )
        dtype = np.uint8 if self.levels <= 256 else np.int32
        return (v.astype(np.int64) // self.bin).astype(dtype)

    def dequantize(self, tokens: Any) -> np.ndarray:
        """Tokens 0..levels-1 (any shape) -> intensities at the middle of their bins."""
        t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens).astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.levels):
            bad = int(t.max()) if t.max() >= self.levels else int(t.min())
            raise ValueError(
                f"token {bad} is not an intensity (those are 0..{self.levels - 1}; {self.bos_id} is the start "
                f"token, {self.pad_id} padding); strip the start token before decoding"
            )
        dtype = np.uint8 if self.max_value <= 255 else np.int32
        return (t * self.bin + self.bin // 2).astype(dtype)

    def _check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
        h, w, c = self.shape
        ok = (x.ndim == 4 and x.shape[1:] == (h, w, c)) or (c == 1 and x.ndim == 3 and x.shape[1:] == (h, w))
        if not ok:
            want = f"(N, {h}, {w}) or (N, {h}, {w}, 1)" if c == 1 else f"(N, {h}, {w}, {c})"
            hint = "; add a batch axis (images[None])" if x.ndim in (2, 3) and x.shape[:2] == (h, w) else ""
            raise ValueError(
                f"this tokenizer reads images of shape {want} ({h}x{w}, {c} channel{'s' * (c > 1)}), "
                f"got {tuple(x.shape)}{hint}"
            )
        return x

    def encode_array(self, images: Any) -> np.ndarray:
        """Like :meth:`encode`, as a small-integer numpy array (N, T), for storing many images."""
        x = self._check_images(images)
        return self.quantize(x).reshape(len(x), self.seq_len)  # C order: raster, channels interleaved

    def encode(self, images: Any) -> Tensor:
        """Images (N, H, W) or (N, H, W, C) -> tokens (N, H*W*C), long."""
        return torch.from_numpy(self.encode_array(images).astype(np.int64))

    def decode(self, tokens: Any) -> np.ndarray:
        """Tokens (N, T) or (T,) -> images (N, H, W) for one channel, else (N, H, W, C).

        A leading start token (sequences of length T + 1 beginning with ``bos_id``, as a
        sampler returns them) is dropped.
        """
        t = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens)
        if t.ndim == 1:
            t = t[None]
        if t.ndim == 2 and t.shape[1] == self.seq_len + 1 and np.all(t[:, 0] == self.bos_id):
            t = t[:, 1:]
        if t.ndim != 2 or t.shape[1] != self.seq_len:
            raise ValueError(
                f"expected token sequences (N, {self.seq_len}) for {self.height}x{self.width}x{self.channels} "
                f"images, got {tuple(t.shape)}"
            )
        x = self.dequantize(t).reshape(len(t), *self.shape)
        return x[..., 0] if self.channels == 1 else x

    # -- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "pixels",
            "levels": self.levels,
            "max_value": self.max_value,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "order": "raster, channels interleaved",
            "special_tokens": {"bos": self.bos_id, "pad": self.pad_id},
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PixelTokenizer":
        if d.get("type") != "pixels":
            raise ValueError(f"not a pixel tokenizer (type={d.get('type')!r}); expected a file saved by PixelTokenizer")
        try:
            return cls(d["levels"], d["max_value"], d["channels"], height=d["height"], width=d["width"])
        except KeyError as err:
            raise ValueError(f"pixel tokenizer description lacks {err}; re-save it with PixelTokenizer.save") from None

    @classmethod
    def _parse(cls, text: str) -> dict[str, Any]:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"pixel tokenizer is not valid JSON ({err}); re-save it") from None
        return d if isinstance(d, dict) else {}

    def __repr__(self) -> str:
        return (f"PixelTokenizer(levels={self.levels}, max_value={self.max_value}, channels={self.channels}, "
                f"height={self.height}, width={self.width})")


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


# -- sources ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelSource:
    """What the data module needs to know about a source before reading it."""

    name: str
    description: str
    shape: tuple[int, int, int]  # (H, W, C)
    max_value: int
    class_names: tuple[str, ...]
    val_size: int
    test_size: int  # held out of the pool when the source has no test file of its own

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DIGIT_NAMES = tuple(str(i) for i in range(10))
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = {
    "digits": PixelSource("digits", "scikit-learn 8x8 handwritten digits (UCI), 17 grey levels",
                          (8, 8, 1), 16, DIGIT_NAMES, val_size=150, test_size=150),
    "mnist": PixelSource("mnist", "MNIST 28x28 handwritten digits, 256 grey levels",
                         (28, 28, 1), 255, DIGIT_NAMES, val_size=500, test_size=1000),
    "cifar10": PixelSource("cifar10", "CIFAR-10 32x32 colour images (binary version), 256 levels per channel",
                           (32, 32, 3), 255, CIFAR10_NAMES, val_size=5000, test_size=0),  # has test_batch.bin
}
MNIST_FULL_VAL = 5000  # val held out of MNIST's 60,000 training images when the train file is there

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_RECORD = 1 + 32 * 32 * 3

Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, H, W[, C]), labels int64 (N,)


def load_digits() -> Split:
    """scikit-learn's 1,797 8x8 digits: images uint8 (N, 8, 8) in 0..16, labels 0..9."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("source='digits' needs scikit-learn: pip install scikit-learn") from None
    d = sk_load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def _fetch(urls: Sequence[str], target: Path, md5: str) -> None:
    """Download the first URL that answers to ``target``, checking its MD5; atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        tmp = target.with_name(target.name + ".part")
        try:
            digest = hashlib.md5()
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != md5:
                raise OSError(f"{url} has MD5 {digest.hexdigest()}, expected {md5}")
            os.replace(tmp, target)
            return
        except OSError as err:
            errors.append(str(err))
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(errors))


def _open(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format), gzip or plain, as a uint8 array."""
    path = Path(path)
    data = _open(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic {data[:4].hex()}); is it MNIST?")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    if len(data) - start != math.prod(dims):
        raise ValueError(f"{path} holds {len(data) - start} bytes after its header but {dims} needs {math.prod(dims)}; "
                         "the file is truncated or corrupt, download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def _mnist_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def find_mnist(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder holding MNIST's IDX files (t10k at least), found locally or downloaded.

    Each candidate may be the folder itself or a folder with an ``mnist/`` inside.
    """
    looked = []
    for d in _candidate_dirs(data_dir):
        for folder in (d, d / "mnist"):
            looked.append(str(folder))
            if _mnist_file(folder, "t10k-images-idx3-ubyte") or _mnist_file(folder, "train-images-idx3-ubyte"):
                return folder
    if download:
        dest = DOWNLOAD_DIR / "mnist"
        try:
            for name, md5 in MNIST_MD5.items():
                if not (dest / name).exists():
                    _fetch([m + name for m in MNIST_MIRRORS], dest / name, md5)
            return dest
        except OSError as err:
            looked.append(f"download failed: {err}")
    raise MissingDataError(
        "MNIST not found (looked in " + "; ".join(looked) + "); set data_dir or ZOO_DATA_DIR to the folder "
        "holding t10k-images-idx3-ubyte.gz, or go online to download it"
    )


def _read_mnist_pair(folder: Path, prefix: str) -> Split:
    images_path = _mnist_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _mnist_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        missing = f"{prefix}-images-idx3-ubyte" if images_path is None else f"{prefix}-labels-idx1-ubyte"
        raise MissingDataError(f"{folder} lacks {missing}(.gz); MNIST needs both the images and the labels file")
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} holds images of shape {images.shape[1:]}, not 28x28; is it MNIST?")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path} has {len(labels)} labels for {len(images)} images in {images_path}")
    check_labels(labels, 10, str(labels_path))
    return images, labels


def load_mnist(data_dir: str | None = None, download: bool = True) -> dict[str, Split]:
    """MNIST as found: ``{"test": t10k (10,000)}`` and, when its files are there, ``"train"`` (60,000)."""
    folder = find_mnist(data_dir, download)
    out = {}
    if _mnist_file(folder, "train-images-idx3-ubyte"):
        out["train"] = _read_mnist_pair(folder, "train")
    out["test"] = _read_mnist_pair(folder, "t10k")  # the official test set, always
    return out


def read_cifar10_bin(path: str | os.PathLike) -> Split:
    """One CIFAR-10 binary batch: images uint8 (N, 32, 32, 3), labels int64 (N,)."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % CIFAR10_RECORD:
        raise ValueError(f"{path} is {data.size} bytes, not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 records; "
                         "is it from the binary version (cifar-10-batches-bin)?")
    records = data.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    check_labels(labels, 10, str(path))
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes -> (N, H, W, C)
    return np.ascontiguousarray(images), labels


def _cifar_batches(folder: Path) -> list[Path]:
    return sorted(folder.glob("data_batch_*.bin"))


def find_cifar10(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder holding CIFAR-10's binary batches, found locally or downloaded (162 MB)."""
    looked, pickles = [], []
    for d in _candidate_dirs(data_dir):
        for folder in (d, d / "cifar-10-batches-bin", d / "cifar10", d / "cifar10" / "cifar-10-batches-bin"):
            looked.append(str(folder))
            if _cifar_batches(folder):
                return folder
            if (folder / "data_batch_1").exists():
                pickles.append(str(folder))
    if download:
        try:
            return _download_cifar10(DOWNLOAD_DIR / "cifar10")
        except (OSError, tarfile.TarError) as err:
            looked.append(f"download failed: {err}")
    hint = (f"; {', '.join(pickles)} holds the python (pickle) version, which the zoo does not unpickle: "
            "use the binary version, cifar-10-binary.tar.gz") if pickles else ""
    raise MissingDataError(
        "CIFAR-10 binary batches (data_batch_1.bin ...) not found (looked in " + "; ".join(looked) + ")"
        + hint + "; set data_dir or ZOO_DATA_DIR to the cifar-10-batches-bin folder, or go online to download it"
    )


def _download_cifar10(dest: Path) -> Path:
    wanted = {f"data_batch_{i}.bin" for i in range(1, 6)} | {"test_batch.bin", "batches.meta.txt"}
    if all((dest / name).exists() for name in wanted):
        return dest
    archive = DOWNLOAD_DIR / "cifar-10-binary.tar.gz"
    if not archive.exists():
        _fetch([CIFAR10_URL], archive, CIFAR10_MD5)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # copy only the expected regular files, by base name: no paths from the archive
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in wanted:
                src = tar.extractfile(member)
                tmp = dest / (name + ".part")
                with src, open(tmp, "wb") as f:
                    shutil.copyfileobj(src, f)
                os.replace(tmp, dest / name)
    archive.unlink()
    return dest


def load_cifar10(data_dir: str | None = None, download: bool = True) -> dict[str, Split]:
    """CIFAR-10 binary: ``{"train": data_batch_*.bin joined, "test": test_batch.bin}``."""
    folder = find_cifar10(data_dir, download)
    if not (folder / "test_batch.bin").exists():
        raise MissingDataError(
            f"{folder} has data batches but no test_batch.bin; copy the whole cifar-10-batches-bin folder"
        )
    parts = [read_cifar10_bin(p) for p in _cifar_batches(folder)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return {"train": train, "test": read_cifar10_bin(folder / "test_batch.bin")}


def split_indices(n: int, n_val: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed permutation of ``range(n)`` from ``seed``, cut into test, val and train (each sorted)."""
    if n_val + n_test >= n:
        raise ValueError(f"{n} images are too few to hold out {n_val} for validation and {n_test} for test")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    return {k: np.sort(v) for k, v in cuts.items()}


def _held_out(size: int, pool: int) -> int:
    """The fixed size, capped at a tenth of a smaller pool (your own or a test's files)."""
    return max(1, min(size, pool // 10))


def load_splits(
    source: str, data_dir: str | None = None, download: bool = True, split_seed: int = 0
) -> dict[str, Split]:
    """``{"train", "val", "test"}`` raw images and labels of a source, split as the module docstring says."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    spec = SOURCES[source]
    files = ({"pool": load_digits()} if source == "digits"
             else load_mnist(data_dir, download) if source == "mnist" else load_cifar10(data_dir, download))
    if "train" in files:  # a test file of its own: hold validation out of the training file
        pool, test = files["train"], files["test"]
        val_size = MNIST_FULL_VAL if source == "mnist" else spec.val_size
        idx = split_indices(len(pool[0]), _held_out(val_size, len(pool[0])), 0, split_seed)
        out = {"test": test}
    else:  # one pool: hold out test and validation
        pool = files.get("pool", files.get("test"))
        n = len(pool[0])
        idx = split_indices(n, _held_out(spec.val_size, n), _held_out(spec.test_size, n), split_seed)
        out = {"test": (pool[0][idx["test"]], pool[1][idx["test"]])}
    out["train"] = (pool[0][idx["train"]], pool[1][idx["train"]])
    out["val"] = (pool[0][idx["val"]], pool[1][idx["val"]])
    return out


# -- data module ----------------------------------------------------------------------
def shift_images(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move each image (N, H, W[, C]) by a random whole number of pixels, up to ``max_shift``
    each way in each direction, filling with 0; a shift that would push a non-zero pixel out of
    the frame is narrowed so that none is lost (an all-zero image stays put)."""
    out = np.zeros_like(images)
    for i, img in enumerate(images):
        ink = img != 0 if img.ndim == 2 else (img != 0).any(axis=-1)
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if len(rows) == 0:
            out[i] = img
            continue
        h, w = ink.shape
        dy = int(rng.integers(-min(max_shift, rows[0]), min(max_shift, h - 1 - rows[-1]) + 1))
        dx = int(rng.integers(-min(max_shift, cols[0]), min(max_shift, w - 1 - cols[-1]) + 1))
        out[i, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
            img[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


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

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in splits.get(stage or "fit", ["train", "val", "test"]):
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


# -- pictures -----------------------------------------------------------------------
def image_grid(images: Any, ncols: int | None = None, pad: int = 1, pad_value: int = 0) -> np.ndarray:
    """(N, H, W[, C]) images -> one (rows*(H+pad)+pad, cols*(W+pad)+pad[, C]) array, row by row."""
    x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
    if x.ndim not in (3, 4) or len(x) == 0:
        raise ValueError(f"image_grid takes a non-empty stack (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w = x.shape[:3]
    cols = ncols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *x.shape[3:]), pad_value, dtype=x.dtype)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def save_grid(
    path: str | os.PathLike, images: Any, max_value: int = 255, ncols: int | None = None, scale: int = 4
) -> Path:
    """Write a grid of images as a PNG (grey or RGB), each pixel ``scale`` x ``scale``; returns the path."""
    from matplotlib import image as mpimg

    grid = image_grid(images, ncols).astype(np.float64) / max_value
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if grid.ndim == 3 and grid.shape[2] == 1:
        grid = grid[..., 0]
    path = Path(path)
    if grid.ndim == 2:
        mpimg.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        mpimg.imsave(path, np.clip(grid, 0.0, 1.0))
    return path
