"""Atomic file writes: a file is written under a temporary name beside its target, flushed
to the disk, then renamed over it, so a crash or an error leaves the previous file whole.

Every file zoo writes that a user would miss if half-written goes through here: checkpoints
(Lightning and Hub layout), tokenizers, downloads, MIDI files and pictures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "fsync", "remove_if_exists", "stage", "write_bytes", "write_text"]


def fsync(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to the disk (best effort where the OS has no such call)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. folders on Windows
    finally:
        os.close(fd)


def remove_if_exists(path: str | os.PathLike) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def stage(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Write ``path``'s content through ``write(tmp)`` to a temporary file beside it, on disk; return the temporary."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; these are ordinary files
        fsync(tmp)
    except BaseException:
        remove_if_exists(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary file, fsync, rename: never a half-written file."""
    path = Path(path)
    tmp = stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_if_exists(tmp)
        raise
    fsync(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
