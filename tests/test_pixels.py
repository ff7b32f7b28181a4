"""Pixel data: tokenizer round trips and order, sources and their splits, batches, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import pixels
from zoo.data.pixels import (
    PixelDataModule,
    PixelTokenizer,
    check_labels,
    downsample,
    find_mnist,
    image_grid,
    load_splits,
    read_cifar10_bin,
    read_idx,
    save_grid,
    shift_images,
)


def rng_images(shape, high=256, seed=0):
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=np.int64).astype(np.uint8)


# -- tokenizer ------------------------------------------------------------------------
def test_round_trip_exact_at_full_levels():
    tok = PixelTokenizer(256, height=5, width=4, channels=3)
    x = rng_images((6, 5, 4, 3))
    ids = tok.encode(x)
    assert ids.shape == (6, 60) and ids.dtype == torch.long
    assert np.array_equal(tok.decode(ids), x)
    digits = PixelTokenizer(17, max_value=16, height=8, width=8)
    d = rng_images((3, 8, 8), high=17)
    assert np.array_equal(digits.decode(digits.encode(d)), d)
    assert digits.decode(digits.encode(d)).shape == (3, 8, 8)  # grey images come back without a channel axis


@pytest.mark.parametrize("levels", [2, 8, 16, 64])
def test_round_trip_within_bin_at_fewer_levels(levels):
    tok = PixelTokenizer(levels, height=4, width=4)
    x = rng_images((10, 4, 4))
    ids = tok.encode(x)
    assert int(ids.max()) < levels
    y = tok.decode(ids)
    width = 256 // levels
    assert np.array_equal(x // width, y // width)  # same bin
    assert np.abs(x.astype(int) - y.astype(int)).max() <= width // 2
    assert torch.equal(tok.encode(y), ids)  # decoding gives a bin's representative
    assert tok.dequantize(np.arange(levels)).tolist() == (np.arange(levels) * width + width // 2).tolist()


def test_raster_order_channels_interleaved():
    tok = PixelTokenizer(256, channels=3, height=2, width=2)
    img = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], dtype=np.uint8)  # (H, W, C)
    assert tok.encode(img[None]).tolist() == [list(range(1, 13))]
    assert tok.coords()[:4].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]
    grey = PixelTokenizer(256, height=2, width=2)
    assert grey.encode(np.array([[[1, 2], [3, 4]]])).tolist() == [[1, 2, 3, 4]]
    assert grey.encode(np.array([[[[1], [2]], [[3], [4]]]])).tolist() == [[1, 2, 3, 4]]  # (N, H, W, 1) too


def test_special_ids_and_json():
    tok = PixelTokenizer(16, height=28, width=28)
    assert (tok.bos_id, tok.pad_id, tok.vocab_size, tok.seq_len, tok.eos_id) == (16, 17, 18, 784, None)
    assert PixelTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    assert PixelTokenizer.from_str(tok.to_str()) == tok


def test_save_and_load_file(tmp_path):
    tok = PixelTokenizer(64, channels=3, height=32, width=32)
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text())["type"] == "pixels"
    assert PixelTokenizer.from_file(tmp_path / "tokenizer.json") == tok
    (tmp_path / "bad.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match="not a pixel tokenizer"):
        PixelTokenizer.from_file(tmp_path / "bad.json")


def test_decode_drops_start_token():
    tok = PixelTokenizer(256, height=2, width=2)
    seq = torch.tensor([[tok.bos_id, 1, 2, 3, 4]])
    assert tok.decode(seq).tolist() == [[[1, 2], [3, 4]]]


# -- errors ---------------------------------------------------------------------------
def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_levels_must_divide_range():
    with pytest.raises(ValueError) as err:
        PixelTokenizer(10, height=2, width=2)
    assert "2, 4, 8, 16, 32, 64, 128, 256" in one_line(err) and "levels=10" in one_line(err)
    with pytest.raises(ValueError, match="use one of 17$"):
        PixelDataModule(source="digits", levels=8)
    with pytest.raises(ValueError, match="levels=300"):
        PixelDataModule(source="mnist", levels=300)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 3, 2, 3), r"\(N, 2, 2, 3\).*got \(2, 3, 2, 3\)"),  # wrong size
        ((2, 2, 2, 1), r"\(N, 2, 2, 3\).*got \(2, 2, 2, 1\)"),  # wrong channel count
        ((2, 2, 3), r"got \(2, 2, 3\); add a batch axis"),  # one image without its batch axis
    ],
)
def test_wrong_image_shape(shape, match):
    tok = PixelTokenizer(256, channels=3, height=2, width=2)
    with pytest.raises(ValueError, match=match) as err:
        tok.encode(np.zeros(shape, dtype=np.uint8))
    one_line(err)


def test_bad_values_and_tokens():
    tok = PixelTokenizer(17, max_value=16, height=2, width=2)
    with pytest.raises(ValueError, match=r"0\.\.16 .*found 0\.\.40") as err:
        tok.encode(np.array([[[0, 1], [2, 40]]]))
    one_line(err)
    with pytest.raises(ValueError, match="whole numbers"):
        tok.encode(np.full((1, 2, 2), 0.5))
    assert tok.encode(np.full((1, 2, 2), 3.0)).tolist() == [[3, 3, 3, 3]]  # whole floats are fine
    with pytest.raises(ValueError, match="token 17 is not an intensity.*strip the start token"):
        tok.decode(torch.tensor([[17, 1, 2, 3]]))
    with pytest.raises(ValueError, match=r"expected token sequences \(N, 4\)"):
        tok.decode(torch.zeros(1, 7, dtype=torch.long))


def test_labels_outside_classes():
    check_labels(np.array([0, 9]), 10)
    with pytest.raises(ValueError, match=r"label 12 in labels is outside the 10 classes 0\.\.9") as err:
        check_labels(torch.tensor([3, 12]), 10)
    one_line(err)
    with pytest.raises(ValueError, match="label -1"):
        check_labels([-1], 10)


def test_bad_settings():
    with pytest.raises(ValueError, match="source must be one of digits, mnist, cifar10, not 'svhn'"):
        PixelDataModule(source="svhn")
    with pytest.raises(ValueError, match="task must be one of unconditional"):
        PixelDataModule(task="inpainting")
    with pytest.raises(ValueError, match="downsample must be 2 or 4, not 3"):
        PixelDataModule(downsample=3)
    with pytest.raises(ValueError, match="cannot downsample 6x6 images by 4"):
        downsample(np.zeros((1, 6, 6)), 4)
    with pytest.raises(ValueError, match="split must be train, val or test"):
        PixelDataModule().images("dev")


def test_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(pixels, "_candidate_dirs", lambda d: [Path(d)])
    for source, what in (("mnist", "MNIST not found"), ("cifar10", "CIFAR-10 binary batches")):
        dm = PixelDataModule(source=source, data_dir=str(tmp_path / "nowhere"), download=False)
        with pytest.raises(ValueError, match=what) as err:
            dm.setup()
        assert "set data_dir or ZOO_DATA_DIR" in one_line(err) and isinstance(err.value, FileNotFoundError)


def test_missing_and_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.setattr(pixels, "_candidate_dirs", lambda d: [Path(d)])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng_images((4, 28, 28)))
    with pytest.raises(ValueError, match="lacks t10k-labels-idx1-ubyte"):
        load_splits("mnist", str(tmp_path), download=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        load_splits("mnist", str(tmp_path), download=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], dtype=np.uint8))
    with pytest.raises(ValueError, match="has 3 labels for 4 images"):
        load_splits("mnist", str(tmp_path), download=False)
    (tmp_path / "trunc").write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a whole number of 3073-byte CIFAR-10 records"):
        read_cifar10_bin(tmp_path / "short.bin")
    pickled = tmp_path / "py"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="python \\(pickle\\) version, which the zoo does not unpickle"):
        PixelDataModule(source="cifar10", data_dir=str(pickled), download=False).setup()


# -- digits ---------------------------------------------------------------------------
def test_digits_splits_fixed_by_seed():
    dm = PixelDataModule(source="digits")
    sizes = {s: len(dm.images(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1497, "val": 150, "test": 150}
    assert dm.images("train").shape[1:] == (8, 8) and dm.images("train").dtype == np.uint8
    assert dm.images("train").max() == 16 and set(dm.labels("test").tolist()) == set(range(10))
    assert (dm.vocab_size, dm.pad_id, dm.bos_id, dm.image_shape, dm.num_classes) == (19, 18, 17, (8, 8, 1), 10)
    again = PixelDataModule(source="digits", seed=5)  # the training-order seed leaves the split alone
    assert np.array_equal(again.images("test"), dm.images("test"))
    other = PixelDataModule(source="digits", split_seed=1)
    assert not np.array_equal(other.images("test"), dm.images("test"))
    idx = pixels.split_indices(1797, 150, 150, 0)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(1797))  # disjoint and complete
    json.dumps(dm.describe())
    assert dm.describe()["splits"] == sizes


def test_digits_batches():
    dm = PixelDataModule(source="digits", batch_size=8, eval_batch_size=50, train_limit=40, val_limit=20)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 5
    b = batches[0]
    assert set(b) == {"tokens", "targets", "labels"}
    assert b["tokens"].shape == b["targets"].shape == (8, 64) and b["labels"].shape == (8,)
    assert all(t.dtype == torch.long for t in b.values())
    assert (b["tokens"][:, 0] == dm.bos_id).all() and torch.equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    assert int(b["targets"].max()) <= 16 and not (b["targets"] == dm.pad_id).any()
    seen = torch.cat([x["targets"] for x in batches])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, dm.tokenizer.encode(dm.images("train")).tolist()))
    # the training order follows seed (and the epoch), reproducibly
    first = [x["labels"] for x in PixelDataModule(source="digits", batch_size=8, train_limit=40).train_dataloader()]
    assert torch.equal(first[0], b["labels"])
    other = next(iter(PixelDataModule(source="digits", batch_size=8, train_limit=40, seed=3).train_dataloader()))
    assert not torch.equal(other["targets"], b["targets"])
    val = next(iter(dm.val_dataloader()))
    assert val["tokens"].shape == (20, 64)
    assert torch.equal(val["targets"], dm.tokenizer.encode(dm.images("val")))  # evaluation keeps file order


def test_shift_images_moves_ink_without_losing_it():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 8, 8), dtype=np.uint8)
    img[0, 2:5, 3:6] = rng.integers(1, 256, size=(3, 3))
    seen = set()
    for _ in range(200):
        out = shift_images(img, 2, rng)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert sorted(out[out != 0].tolist()) == sorted(img[img != 0].tolist())  # every inked pixel kept
        ys, xs = np.nonzero(out[0])
        dy, dx = ys.min() - 2, xs.min() - 3
        assert np.array_equal(out[0, 2 + dy : 5 + dy, 3 + dx : 6 + dx], img[0, 2:5, 3:6])  # moved as a whole
        seen.add((int(dy), int(dx)))
    assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # all 25 shifts drawn
    # ink on the border: the shift narrows so nothing leaves the frame; a blank image stays blank
    edge = np.zeros((2, 6, 6, 3), dtype=np.uint8)
    edge[0, 0, 5] = (9, 0, 7)  # top-right corner, colour
    for _ in range(50):
        out = shift_images(edge, 3, rng)
        ys, xs = np.nonzero(out[0].any(axis=-1))
        assert len(ys) == 1 and ys[0] in range(0, 4) and xs[0] in range(2, 6)
        assert out[0, ys[0], xs[0]].tolist() == [9, 0, 7] and not out[1].any()


def test_shift_augmentation_in_training_batches_only():
    kw = dict(source="digits", batch_size=8, eval_batch_size=50, train_limit=40, val_limit=20)
    plain, shifted = PixelDataModule(**kw), PixelDataModule(**kw, shift=2)
    a, b = next(iter(plain.train_dataloader())), next(iter(shifted.train_dataloader()))
    assert torch.equal(a["labels"], b["labels"])  # same order, same images
    assert not torch.equal(a["targets"], b["targets"])
    assert torch.equal(a["targets"].sort(dim=1).values, b["targets"].sort(dim=1).values)  # same pixels, moved
    assert torch.equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    for split in ("val", "test"):  # evaluation sees the images as they are
        loader = getattr(shifted, f"{split}_dataloader")()
        assert torch.equal(next(iter(loader))["targets"], next(iter(getattr(plain, f"{split}_dataloader")()))["targets"])
    assert shifted.describe()["augment"] == {"shift": 2} and "augment" not in plain.describe()
    with pytest.raises(ValueError, match="shift must be 0 .off. or a number of pixels below the image's side 8"):
        PixelDataModule(source="digits", shift=8)
    with pytest.raises(ValueError, match="shift augmentation is for the unconditional and class-conditional"):
        PixelDataModule(source="digits", task="super_resolution", shift=1)


def test_train_on_val_trains_on_the_validation_images_too_and_leaves_test_alone():
    plain, both = PixelDataModule(source="digits"), PixelDataModule(source="digits", train_on_val=True)
    assert len(both.images("train")) == 1497 + 150
    assert np.array_equal(both.images("train"), np.concatenate([plain.images("train"), plain.images("val")]))
    assert np.array_equal(both.labels("train"), np.concatenate([plain.labels("train"), plain.labels("val")]))
    for split in ("val", "test"):  # validation is still there to log, and test is untouched
        assert np.array_equal(both.images(split), plain.images(split))
    assert both.describe()["train_on_val"] is True and "train_on_val" not in plain.describe()
    assert len(both.train_dataloader()) == -(-1647 // 32)


# -- super-resolution -------------------------------------------------------------------
def test_downsample_values():
    x = np.array([[[0, 2, 10, 10], [1, 3, 10, 11], [0, 0, 255, 255], [0, 1, 255, 254]]], dtype=np.uint8)
    assert downsample(x, 2).tolist() == [[[2, 10], [0, 255]]]  # 1.5 -> 2, 10.25 -> 10, 0.25 -> 0, 254.75 -> 255
    assert downsample(x, 4).tolist() == [[[67]]]  # 67.0625
    rgb = np.stack([x, x // 2, x * 0], axis=-1)
    assert downsample(rgb, 2).shape == (1, 2, 2, 3) and downsample(rgb, 2)[0, 0, 0].tolist() == [2, 1, 0]


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_pairs(factor):
    dm = PixelDataModule(source="digits", task="super_resolution", downsample=factor, batch_size=4, val_limit=6)
    src_tok, tgt_tok = dm.tokenizers
    assert src_tok.shape == (8 // factor, 8 // factor, 1) and tgt_tok.shape == (8, 8, 1)
    assert src_tok.levels == tgt_tok.levels and src_tok.vocab_size == dm.vocab_size
    b = next(iter(dm.val_dataloader()))
    assert b["src"].shape == (6, (8 // factor) ** 2) and b["targets"].shape == (6, 64)
    low = downsample(dm.images("val"), factor)
    assert torch.equal(b["src"], src_tok.encode(low))
    assert np.array_equal(src_tok.decode(b["src"]), dm.low_res("val"))
    assert dm.describe()["low_res_shape"] == [8 // factor, 8 // factor, 1]


def test_class_conditional_labels():
    dm = PixelDataModule(source="digits", task="class_conditional", eval_batch_size=150)
    b = next(iter(dm.test_dataloader()))
    assert torch.equal(b["labels"], torch.from_numpy(dm.labels("test")))
    assert "src" not in b and dm.class_names[3] == "3"


# -- MNIST ----------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    try:
        return find_mnist(download=False)
    except FileNotFoundError:
        pytest.skip("MNIST is not available locally (set ZOO_DATA_DIR)")


def test_mnist_shared_t10k(mnist_dir):
    if (mnist_dir / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("this MNIST folder has the full training set; the t10k-only split is tested on synthetic files")
    dm = PixelDataModule(source="mnist", data_dir=str(mnist_dir), levels=8, batch_size=2, test_limit=3)
    assert {s: len(dm.labels(s)) for s in ("train", "val")} == {"train": 8500, "val": 500}
    assert len(PixelDataModule(source="mnist", data_dir=str(mnist_dir)).labels("test")) == 1000
    assert dm.images("test").shape == (3, 28, 28) and dm.images("train").max() == 255
    b = next(iter(dm.test_dataloader()))
    assert b["tokens"].shape == (3, 784) and int(b["targets"].max()) <= 7 and dm.vocab_size == 10
    all_labels = np.concatenate([dm.labels("train"), dm.labels("val")])
    assert set(all_labels.tolist()) == set(range(10))


def test_mnist_full_files_plain(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", rng_images((30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng_images((7, 28, 28), seed=1), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(7) % 10, compress=True)
    splits = load_splits("mnist", str(tmp_path), download=False)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 27, "val": 3, "test": 7}  # val capped at a tenth
    assert np.array_equal(splits["test"][0], rng_images((7, 28, 28), seed=1))  # the t10k file, in order
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 11]), compress=True)
    with pytest.raises(ValueError, match="label 11 in .*t10k-labels-idx1-ubyte.gz is outside the 10 classes"):
        load_splits("mnist", str(tmp_path), download=False)


# -- CIFAR-10 -------------------------------------------------------------------------
def write_cifar(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, H, W, C) -> R plane, G plane, B plane
    path.write_bytes(np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes())


def test_cifar10_binary(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train = rng_images((20, 32, 32, 3))
    train[0, 0, 0] = [200, 100, 50]
    write_cifar(folder / "data_batch_1.bin", train[:12], np.arange(12) % 10)
    write_cifar(folder / "data_batch_2.bin", train[12:], np.arange(8) % 10)
    write_cifar(folder / "test_batch.bin", rng_images((5, 32, 32, 3), seed=2), np.array([9, 8, 7, 6, 5]))
    raw = (folder / "data_batch_1.bin").read_bytes()
    assert (raw[0], raw[1], raw[1 + 1024], raw[1 + 2048]) == (0, 200, 100, 50)  # label, then R, G, B planes
    images, labels = read_cifar10_bin(folder / "data_batch_1.bin")
    assert images.shape == (12, 32, 32, 3) and np.array_equal(images, train[:12])
    dm = PixelDataModule(source="cifar10", data_dir=str(tmp_path), levels=16, eval_batch_size=4, download=False)
    assert {s: len(dm.labels(s)) for s in ("train", "val", "test")} == {"train": 18, "val": 2, "test": 5}
    assert dm.labels("test").tolist() == [9, 8, 7, 6, 5] and dm.image_shape == (32, 32, 3)
    assert dm.class_names[9] == "truck"
    b = next(iter(dm.test_dataloader()))
    assert b["tokens"].shape == (4, 3072) and b["targets"].max() < 16 and dm.vocab_size == 18
    first = np.array([200, 100, 50]) // 16
    tokens = dm.tokenizer.encode(train[:1])
    assert tokens[0, :3].tolist() == first.tolist()  # pixel (0, 0): r, g, b side by side
    sr = PixelDataModule(source="cifar10", data_dir=str(tmp_path), task="super_resolution", downsample=4,
                         download=False)
    sb = next(iter(sr.test_dataloader()))
    assert sb["src"].shape == (5, 8 * 8 * 3) and sr.tokenizers[0].shape == (8, 8, 3)
    write_cifar(folder / "data_batch_3.bin", train[:2], np.array([1, 12]))
    with pytest.raises(ValueError, match="label 12 in .*data_batch_3.bin is outside the 10 classes"):
        load_splits("cifar10", str(tmp_path), download=False)


# -- pictures -----------------------------------------------------------------------
def test_image_grid_and_png(tmp_path):
    x = rng_images((5, 4, 3))
    grid = image_grid(x, ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 4 + 1)
    assert np.array_equal(grid[1:5, 1:4], x[0]) and np.array_equal(grid[6:10, 1:4], x[3])
    assert image_grid(rng_images((4, 2, 2, 3))).shape == (7, 7, 3)
    path = save_grid(tmp_path / "grid.png", x, scale=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_grid(tmp_path / "rgb.png", rng_images((3, 4, 4, 3)))
    with pytest.raises(ValueError, match="non-empty stack"):
        image_grid(np.zeros((0, 4, 4)))
