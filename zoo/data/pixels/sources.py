"""The image data sets, where they are found or downloaded, and their fixed splits.

Each split is a permutation drawn once from ``split_seed`` (0 by default) and kept apart
from the training-order ``seed``, so that every run of every model is measured on the same
images:

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

Downloads are checked against the MD5 digests their publishers give.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from zoo.data.download import fetch
from zoo.data.text import DOWNLOAD_DIR
from zoo.io import atomic_write


class MissingDataError(FileNotFoundError, ValueError):
    """A data folder or file is missing: a ``FileNotFoundError`` that is also a ``ValueError``."""


def check_labels(labels: Any, num_classes: int, where: str = "labels") -> None:
    """Every label must be a class index ``0 .. num_classes-1``."""
    arr = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    bad = arr[(arr < 0) | (arr >= num_classes)] if arr.size else arr
    if bad.size:
        raise ValueError(
            f"label {int(bad.flat[0])} in {where} is outside the {num_classes} classes 0..{num_classes - 1}; "
            "give class indices, or check the label file"
        )


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


def _data_dirs(data_dir: str | None) -> list[Path]:
    """The folders searched for a data set: ``zoo.data.pixels._candidate_dirs`` (Multi30k's rule),
    looked up on the package when called, so that replacing it there narrows the search."""
    from zoo.data import pixels

    return pixels._candidate_dirs(data_dir)


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
    for d in _data_dirs(data_dir):
        for folder in (d, d / "mnist"):
            looked.append(str(folder))
            if _mnist_file(folder, "t10k-images-idx3-ubyte") or _mnist_file(folder, "train-images-idx3-ubyte"):
                return folder
    if download:
        dest = DOWNLOAD_DIR / "mnist"
        try:
            for name, md5 in MNIST_MD5.items():
                if not (dest / name).exists():
                    fetch([m + name for m in MNIST_MIRRORS], dest / name, md5=md5)
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
    for d in _data_dirs(data_dir):
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


def _copy(src: Any, path: str) -> None:
    """Write the file object ``src`` to ``path``."""
    with open(path, "wb") as f:
        shutil.copyfileobj(src, f)


def _download_cifar10(dest: Path) -> Path:
    wanted = {f"data_batch_{i}.bin" for i in range(1, 6)} | {"test_batch.bin", "batches.meta.txt"}
    if all((dest / name).exists() for name in wanted):
        return dest
    archive = DOWNLOAD_DIR / "cifar-10-binary.tar.gz"
    if not archive.exists():
        fetch([CIFAR10_URL], archive, md5=CIFAR10_MD5)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # copy only the expected regular files, by base name: no paths from the archive
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in wanted:
                with tar.extractfile(member) as src:
                    atomic_write(dest / name, partial(_copy, src))
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
