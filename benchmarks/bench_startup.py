"""Start-up costs: ``zoo list`` as a whole process, and ``zoo.load`` from a local folder.

    python -m benchmarks.bench_startup [--repeats 5]

``zoo list``: the wall time of the whole ``zoo list`` process (the console script beside
the interpreter, else ``python -m zoo.cli``), interpreter start-up included; it reads
zoo/catalogue.json and imports no torch while that file is current. ``zoo.load``: in a fresh
process, first the imports a load needs (``zoo``, torch, and the task module with
Lightning and torchmetrics), then the first ``zoo.load(name)`` of a published checkpoint whose folder is under checkpoints/
(config, tokenizer, weights with their sha256 check, the LightningModule; no network), then
a second one. Each figure is the median of ``--repeats`` fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOAD_NAME = "transformer_small.multi30k"

_LOAD_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import torch, zoo, zoo.hub
from zoo.tasks import task_class
task_class("translation")
t1 = time.perf_counter()
zoo.load(sys.argv[1])
t2 = time.perf_counter()
zoo.load(sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "first_load_s": t2 - t1, "second_load_s": t3 - t2}))
"""


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "n": len(values)}


def zoo_command() -> list[str]:
    """The ``zoo`` console script beside this interpreter, or ``python -m zoo.cli``."""
    script = Path(sys.executable).with_name("zoo")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "zoo.cli"]


def time_zoo_list(repeats: int) -> dict[str, Any]:
    """Wall time of whole ``zoo list`` processes (one warm-up run first: the file cache)."""
    from zoo.registry import read_catalogue

    cmd = [*zoo_command(), "list"]
    subprocess.run(cmd, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
            "catalogue_current": read_catalogue() is not None, "lines": len(out.stdout.splitlines()),
            "wall_s": _summary(times)}


def time_load(repeats: int, name: str = LOAD_NAME) -> dict[str, Any]:
    """Imports, first and second ``zoo.load`` of the local checkpoint folder of ``name``, in fresh processes."""
    from zoo.hub import checkpoints_dir

    folder = checkpoints_dir() / name
    if not folder.is_dir():
        return {"folder": str(folder), "skipped": "no local checkpoint folder"}
    rows = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET, name], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"name": name, "folder": os.path.relpath(folder, REPO),
            **{key: _summary([r[key] for r in rows]) for key in ("imports_s", "first_load_s", "second_load_s")}}


def main() -> None:
    """Print both figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(json.dumps({"zoo_list": time_zoo_list(args.repeats), "load": time_load(args.repeats)}, indent=1))


if __name__ == "__main__":
    main()
