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
    arguments (``d_model``, ``dropout``).
    """
    import dataclasses
    import inspect
    import typing

    from zoo.models.base import check_types
    from zoo.tasks import task_class

    arch = get_architecture(name.split(".", 1)[0])
    cls = task_class(arch.task)
    task_params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    arch_args = dict(overrides.pop("arch_args", {}) or {})
    net_fields = {f.name for f in dataclasses.fields(arch.config)}
    for key in list(overrides):
        if key not in task_params and key in net_fields:
            arch_args[key] = overrides.pop(key)
    unknown = set(overrides) - task_params
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {', '.join(sorted(unknown))}; see `zoo info {name}`")
    check_types(cls.__name__, typing.get_type_hints(cls.__init__), overrides)
    return cls(arch=arch.name, arch_args=arch_args, **overrides)


def load(name_or_path: str, *, revision: str | None = None, **overrides: Any) -> Any:
    """A pretrained LightningModule in eval mode, its tokenizer attached.

    ``name_or_path`` is a local checkpoint folder, a registered ``arch.tag`` name or a
    Hugging Face Hub repo id.
    """
    from zoo.hub import load as _load

    return _load(name_or_path, revision=revision, **overrides)


__all__ = ["__version__", "create", "load", "list_models", "get_architecture", "get_pretrained"]
