"""Images as sequences of pixel intensities, for the Image Transformer (Parmar et al. 2018).

==================  ================================================================
``tokenizer``       ``PixelTokenizer``: images <-> raster-order token sequences
``sources``         scikit-learn digits, MNIST (IDX), CIFAR-10 (binary): where they are
                    found or downloaded, and their fixed train / val / test splits
``augment``         ``shift_images``: training images moved by a few pixels
``datamodule``      ``PixelDataModule`` for the unconditional, class-conditional and
                    super-resolution tasks (``downsample`` makes the small inputs)
``pictures``        ``image_grid`` and ``save_grid`` (PNG)
==================  ================================================================

Every public name is importable from ``zoo.data.pixels`` itself. The data sets are looked
for in the folders ``_candidate_dirs(data_dir)`` lists (as Multi30k is).
"""

from zoo.data.pixels.augment import shift_images
from zoo.data.pixels.datamodule import PixelDataModule, PixelSet, downsample
from zoo.data.pixels.pictures import image_grid, save_grid
from zoo.data.pixels.sources import (CIFAR10_MD5, CIFAR10_NAMES, CIFAR10_RECORD, CIFAR10_URL, DIGIT_NAMES,
                                     MNIST_FULL_VAL, MNIST_MD5, MNIST_MIRRORS, SOURCES, MissingDataError,
                                     PixelSource, Split, check_labels, find_cifar10, find_mnist, load_cifar10,
                                     load_digits, load_mnist, load_splits, read_cifar10_bin, read_idx, split_indices)
from zoo.data.pixels.tokenizer import PixelTokenizer, check_levels
from zoo.data.text import _candidate_dirs

__all__ = [
    "CIFAR10_MD5", "CIFAR10_NAMES", "CIFAR10_RECORD", "CIFAR10_URL", "DIGIT_NAMES", "MNIST_FULL_VAL", "MNIST_MD5",
    "MNIST_MIRRORS", "SOURCES",
    "MissingDataError", "PixelDataModule", "PixelSet", "PixelSource", "PixelTokenizer", "Split",
    "check_labels", "check_levels", "downsample", "find_cifar10", "find_mnist", "image_grid", "load_cifar10",
    "load_digits", "load_mnist", "load_splits", "read_cifar10_bin", "read_idx", "save_grid", "shift_images",
    "split_indices",
]
