"""Names to builders, and names to pretrained weights.

Two dictionaries, nothing more:

* ``ARCHITECTURES`` maps an architecture name (``transformer_small``) to an
  :class:`Architecture`: the function that builds the plain ``nn.Module`` and the
  task (``"translation"``, ``"lm"``) whose LightningModule trains it. Builders
  register themselves with :func:`register_model`, keyed by function name.
* ``PRETRAINED`` maps a checkpoint name ``arch.tag`` (``transformer_small.multi30k``)
  to a :class:`Pretrained` record: where the weights live (folder under
  ``checkpoints/``, Hub repo id and revision) and what they were measured to do.

This module imports nothing heavy, so ``zoo list`` stays quick.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "Architecture",
    "Pretrained",
    "ARCHITECTURES",
    "PRETRAINED",
    "register_model",
    "register_pretrained",
    "get_architecture",
    "get_pretrained",
    "list_models",
    "build_network",
    "check_repo_id",
    "check_revision",
    "CATALOGUE_PATH",
    "catalogue",
    "read_catalogue",
    "write_catalogue",
]


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: Callable[..., Any]
    task: str
    config: type  # the config dataclass the builder fills
    paper: str = ""


@dataclass(frozen=True)
class Pretrained:
    """Metadata of one set of published weights, named ``arch.tag``.

    ``sha256`` is the hex digest of the published ``model.safetensors``; loading the name
    checks the file against it (``sha256sum checkpoints/NAME/model.safetensors``).
    """

    name: str
    hub_id: str
    revision: str | None = None
    sha256: str = ""
    params: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    recipe: str = ""
    data: str = ""
    license: str = ""
    description: str = ""

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]


# what the checkpoints trained here share
MULTI30K_DE_EN = "Multi30k task 1, German->English (29,000 training pairs), joint 8k BPE"
MULTI30K_EN = "Multi30k task 1, English side (29,000 training captions), 8k BPE"
ZOO_LICENSE = "MIT (weights); Multi30k: research use"
JSB_CHORALES = "JSB Chorales (Coconet Jsb16thSeparated: 229/76/77 chorales), S, A, T, B pitches per 16th-note step"
NOTTINGHAM = "Nottingham folk tunes (969 MIDI files; 80/10/10 split by name, seed 0), performance events"
MUSIC_LICENSE = "MIT (weights); JSB Chorales and Nottingham: public research sets"
PTB = ("Penn Treebank, word level, Mikolov's preprocessing: 10,000-word vocabulary, <eos> after each line "
       "(929,589 / 73,760 / 82,430 train / valid / test tokens)")
PTB_LICENSE = "MIT (weights); Penn Treebank: LDC derivative, distributed for research"
BABI = ("bAbI QA tasks 1-20 v1.2, English, 1k: 1,000 training questions a task (10% held out for validation) "
        "and 1,000 test questions a task, the 20 tasks jointly")
BABI_LICENSE = "MIT (weights); bAbI: CC BY 3.0"

ARCHITECTURES: dict[str, Architecture] = {}
PRETRAINED: dict[str, Pretrained] = {}


def register_model(task: str, config: type, paper: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder under its function name. A second builder of the same name raises.

    ``task`` names the LightningModule that trains it (``zoo.tasks.TASKS``); ``config``
    is the dataclass whose fields the builder accepts as keyword overrides.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in ARCHITECTURES:
            raise ValueError(f"model {name!r} is registered twice; rename one of the builders")
        ARCHITECTURES[name] = Architecture(name=name, builder=fn, task=task, config=config, paper=paper)
        return fn

    return wrap


# -- names that become paths --------------------------------------------------------
# A pretrained name is a folder under checkpoints/; a repo id and a revision become folders
# and files in the Hugging Face cache. None of them may climb out of those folders.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.[A-Za-z0-9][A-Za-z0-9_.-]*")
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hugging Face repo id (``org/name`` or ``name``), else a one-line ValueError."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if not (
        1 <= len(parts) <= 2
        and all(_REPO_PART.fullmatch(p) for p in parts)
        and ".." not in repo_id
        and "--" not in repo_id
        and len(repo_id) <= 96
    ):
        raise ValueError(
            f"{repo_id!r} is not a valid Hugging Face repo id: it reads ORG/NAME with letters, digits, "
            "'-', '_' and '.' (no '..' or '--', at most 96 characters); a local folder must exist"
        )
    return repo_id


def check_revision(revision: str | None) -> str | None:
    """``revision`` if it is a plausible branch, tag or commit name, else a one-line ValueError."""
    if revision is None:
        return None
    if not (isinstance(revision, str) and _REVISION.fullmatch(revision) and ".." not in revision and len(revision) <= 256):
        raise ValueError(
            f"{revision!r} is not a valid revision: give a branch, tag or commit hash "
            "(letters, digits, '-', '_', '.', '/'; no '..')"
        )
    return revision


def register_pretrained(entry: Pretrained) -> Pretrained:
    if not _NAME.fullmatch(entry.name) or ".." in entry.name:
        raise ValueError(
            f"pretrained name {entry.name!r} must read 'arch.tag' with letters, digits, '_', '-' "
            "(it becomes a folder under checkpoints/)"
        )
    check_repo_id(entry.hub_id)
    check_revision(entry.revision)
    if entry.sha256 and not _SHA256.fullmatch(entry.sha256):
        raise ValueError(f"sha256 of {entry.name} must be 64 lowercase hex digits, not {entry.sha256!r}")
    if entry.name in PRETRAINED:
        raise ValueError(f"pretrained weights {entry.name!r} are registered twice")
    PRETRAINED[entry.name] = entry
    return entry


def _ensure_loaded() -> None:
    # The model files register themselves on import; they import only torch.
    import zoo.models  # noqa: F401


class UnknownNameError(KeyError):
    """A name that is not registered: a ``KeyError`` whose message prints without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _unknown(name: str, known: list[str], what: str) -> KeyError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `zoo list` for the names"
    return UnknownNameError(f"unknown {what} {name!r}; {hint}")


def get_architecture(name: str) -> Architecture:
    _ensure_loaded()
    if name not in ARCHITECTURES:
        raise _unknown(name, sorted(ARCHITECTURES) + sorted(PRETRAINED), "model")
    return ARCHITECTURES[name]


def get_pretrained(name: str) -> Pretrained:
    _ensure_loaded()
    if name not in PRETRAINED:
        raise _unknown(name, sorted(PRETRAINED) + sorted(ARCHITECTURES), "pretrained model")
    return PRETRAINED[name]


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Architecture names, or with ``pretrained=True`` the ``arch.tag`` weight names.

    ``pattern`` is a shell-style wildcard (``"transformer*"``).
    """
    _ensure_loaded()
    names = sorted(PRETRAINED) if pretrained else sorted(ARCHITECTURES)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def build_network(arch: str, **kwargs: Any) -> Any:
    """Build the plain ``nn.Module`` of architecture ``arch`` with ``kwargs`` overriding its config."""
    return get_architecture(arch).builder(**kwargs)


# -- the catalogue: what `zoo list` prints, without importing torch --------------------------
# Filling the registry imports every model file, and with them torch (about 1.5 s). `zoo list`
# reads zoo/catalogue.json instead, generated from the live registry; it carries a digest of
# the files that register names, and a catalogue whose digest does not match them is not used
# (`zoo list` then fills the registry as before). tests/test_catalogue.py fails while the
# committed file is stale.

CATALOGUE_PATH = Path(__file__).resolve().with_name("catalogue.json")
REFRESH_CATALOGUE = "python -m zoo.registry --write-catalogue"


def _registering_files() -> list[Path]:
    """The files whose contents decide the registry: this one and the model files."""
    here = Path(__file__).resolve().parent
    return [here / "registry.py", *sorted((here / "models").glob("*.py"))]


def sources_digest() -> str:
    """sha256 over the names and bytes of :func:`_registering_files` (under a millisecond)."""
    h = hashlib.sha256()
    for path in _registering_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def catalogue() -> dict[str, Any]:
    """The live registry as plain data: architectures (task, paper), pretrained names (params, metrics)."""
    _ensure_loaded()
    return {
        "refresh": REFRESH_CATALOGUE,
        "sources_sha256": sources_digest(),
        "architectures": {n: {"task": a.task, "paper": a.paper} for n, a in sorted(ARCHITECTURES.items())},
        "pretrained": {n: {"params": p.params, "metrics": dict(p.metrics)} for n, p in sorted(PRETRAINED.items())},
    }


def write_catalogue(path: str | Path = CATALOGUE_PATH) -> Path:
    """Write :func:`catalogue` to ``path`` (zoo/catalogue.json by default); run it after any registry change."""
    path = Path(path)
    path.write_text(json.dumps(catalogue(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_catalogue(path: str | Path = CATALOGUE_PATH) -> dict[str, Any] | None:
    """The catalogue at ``path`` if it is there, readable and matches the current sources, else None."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        fresh = data["sources_sha256"] == sources_digest()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if fresh else None


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zoo.registry", description="the catalogue read by `zoo list`")
    parser.add_argument("--write-catalogue", action="store_true", help=f"regenerate {CATALOGUE_PATH.name}")
    parser.add_argument("--out", default=str(CATALOGUE_PATH))
    args = parser.parse_args(argv)
    if args.write_catalogue:
        out = write_catalogue(args.out)
        print(f"wrote {out} ({len(ARCHITECTURES)} architectures, {len(PRETRAINED)} pretrained)")
    else:
        print(json.dumps(catalogue(), indent=1, ensure_ascii=False))


if __name__ == "__main__":  # run as a script, this file is a second module: use the one the models fill
    from zoo.registry import _main as _registry_main

    _registry_main()
