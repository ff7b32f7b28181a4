"""zoo: a PyTorch Lightning model zoo of the sequence models that led from recurrent networks to attention.

    import zoo
    zoo.list_models()                         # architectures
    zoo.list_models(pretrained=True)          # published weights, named arch.tag
    model = zoo.load("transformer_small.multi30k")
    model.translate(["Ein Mann fährt Fahrrad."])
    fresh = zoo.create("transformer_small", src_vocab_size=8000, tgt_vocab_size=8000)

Importing zoo imports only torch-free registry code; Lightning comes with the first model.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from zoo.registry import get_architecture, get_pretrained, list_models  # noqa: E402


def create(name: str, **overrides: Any) -> Any:
    """A fresh, randomly initialised LightningModule for architecture ``name``.

    ``name`` may also be a pretrained ``arch.tag``: its architecture is built at random.
    ``overrides`` are task arguments (``src_vocab_size``, ``lr``) or architecture
    arguments (``d_model``, ``dropout``); see :func:`zoo.tasks.base.split_overrides`.
    """
    from zoo.tasks import task_class
    from zoo.tasks.base import split_overrides

    arch = get_architecture(name.split(".", 1)[0])
    cls = task_class(arch.task)
    task_args, arch_args = split_overrides(cls, arch.name, overrides, what=name, hint=f"see `zoo info {name}`")
    return cls(arch=arch.name, arch_args=arch_args, **task_args)


def load(name_or_path: str, *, revision: str | None = None, **overrides: Any) -> Any:
    """A pretrained LightningModule in eval mode, its tokenizer attached.

    ``name_or_path`` is a local checkpoint folder, a registered ``arch.tag`` name or a
    Hugging Face Hub repo id. ``overrides`` replace task hyperparameters (``lr``) or
    architecture arguments (``dropout``), split as :func:`create` splits them.
    """
    from zoo.hub import load as _load

    return _load(name_or_path, revision=revision, **overrides)


__all__ = ["__version__", "create", "load", "list_models", "get_architecture", "get_pretrained"]
