"""Rebuild a published checkpoint from nothing but the clone and the data: ``zoo reproduce NAME``.

Each checkpoint's chain is declared in ``configs/chains.yaml``: fit steps (a LightningCLI
recipe of configs/, started from an earlier step's model or from scratch), grow steps and
export steps (average, calibrate, store, measure). Every step writes one folder,
``OUT/ID``, and reads only what earlier steps of the same chain wrote there, so a chain that
runs in an empty folder is complete. ``OUT/chain.json`` records the finished steps:
``--resume`` skips them and resumes an interrupted fit from its ``last.ckpt``.

The chain ends by measuring its checkpoint, as ``zoo evaluate`` does, beside the figures
the published one records. ``smoke=True`` runs every step at a couple of batches, to check
that a chain is whole in minutes (the test suite does this for every chain).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAINS = REPO_ROOT / "configs" / "chains.yaml"
STATE = "chain.json"
KINDS = ("fit", "grow", "export")

# every fit step at smoke scale: two training batches, one validation batch
SMOKE_FIT = ["--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
             "--trainer.num_sanity_val_steps", "0", "--trainer.max_time", "null",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMOKE_LIMIT = 2  # items of each split an export measures at smoke scale
# and small data: the settings a data module takes, where it takes them
SMOKE_DATA = {"batch_size": 2, "eval_batch_size": 2, "max_tokens": 256, "train_limit": 64, "val_limit": 4, "test_limit": 4}


@dataclass
class Step:
    id: str
    kind: str
    spec: Any  # fit: the recipe's path; grow / export: their settings
    init_from: str | None = None
    args: list[str] = field(default_factory=list)
    minutes: float = 0.0

    def sources(self) -> list[str]:
        """The earlier steps this one reads."""
        if self.kind == "fit":
            return [self.init_from] if self.init_from else []
        src = self.spec["from"]
        return [src] if isinstance(src, str) else list(src)

    def describe(self) -> str:
        if self.kind == "fit":
            start = f" from {self.init_from}" if self.init_from else ""
            return f"fit {self.spec}{start}" + (f" {' '.join(self.args)}" if self.args else "")
        settings = ", ".join(f"{k} {v}" for k, v in self.spec.items() if k != "from")
        return f"{self.kind} {', '.join(self.sources())}" + (f" ({settings})" if settings else "")


def load_chains(path: str | os.PathLike = CHAINS) -> dict[str, list[Step]]:
    """Every chain of ``path``, checked: known step kinds, unique ids, sources declared before use."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    chains: dict[str, list[Step]] = {}
    for name, items in raw.items():
        steps: list[Step] = []
        for item in items:
            kinds = [k for k in KINDS if k in item]
            if len(kinds) != 1:
                raise ValueError(f"{path}: a step of {name} needs exactly one of {', '.join(KINDS)}: {item}")
            kind = kinds[0]
            step = Step(id=str(item.get("id", kind)), kind=kind, spec=item[kind], init_from=item.get("init_from"),
                        args=[str(a) for a in item.get("args", [])], minutes=float(item.get("minutes", 0)))
            known = {s.id for s in steps}
            if step.id in known:
                raise ValueError(f"{path}: {name} has two steps named {step.id}")
            missing = [s for s in step.sources() if s not in known]
            if missing:
                raise ValueError(f"{path}: step {step.id} of {name} reads {', '.join(missing)}, which no earlier step writes")
            steps.append(step)
        if not steps or steps[-1].kind != "export":
            raise ValueError(f"{path}: the chain of {name} must end with an export step")
        chains[name] = steps
    return chains


def get_chain(name: str, path: str | os.PathLike = CHAINS) -> list[Step]:
    chains = load_chains(path)
    if name not in chains:
        raise ValueError(f"no chain for {name!r} in {Path(path).name}; `zoo reproduce --list` names every chain")
    return chains[name]


def format_list(chains: dict[str, list[Step]]) -> str:
    lines = []
    for name, steps in chains.items():
        total = sum(s.minutes for s in steps)
        lines.append(f"{name}  (about {_duration(total)} of CPU time, 2 cores)")
        lines += [f"  {s.id:14s} {s.describe()}" + (f"  [{_duration(s.minutes)}]" if s.minutes else "") for s in steps]
    return "\n".join(lines)


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


# -- running ----------------------------------------------------------------------------
class Runner:
    """Runs one chain into ``out``, keeping ``out/chain.json`` up to date."""

    def __init__(self, name: str, steps: list[Step], out: Path, *, smoke: bool = False) -> None:
        self.name, self.steps, self.out, self.smoke = name, steps, Path(out), smoke
        self.state_path = self.out / STATE
        self.state: dict[str, Any] = {"name": name, "smoke": smoke, "done": {}}

    def model_of(self, step_id: str) -> Path:
        """The Hub-layout folder of an earlier step's model."""
        step = next(s for s in self.steps if s.id == step_id)
        folder = self.out / step_id
        return folder / "pretrained" if step.kind == "fit" else folder

    def _save_state(self) -> None:
        from zoo.io import write_text

        write_text(self.state_path, json.dumps(self.state, indent=2) + "\n")

    def run(self, resume: bool = False) -> dict[str, Any]:
        if self.state_path.exists():
            if not resume:
                raise ValueError(f"{self.out} holds a run of this chain already; add --resume to go on with it, "
                                 "or give another --out")
            self.state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if self.state.get("smoke") != self.smoke or self.state.get("name") != self.name:
                raise ValueError(f"{self.out} holds a run of {self.state.get('name')} (smoke={self.state.get('smoke')}); "
                                 "give another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_state()
        result: dict[str, Any] = {}
        for step in self.steps:
            if step.id in self.state["done"]:
                print(f"zoo reproduce: {step.id} done earlier, skipped")
                continue
            print(f"zoo reproduce: {self.name} / {step.id}: {step.describe()}", flush=True)
            start = time.perf_counter()
            result = getattr(self, f"_{step.kind}")(step, resume)
            self.state["done"][step.id] = {"seconds": round(time.perf_counter() - start, 1)}
            self._save_state()
        return result

    def _fit(self, step: Step, resume: bool) -> dict[str, Any]:
        from zoo.cli import run as zoo_run

        folder = self.out / step.id
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "recipe.yaml"
        from zoo.io import write_text

        start = self.model_of(step.init_from) if step.init_from else None
        write_text(config, fit_config(REPO_ROOT / step.spec, folder, start, smoke=self.smoke))
        argv = ["fit", "--config", str(config), *step.args, *(SMOKE_FIT if self.smoke else [])]
        if resume and (folder / "checkpoints" / "last.ckpt").exists():
            argv += ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
        zoo_run(argv)
        _finish_wandb()
        if not (folder / "pretrained").is_dir():
            raise RuntimeError(f"step {step.id} ended without a model in {folder / 'pretrained'}")
        return {}

    def _grow(self, step: Step, resume: bool) -> dict[str, Any]:
        from zoo.grow import grow
        from zoo.hub import save_pretrained

        (source,) = step.sources()
        small, big = grow(str(self.model_of(source)), step.spec.get("layers"), step.spec.get("set"))
        save_pretrained(big, self.out / step.id, card=f"{small.net.config.layers} layers grown to {big.net.config.layers}")
        return {}

    def _export(self, step: Step, resume: bool) -> dict[str, Any]:
        from zoo.export import export

        spec = step.spec
        last_step = step is self.steps[-1]
        runs = [self.out / s / "checkpoints" for s in step.sources()]
        return export(runs, self.name, self.out / step.id, average=int(spec.get("average", 1)),
                      last=bool(spec.get("last", False)), dtype=spec.get("dtype", "float32"),
                      calibrate=bool(spec.get("calibrate", False)), temperature=spec.get("temperature"),
                      card="" if not last_step or self.smoke else None,
                      limit=SMOKE_LIMIT if self.smoke else None, measure=last_step)


def fit_config(recipe: Path, folder: Path, init_from: Path | None, smoke: bool = False) -> str:
    """The recipe as this step runs it: its run folders moved into ``folder``, ``init_from`` filled in
    (and at smoke scale, small data and no logger)."""
    import yaml

    cfg = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    root = ((cfg.get("trainer") or {}).get("default_root_dir") or "").rstrip("/")

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if root and isinstance(value, str) and (value == root or value.startswith(root + "/")):
            return str(folder) + value[len(root):]
        return value

    cfg = move(cfg)
    cfg.setdefault("trainer", {})["default_root_dir"] = str(folder)
    model_args = cfg.setdefault("model", {}).setdefault("init_args", {})
    model_args["init_from"] = str(init_from) if init_from else None
    if smoke:  # no logger (nor the callbacks that need one): a smoke run's figures mean nothing
        trainer = cfg["trainer"]
        trainer["logger"] = False
        trainer["callbacks"] = [cb for cb in trainer.get("callbacks") or []
                                if not str(cb.get("class_path", "")).endswith("LearningRateMonitor")]
        data = cfg.get("data") or {}
        if isinstance(data, dict) and data.get("class_path"):
            accepted = inspect.signature(_import(data["class_path"])).parameters
            data.setdefault("init_args", {}).update({k: v for k, v in SMOKE_DATA.items() if k in accepted})
    return f"# {recipe.relative_to(REPO_ROOT)} as zoo reproduce runs it\n" + yaml.safe_dump(cfg, sort_keys=False)


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _finish_wandb() -> None:
    """Close the step's W&B run, so the next step's logger starts its own."""
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].finish()


def published_figures(name: str) -> dict[str, Any]:
    from zoo.registry import get_pretrained

    try:
        return dict(get_pretrained(name).metrics)
    except KeyError:
        return {}


def reproduce(name: str, out: str | os.PathLike | None = None, *, resume: bool = False, smoke: bool = False,
              chains: str | os.PathLike = CHAINS) -> dict[str, Any]:
    """Run ``name``'s chain into ``out`` (default runs/reproduce/NAME); returns the measured figures."""
    steps = get_chain(name, chains)
    out = Path(out) if out else Path("runs") / "reproduce" / name
    result = Runner(name, steps, out, smoke=smoke).run(resume=resume)
    result["published"] = published_figures(name)
    return result


def format_result(name: str, result: dict[str, Any]) -> str:
    lines = [f"{name}: {result['folder']}", f"{'metric':22s} {'rebuilt':>10s} {'published':>10s}"]
    for key, value in result["metrics"].items():
        pub = result["published"].get(key)
        lines.append(f"{key:22s} {value:10.4g} {'' if pub is None else format(pub, '10.4g'):>10s}")
    return "\n".join(lines)


def main(args: Any) -> None:
    if args.list:
        print(format_list(load_chains()))
        return
    if not args.name:
        raise ValueError("name the checkpoint to rebuild (zoo reproduce --list names them)")
    result = reproduce(args.name, args.out, resume=args.resume, smoke=args.smoke)
    print(format_result(args.name, result))
