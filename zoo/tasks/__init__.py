"""LightningModules: one per task, each building its network through the registry.

Imported lazily (``task_class``) so that ``import zoo`` does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

TASKS = {
    "translation": "zoo.tasks.translation:TranslationTask",
    "lm": "zoo.tasks.lm:CausalLMTask",
    "image": "zoo.tasks.image:ImageTask",
    "qa": "zoo.tasks.qa:QATask",
}


def task_class(task: str) -> Any:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    module, name = TASKS[task].split(":")
    return getattr(importlib.import_module(module), name)
