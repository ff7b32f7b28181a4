"""Fetching a public data set: one file from the first of its mirrors that answers, checked
against the checksum its publisher gives, then renamed into place.

What is fetched is streamed into a temporary file beside the target (``zoo.io``) while its
digest is computed; only a file whose digest matches is renamed over the target, so an
interrupted download, a changed file upstream or a proxy's error page never looks like
the data set. Every failure is one line that names each mirror and what went wrong there.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from urllib.request import urlopen

from zoo.data.base import one_line
from zoo.io import atomic_write

__all__ = ["ChecksumError", "DownloadError", "fetch"]

CHUNK = 1 << 20


class DownloadError(OSError):
    """No mirror gave the file with the expected checksum."""


class ChecksumError(OSError):
    """A mirror sent a file whose digest is not the one expected."""


def _fetch_one(url: str, target: Path, algorithm: str, expected: str, timeout: float) -> None:
    def write(tmp: str) -> None:
        digest = hashlib.new(algorithm)
        with urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != expected:
            raise ChecksumError(f"its {algorithm} is {digest.hexdigest()}, not the published {expected}")

    atomic_write(target, write)


def fetch(urls: Sequence[str], target: str | os.PathLike, *, sha256: str | None = None,
          md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``target`` from the first of ``urls`` that answers with the expected checksum.

    Give exactly one of ``sha256`` or ``md5`` (hex digests). The mirrors are tried in order;
    a mirror that fails or sends other bytes is passed over. Returns ``target``; raises
    :class:`DownloadError` (an ``OSError``), with one line naming every mirror's failure, when
    none succeeds, and then nothing is left at ``target`` that was not there before.
    """
    if (sha256 is None) == (md5 is None):
        raise ValueError("fetch needs exactly one checksum: sha256=... or md5=...")
    algorithm, expected = ("sha256", sha256) if sha256 is not None else ("md5", md5)
    expected = expected.lower()
    if not urls:
        raise ValueError("fetch needs at least one URL")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch_one(url, target, algorithm, expected, timeout)
            return target
        except (OSError, HTTPException) as err:  # URLError, HTTPError, timeouts, ChecksumError; a cut-off read
            failures.append(f"{url}: {one_line(err)}")
    raise DownloadError(f"could not download {target.name} (" + "; ".join(failures) + ")")
