"""Checkpoints in Hugging Face Hub layout: save, strict load, resolution, publishing.

A checkpoint folder holds exactly::

    config.json          task, architecture, hyperparameters, tokenizer and data description, metrics
    model.safetensors    the network's weights (tied tensors stored once)
    tokenizer.json       the vocabulary (tokenizer_src.json too when source and target differ)
    README.md            the model card, with model-index eval results

Only JSON, safetensors and tokenizer files are ever read from a folder or a download:
nothing is unpickled. Loading is strict: a missing, unexpected or misshapen tensor is an
error that names it, and the architecture the file was made for. A registered name's
weights are checked against the sha256 its registry entry records. Repo ids and revisions
are validated before they become paths in the Hugging Face cache.

``zoo.load(x)`` resolves ``x`` as: a local folder; else a registered ``arch.tag`` name,
from its folder under ``checkpoints/`` (or ``$ZOO_CHECKPOINTS``) or else its Hub repo at
the pinned revision (another ``revision`` always downloads that one); else a Hub repo id
``org/name``. Downloads go through the HF cache and honour ``HF_HUB_OFFLINE``.

Saving is atomic per folder: every file is written and flushed to disk under a temporary
name first, then all are renamed into place, so a save that fails leaves the previous
checkpoint as it was.

Uploading has one path, :func:`upload_folder`: ``push_to_hub`` saves a model to a
temporary folder and uploads that; ``publish`` uploads a checkpoint folder as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.io import atomic_write, fsync, remove_if_exists, stage
from zoo.registry import PRETRAINED, Pretrained, check_repo_id, check_revision, get_pretrained

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG, WEIGHTS, TOKENIZER, SRC_TOKENIZER, CARD = "config.json", "model.safetensors", "tokenizer.json", "tokenizer_src.json", "README.md"
ALLOWED_FILES = [CONFIG, WEIGHTS, TOKENIZER, SRC_TOKENIZER, CARD]


def checkpoints_dir() -> Path:
    return Path(os.environ.get("ZOO_CHECKPOINTS", REPO_ROOT / "checkpoints"))


# -- resolution ---------------------------------------------------------------------
def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    check_repo_id(repo_id)
    check_revision(revision)
    try:
        # only JSON, safetensors and the card: nothing that could be unpickled is fetched
        path = snapshot_download(repo_id, revision=revision, allow_patterns=ALLOWED_FILES)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id} is not in the Hugging Face cache and the Hub cannot be reached "
            "(offline or HF_HUB_OFFLINE=1); download it once online or pass a local folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise FileNotFoundError(f"could not fetch {repo_id} from the Hugging Face Hub: {err}") from None
    return Path(path)


def _resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> tuple[Path, Pretrained | None]:
    """The checkpoint folder of ``name_or_path``, and its registry entry when it is a registered name."""
    check_revision(revision)
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    entry = None
    if path.is_dir():
        folder = path  # a folder the user points at is theirs to give
    elif name in PRETRAINED or ("." in name and "/" not in name and os.sep not in name and not name.startswith((".", "~"))):
        entry = get_pretrained(name)  # raises with close matches when unknown
        root = checkpoints_dir()
        local = root / entry.name
        if Path(os.path.abspath(local)).parent != Path(os.path.abspath(root)):  # names are checked; a second lock
            raise ValueError(f"pretrained name {entry.name!r} points outside {root}")
        if (local / CONFIG).exists() and (revision is None or revision == entry.revision):
            folder = local
        else:
            folder = _download(entry.hub_id, revision or entry.revision)
    elif name.count("/") == 1 and not path.exists() and not name.startswith((".", "/", "~")):
        folder = _download(check_repo_id(name), revision)
    elif path.exists():
        raise ValueError(f"{path} is a file, not a checkpoint folder; give the folder that holds {CONFIG}")
    elif os.sep in name or "/" in name or name.startswith((".", "~")):
        raise FileNotFoundError(f"no checkpoint folder at {path}; check the path, or give a name from `zoo list --pretrained`")
    else:
        get_pretrained(name)  # unknown name: raises listing the closest ones
        raise FileNotFoundError(f"no checkpoint at {name}")
    if not (folder / CONFIG).exists():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG}, so it is not a zoo checkpoint; save one with model.save_pretrained(folder)"
        )
    return folder, entry


def resolve_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder holding the checkpoint ``name_or_path`` (see module docstring)."""
    return _resolve(name_or_path, revision)[0]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_published(entry: Pretrained, folder: Path) -> None:
    """Raise unless ``folder``'s weights are the ones ``entry`` was published with."""
    path = folder / WEIGHTS
    if not entry.sha256 or not path.exists():
        return  # no digest recorded (a third-party entry), or missing: load_weights says so
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise ValueError(
            f"{path} differs from the published {entry.name} weights (sha256 {actual[:12]}..., expected "
            f"{entry.sha256[:12]}...): it was damaged or replaced; delete {folder} to download it again, "
            f"or load other weights on purpose by their folder or with revision=..."
        )


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; a checkpoint folder needs it (save with model.save_pretrained)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or save the model again") from None
    for key in ("task", "hparams"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r} entry; it was not written by zoo's save_pretrained")
    return config


# -- weights ------------------------------------------------------------------------
class _OneKeyMetadata(dict):
    """The file's metadata: ``{"format": "pt"}``, and nothing that ``save_model`` adds to it.

    ``save_model`` records each tied name it leaves out as a metadata entry, and safetensors
    writes metadata entries in no fixed order (safetensors issue #584), so the same weights
    would give other bytes, and another sha256, at each save. The names left out need no
    record: ``load_model`` finds them from the model's own tied tensors.
    """

    def __setitem__(self, key: str, value: str) -> None:
        pass


def _weights_writer(net: nn.Module, dtype: torch.dtype | None = None) -> Any:
    """A function writing ``net``'s weights as safetensors to the path it is given.

    safetensors' ``save_model`` stores each tied tensor once, under one of its names. For
    another storage dtype it saves a converted copy of ``net`` (``Module.to`` keeps the ties;
    integer buffers keep their type), so ``net`` itself is left as it is.
    """
    import copy

    from safetensors.torch import save_model

    float_types = {t.dtype for t in net.state_dict().values() if t.is_floating_point()}
    if dtype is not None and float_types - {dtype}:
        net = copy.deepcopy(net).to(dtype)
    return lambda tmp: save_model(net, tmp, metadata=_OneKeyMetadata(format="pt"))


def save_weights(net: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    atomic_write(path, _weights_writer(net, dtype))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _provenance(net: nn.Module, source: dict[str, Any] | None, into: str | None) -> str:
    """Which architecture the weights file was made for, and which one it is going into."""
    source = source or {}
    made_for = source.get("arch") or "an architecture its folder does not name (no config.json beside it)"
    into = into or type(net).__name__
    text = f"the file was made for {made_for} and is being loaded into {into} ({type(net).__name__})"
    file_net = source.get("net") or {}
    mine = _jsonable(net.config_dict()) if hasattr(net, "config_dict") else {}
    diffs = [f"{k} {file_net[k]!r} vs {mine[k]!r}" for k in sorted(set(file_net) & set(mine)) if file_net[k] != mine[k]]
    if diffs:
        text += f"; the configs differ in {', '.join(diffs)}"
    elif file_net and mine:
        text += " built from the same config, so model.safetensors is not the file config.json describes"
    return text


def _some(keys: list[str], n: int = 5) -> str:
    """The first ``n`` keys as a list, and how many more: a whole architecture's keys make no readable line."""
    if not keys:
        return "none"
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}, ... {len(keys) - n} more]" if len(keys) > n else f"[{shown}]"


def _key_mismatch(net: nn.Module, stored: set[str]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) names of a file holding ``stored``, for ``net``.

    Each tensor must be stored once: a tied one (one Parameter under several names) under any
    one of its names. One stored under none of them, or under several, has its first name
    missing and the other names stored unexpected.
    """
    state = net.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for key, value in state.items():
        names_of.setdefault(id(value), []).append(key)
    missing, unexpected = [], stored - set(state)
    for first, *others in names_of.values():
        held = [n for n in (first, *others) if n in stored]
        if len(held) != 1:
            missing += [] if first in stored else [first]
            unexpected.update(n for n in held if n != first)
    return sorted(missing), sorted(unexpected)


def load_weights(net: nn.Module, path: str | os.PathLike, *, source: dict[str, Any] | None = None, into: str | None = None) -> None:
    """Load ``path`` into ``net`` strictly: every tensor present, none extra, shapes equal.

    The names and shapes in the file's header are checked first, so a file of another
    architecture leaves ``net`` as it was; safetensors' ``load_model`` then loads it (a tied
    tensor stored under any one of its names fills all of them; fp16 storage is cast to the
    model's dtype). ``source`` is the config.json of the folder (read from beside ``path``
    when not given) and ``into`` the architecture name of ``net``; errors name both.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the checkpoint folder is incomplete, download or save it again")
    try:
        with safe_open(str(path), framework="pt") as f:  # the header: names and shapes, checked against the file's length
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type for bad headers and short files
        raise ValueError(f"{path} is truncated or corrupt ({err}); delete the folder and download or save it again") from None
    if source is None:
        try:
            source = json.loads((path.parent / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            source = None

    def mismatch(missing: list[str], unexpected: list[str]) -> ValueError:
        return ValueError(
            f"weights in {path} do not match the model: missing {_some(missing)}, unexpected {_some(unexpected)}; "
            f"{_provenance(net, source, into)}; load the folder with zoo.load, or give weights of this architecture"
        )

    missing, unexpected = _key_mismatch(net, set(shapes))
    if missing or unexpected:
        raise mismatch(missing, unexpected)
    data_sized = set(getattr(net, "data_sized_buffers", ()))  # e.g. n-gram counts: as large as the data made them
    wrong = [
        f"{k} {shapes[k]} vs {tuple(v.shape)}"
        for k, v in net.state_dict().items()
        if k in shapes and shapes[k] != tuple(v.shape) and k not in data_sized
    ]
    if wrong:
        more = f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise ValueError(
            f"weights in {path} have other shapes than the model: {'; '.join(wrong[:5])}{more}; {_provenance(net, source, into)}"
        )
    missing, unexpected = load_model(net, path, strict=False)  # e.g. a tie stored twice: one name is unexpected
    if missing or unexpected:
        raise mismatch(sorted(missing), sorted(unexpected))


# -- tokenizers ---------------------------------------------------------------------
def _tokenizers_in(folder: Path) -> tuple[Any, Any]:
    from zoo.data.tokenizer import read_tokenizer

    if not (folder / TOKENIZER).exists():
        raise FileNotFoundError(f"{folder} has no {TOKENIZER}; save the model with its tokenizer attached")
    tgt = read_tokenizer(folder / TOKENIZER)
    src = read_tokenizer(folder / SRC_TOKENIZER) if (folder / SRC_TOKENIZER).exists() else tgt
    return src, tgt


def load_tokenizers(name_or_path: str) -> tuple[Any, Any]:
    """(source, target) tokenizers from a tokenizer.json file, a checkpoint folder or a pretrained name."""
    from zoo.data.tokenizer import read_tokenizer

    if str(name_or_path).endswith(".json") and Path(name_or_path).is_file():
        tok = read_tokenizer(name_or_path)
        return tok, tok
    return _tokenizers_in(resolve_folder(name_or_path))


@dataclass
class PretrainedFiles:
    """A resolved checkpoint folder: its config, tokenizers and weights, not yet in a model."""

    folder: Path
    config: dict[str, Any]
    entry: Pretrained | None = None  # the registry entry whose published sha256 the weights must have

    @property
    def tokenizers(self) -> tuple[Any, Any] | None:
        return _tokenizers_in(self.folder) if (self.folder / TOKENIZER).exists() else None

    def load_into(self, net: nn.Module, arch: str | None = None) -> None:
        """Check the weights' sha256 (registered names), then load them strictly into ``net``."""
        if self.entry is not None:
            verify_published(self.entry, self.folder)
        load_weights(net, self.folder / WEIGHTS, source=self.config, into=arch)


def read_pretrained(name_or_path: str, revision: str | None = None) -> PretrainedFiles:
    folder, entry = _resolve(name_or_path, revision)
    if entry is not None and revision is not None and revision != entry.revision:
        entry = None  # other weights asked for on purpose: the published digest does not apply
    return PretrainedFiles(folder, read_config(folder), entry)


def load(name_or_path: str, *, revision: str | None = None, **overrides: Any) -> Any:
    """A pretrained LightningModule in eval mode with its tokenizer attached.

    ``overrides`` replace task hyperparameters (``lr``, ``label_smoothing``) or arguments of
    the architecture's config (``dropout``), split as ``zoo.create`` splits them.
    """
    from zoo.tasks import task_class
    from zoo.tasks.base import split_overrides

    files = read_pretrained(name_or_path, revision)
    hparams = dict(files.config["hparams"])
    cls = task_class(files.config["task"])
    task_args, arch_args = split_overrides(cls, hparams["arch"], overrides, fixed=("init_from",), what=str(name_or_path))
    hparams.update(task_args)
    hparams["arch_args"] = {**(hparams.get("arch_args") or {}), **arch_args}
    hparams.pop("init_from", None)  # the weights below are the start
    model = cls(**hparams)
    files.load_into(model.net, hparams["arch"])
    model.tokenizers = files.tokenizers
    model.pretrained_config = files.config
    return model.eval()


# -- saving -------------------------------------------------------------------------
def _atomic_folder(folder: Path, writers: dict[str, Any]) -> None:
    """Replace the checkpoint files of ``folder`` with those ``writers`` make, all or none.

    Every file is staged (written and fsynced under a temporary name) before any is renamed
    into place, so an error while writing leaves the previous checkpoint whole. Checkpoint
    files the new save does not have (a stale ``tokenizer_src.json``) are removed after.
    Only a crash in the microseconds between the renames can mix two saves.
    """
    staged: dict[str, str] = {}
    try:
        for name, write in writers.items():
            staged[name] = stage(folder / name, write)
        for name in [n for n in writers if n != CONFIG] + [CONFIG]:  # config.json last: it names the rest
            os.replace(staged.pop(name), folder / name)
    finally:
        for tmp in staged.values():
            remove_if_exists(tmp)
    for name in ALLOWED_FILES:
        if name not in writers and (folder / name).exists():
            os.remove(folder / name)
    fsync(folder)


def model_config(model: Any, *, metrics: dict[str, Any] | None = None, data: dict[str, Any] | None = None, dtype: str = "float32") -> dict[str, Any]:
    accepted = set(type(model).init_arguments()) - {"init_from"}
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.hparams).items() if k in accepted}
    tok = model.tokenizers
    config = {
        "zoo_version": zoo.__version__,
        "task": model.task_name,
        "arch": hparams.get("arch"),
        "hparams": hparams,
        "net": model.net.config_dict(),
        "num_params": sum(p.numel() for p in {id(p): p for p in model.net.parameters()}.values()),
        "dtype": dtype,
    }
    if tok is not None:
        kind = tok[1].to_dict()["type"] if hasattr(tok[1], "to_dict") else tok[1].kind
        specials = {k: getattr(tok[1], f"{k}_id", None) for k in ("pad", "unk", "bos", "eos")}
        config["tokenizer"] = {
            "type": kind,
            "joint": tok[0] is tok[1],
            "files": [TOKENIZER] if tok[0] is tok[1] else [SRC_TOKENIZER, TOKENIZER],
            "src_vocab_size": tok[0].vocab_size,
            "tgt_vocab_size": tok[1].vocab_size,
            "special_tokens": {k: v for k, v in specials.items() if v is not None},
        }
    if data:
        config["data"] = data
    if metrics:
        config["metrics"] = metrics
    return config


def save_pretrained(
    model: Any,
    directory: str | os.PathLike,
    *,
    dtype: str = "float32",
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write ``model`` in Hub layout to ``directory``, atomically: a save that fails leaves the previous one whole.

    Args:
        dtype: ``"float32"`` or ``"float16"`` storage (loading casts back to the model's dtype).
        metrics: measured figures for config.json and the card's model-index.
        data: what the model was trained on (defaults to what the model was fitted with).
        card: extra Markdown for the model card's body.
    """
    from zoo.card import write_card

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    data = data or getattr(model, "data_description", None)
    config = model_config(model, metrics=metrics, data=data, dtype=dtype)
    writers: dict[str, Any] = {WEIGHTS: _weights_writer(model.net, getattr(torch, dtype))}
    if model.tokenizers is not None:
        src, tgt = model.tokenizers
        writers[TOKENIZER] = tgt.save
        if src is not tgt:
            writers[SRC_TOKENIZER] = src.save
    card_text = write_card(config, body=card)
    writers[CARD] = lambda tmp: Path(tmp).write_text(card_text, encoding="utf-8")
    config_text = json.dumps(config, indent=2) + "\n"
    writers[CONFIG] = lambda tmp: Path(tmp).write_text(config_text, encoding="utf-8")
    _atomic_folder(folder, writers)
    return folder


# -- publishing ---------------------------------------------------------------------
def checkpoint_files(folder: Path) -> list[str]:
    """The checkpoint files ``folder`` holds, in upload order: nothing else of it is ever uploaded."""
    return [f for f in ALLOWED_FILES if (folder / f).is_file()]


def upload_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, commit_message: str) -> str:
    """The one way zoo uploads: create ``repo_id`` when missing, then upload ``folder``'s checkpoint
    files in one commit with huggingface_hub's ``HfApi.upload_folder``. Returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    folder = Path(folder)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=checkpoint_files(folder),
                             commit_message=commit_message)
    return str(info)


def push_to_hub(model: Any, repo_id: str, *, private: bool = False, commit_message: str = "Upload zoo model", **save_kwargs: Any) -> str:
    """Save ``model`` to a temporary folder (``save_kwargs`` go to :func:`save_pretrained`) and
    upload that with :func:`upload_folder`; returns the commit URL."""
    check_repo_id(repo_id)  # before the save, which may take a while
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        return upload_folder(tmp, repo_id, private=private, commit_message=commit_message)


def publish(name_or_path: str, repo_id: str, *, dry_run: bool = False, private: bool = False) -> list[str]:
    """Upload a checkpoint folder as it is (weights, config, tokenizer, card) to ``repo_id``.

    The files go up byte for byte, so a registered name's weights keep their published
    sha256. ``dry_run`` lists what would be uploaded and uploads nothing.
    """
    check_repo_id(repo_id)
    folder = resolve_folder(name_or_path)
    files = checkpoint_files(folder)
    total = sum((folder / f).stat().st_size for f in files)
    print(f"{'would upload' if dry_run else 'uploading'} {folder} -> https://huggingface.co/{repo_id}")
    for f in files:
        print(f"  {f:22s} {(folder / f).stat().st_size / 1e6:8.2f} MB")
    print(f"  {'total':22s} {total / 1e6:8.2f} MB")
    if not dry_run:
        info = upload_folder(folder, repo_id, private=private, commit_message=f"Upload {folder.name}")
        print(f"uploaded: {info}")
    return files
