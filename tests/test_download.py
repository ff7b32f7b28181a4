"""Downloads: mirrors in order, the checksum checked before anything is renamed into place,
one-line errors; the recorded checksums are those of the public files."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from urllib.error import URLError

import pytest

from zoo.data import download
from zoo.data.download import DownloadError, fetch

DATA = Path(os.environ.get("ZOO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAYLOAD = b"the data set\n" * 1000


def serve(pages: dict[str, bytes | Exception], seen: list[str] | None = None):
    """A stand-in for urlopen: each URL answers with its bytes, or raises its error."""

    def urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        if seen is not None:
            seen.append(url)
        page = pages[url]
        if isinstance(page, Exception):
            raise page
        return io.BytesIO(page)

    return urlopen


def test_a_wrong_checksum_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", serve({"https://a/x.gz": b"<html>rate limited</html>"}))
    target = tmp_path / "data" / "x.gz"
    with pytest.raises(DownloadError) as err:
        fetch(["https://a/x.gz"], target, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    message = str(err.value)
    assert "\n" not in message and message.startswith("could not download x.gz (https://a/x.gz: its sha256 is ")
    assert isinstance(err.value, OSError)
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary


def test_a_wrong_checksum_leaves_an_earlier_file_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", serve({"https://a/x": b"other bytes"}))
    target = tmp_path / "x"
    target.write_bytes(b"kept")
    with pytest.raises(DownloadError, match="its md5 is"):
        fetch(["https://a/x"], target, md5=hashlib.md5(PAYLOAD).hexdigest())
    assert target.read_bytes() == b"kept" and [p.name for p in tmp_path.iterdir()] == ["x"]


def test_mirrors_are_tried_in_order_until_one_has_the_file(tmp_path, monkeypatch):
    seen: list[str] = []
    pages = {"https://down/x": URLError("Name or service not known"), "https://bad/x": b"truncated",
             "https://good/x": PAYLOAD, "https://never/x": b""}
    monkeypatch.setattr(download, "urlopen", serve(pages, seen))
    target = fetch(list(pages), tmp_path / "x", md5=hashlib.md5(PAYLOAD).hexdigest().upper())
    assert target == tmp_path / "x" and target.read_bytes() == PAYLOAD
    assert seen == ["https://down/x", "https://bad/x", "https://good/x"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_every_mirror_failing_is_one_line_naming_each(tmp_path, monkeypatch):
    pages = {"https://a/x": URLError("timed out"), "https://b/x": OSError("HTTP Error 404: Not Found\nbody")}
    monkeypatch.setattr(download, "urlopen", serve(pages))
    with pytest.raises(OSError) as err:
        fetch(list(pages), tmp_path / "x", sha256="0" * 64)
    assert str(err.value) == ("could not download x (https://a/x: <urlopen error timed out>; "
                              "https://b/x: HTTP Error 404: Not Found)")
    assert not (tmp_path / "x").exists()


def test_exactly_one_checksum(tmp_path):
    with pytest.raises(ValueError, match="exactly one checksum"):
        fetch(["https://a/x"], tmp_path / "x")
    with pytest.raises(ValueError, match="exactly one checksum"):
        fetch(["https://a/x"], tmp_path / "x", sha256="0" * 64, md5="0" * 32)


def test_jsb_download_is_checked(tmp_path, monkeypatch):
    from zoo.data.midi import sources

    monkeypatch.setattr(sources, "DOWNLOAD_DIR", tmp_path / "cache")
    monkeypatch.setattr(sources, "_candidate_dirs", lambda d: [])
    monkeypatch.setattr(download, "urlopen", serve({sources.JSB_URL: b"<html>not here</html>"}))
    with pytest.raises(FileNotFoundError, match=r"download failed: could not download Jsb16thSeparated.json \("):
        sources.find_jsb()
    assert not (tmp_path / "cache" / "jsb_chorales" / sources.JSB_FILE).exists()


# -- the recorded checksums are those of the public files (the copies in ../shared/data) -----
def _digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def _local(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return path


@pytest.mark.parametrize("name", ["train.de.gz", "train.en.gz", "val.de.gz", "val.en.gz",
                                  "test_2016_flickr.de.gz", "test_2016_flickr.en.gz"])
def test_multi30k_checksums(name):
    from zoo.data.text import MULTI30K_SHA256

    assert MULTI30K_SHA256[name] == _digest(_local("multi30k", name), "sha256")


def test_jsb_checksum():
    from zoo.data.midi import JSB_FILE, JSB_SHA256

    assert JSB_SHA256 == _digest(_local("jsb_chorales", JSB_FILE), "sha256")


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_mnist_checksums(name):
    from zoo.data.pixels import MNIST_MD5

    assert MNIST_MD5[name] == _digest(_local("mnist", name), "md5")


def test_multi30k_download_through_the_one_fetch(tmp_path, monkeypatch):
    from zoo.data import text

    pages = {text.MULTI30K_URL.format(name=name): _local("multi30k", name).read_bytes() for name in text.MULTI30K_SHA256}
    monkeypatch.setattr(download, "urlopen", serve(pages))
    folder = text._download_multi30k(tmp_path / "multi30k")
    assert sorted(p.name for p in folder.iterdir()) == sorted(text.MULTI30K_SHA256)
