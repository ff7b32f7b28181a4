"""The ``zoo`` command.

``zoo fit|validate|test|predict --config FILE`` run LightningCLI; ``zoo list``, ``info``,
``translate``, ``sample``, ``answer``, ``attention`` and ``publish`` are small commands of our own. Lightning and wandb are
imported only by the commands that need them, so ``zoo list`` answers at once.

The Lightning commands add zoo's safety defaults (``zoo.training``): checkpoints are written
atomically and read with ``weights_only=True``; the random generators' state travels with
each checkpoint, so a resumed run continues as the uninterrupted one would; and a config
with no ``ModelCheckpoint`` keeps ``<default_root_dir>/checkpoints/last.ckpt``, rewritten
every ``--checkpoint_every_n_steps`` (500) steps and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def configure_wandb() -> str:
    """Run W&B offline unless credentials and the network are there; returns the mode in use.

    An explicit ``WANDB_MODE`` always wins.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = os.path.expanduser("~/.netrc")
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        os.path.exists(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8", errors="ignore").read()
    )
    reason = None if has_key else "no W&B credentials found"
    if reason is None:
        import socket

        try:
            socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        except OSError:
            reason = "W&B is unreachable (no network)"
    if reason:
        os.environ["WANDB_MODE"] = "offline"
        print(f"zoo: {reason}; logging offline (WANDB_MODE=offline)", file=sys.stderr)
        return "offline"
    return "online"


LINKABLE = ("src_vocab_size", "tgt_vocab_size", "vocab_size", "pad_id", "bos_id", "eos_id",
            # pixel data -> ImageTask: the images' shape and levels, and what the model is conditioned on
            "levels", "height", "width", "channels", "num_classes", "src_height", "src_width", "pixel_task")


def _model_class(argv: list[str]) -> Any:
    """The task class a Lightning command will build, read from its --config files and overrides."""
    import importlib
    import inspect

    import yaml

    from zoo.tasks import TASKS, task_class

    path = None
    for i, arg in enumerate(argv):
        files = [argv[i + 1]] if arg in ("--config", "-c") and i + 1 < len(argv) else []
        files += [arg.split("=", 1)[1]] if arg.startswith("--config=") else []
        for file in files:
            if file.endswith((".yaml", ".yml")) and not os.path.isfile(file):
                raise FileNotFoundError(f"config file {file} does not exist; check the path given to --config")
            try:
                with open(file, encoding="utf-8") as f:
                    model = (yaml.safe_load(f) or {}).get("model")
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                raise ValueError(f"{file} is not valid YAML: {problem}{where}; fix its indentation, brackets or quotes") from None
            except (OSError, AttributeError):
                continue
            path = model.get("class_path", path) if isinstance(model, dict) else (model or path)
        if arg in ("--model", "--model.class_path") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            path = argv[i + 1]
    if isinstance(path, str):
        if "." in path:
            module, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
                if inspect.isclass(cls):
                    return cls
            except (ImportError, AttributeError):
                pass
        for task in TASKS:
            if task_class(task).__name__ == path:
                return task_class(task)
    return task_class("translation")


def _lightning(argv: list[str]) -> Any:
    import inspect
    import pickle
    import warnings

    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import WandbLogger

    from zoo.tasks.base import ZooModule
    from zoo.training import DEFAULT_EVERY_N_STEPS, LastCheckpoint, RandomState, install_atomic_checkpoint_io, refused

    # the data module's vocabulary sizes and pad id flow into whichever of them the task takes
    task_params = inspect.signature(_model_class(argv).__init__).parameters
    links = [name for name in LINKABLE if name in task_params]
    given: dict[str, Any] = {}  # what the parsed command names, for errors raised before the CLI object exists

    class ZooCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            for name in links:
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
            parser.add_argument(
                "--checkpoint_every_n_steps", type=int, default=DEFAULT_EVERY_N_STEPS,
                help="when trainer.callbacks has no ModelCheckpoint: keep <default_root_dir>/checkpoints/last.ckpt, "
                     "rewritten every N training steps and at the end (resume with --ckpt_path last); "
                     "0 leaves checkpointing to Lightning's default",
            )

        def parse_arguments(self, parser: Any, args: Any) -> None:
            super().parse_arguments(parser, args)
            subcommand = self.config.get("subcommand")
            given["ckpt_path"] = self.config[subcommand].get("ckpt_path") if subcommand else None

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            """The Trainer, with zoo's safety defaults: atomic checkpoints, a periodic last.ckpt, resumable RNG."""
            from lightning.pytorch.callbacks import ModelCheckpoint

            cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
            trainer_cfg = cfg.get("trainer") or {}
            given = kwargs.get("callbacks", trainer_cfg.get("callbacks"))
            callbacks = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
            callbacks.append(RandomState())
            every = cfg.get("checkpoint_every_n_steps") or 0
            if (
                self.subcommand in (None, "fit")
                and every > 0
                and trainer_cfg.get("enable_checkpointing", True) is not False
                and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
            ):
                root = trainer_cfg.get("default_root_dir") or os.getcwd()
                callbacks.append(LastCheckpoint(os.path.join(root, "checkpoints"), every_n_train_steps=every))
            trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
            install_atomic_checkpoint_io(trainer)
            return trainer

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            init_from = cfg.model.init_args.get("init_from")
            data_args = cfg.data.init_args
            if init_from and "tokenizer" in data_args and not data_args.tokenizer:
                data_args.tokenizer = init_from  # fine-tuning keeps the pretrained vocabulary

        def after_fit(self) -> None:
            trainer, model = self.trainer, self.model
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
            if best:
                model = type(model).load_from_checkpoint(best, map_location="cpu")
            out = os.path.join(trainer.log_dir or trainer.default_root_dir, "pretrained")
            if trainer.is_global_zero and getattr(model, "tokenizers", None) is not None:
                data = self.datamodule.describe() if hasattr(self.datamodule, "describe") else {}
                model.save_pretrained(out, data=data)
                print(f"zoo: saved the trained model in Hub layout to {out} (load it with zoo.load({out!r}))")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and logger.experiment is not None:
                    run_dir = os.path.dirname(logger.experiment.dir)
                    if os.environ.get("WANDB_MODE") == "offline":
                        print(f"zoo: W&B run written to {run_dir}; upload it with: wandb sync {run_dir}")
                    else:
                        print(f"zoo: W&B run at {logger.experiment.url}")

    configure_wandb()
    # zoo always passes its arguments on; Lightning warns about that when they are also sys.argv
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # a bad option raises (main() prints it in one line) instead of printing the whole usage
    parser_kwargs: dict[str, Any] = {"exit_on_error": False, **{c: {"exit_on_error": False} for c in LIGHTNING_COMMANDS}}
    if _has_omegaconf():
        parser_kwargs["parser_mode"] = "omegaconf"
    try:
        return ZooCLI(
            ZooModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
        )
    except pickle.UnpicklingError as err:
        # LightningCLI reads the hyperparameters of --ckpt_path with torch.load(weights_only=True) while it
        # parses (the Trainer's own reads go through AtomicCheckpointIO, which explains a refusal itself)
        if not given.get("ckpt_path"):
            raise
        raise refused(given["ckpt_path"], err) from None
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroy the distributed process group a command leaves behind, finished or failed.

    Lightning destroys only NCCL groups at exit. A gloo group (DDP on CPU) left to interpreter
    shutdown aborts the process there about one time in ten ("terminate called without an active
    exception", status -6), and Lightning's launcher then kills the run's other processes.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _has_omegaconf() -> bool:
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        return False
    return True


# -- our own commands ----------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> None:
    """Print architectures or pretrained names: from zoo/catalogue.json when it is current (no torch import)."""
    from zoo.registry import get_architecture, get_pretrained, list_models, read_catalogue

    cat = read_catalogue()
    if cat is not None:
        import fnmatch

        entries = cat["pretrained" if args.pretrained else "architectures"]
        for name in sorted(n for n in entries if not args.pattern or fnmatch.fnmatch(n, args.pattern)):
            e = entries[name]
            if args.pretrained:
                metrics = ", ".join(f"{k}={v}" for k, v in e["metrics"].items())
                print(f"{name:36s} {e['params'] / 1e6:6.1f}M  {metrics}")
            else:
                print(f"{name:28s} {e['task']:12s} {e['paper']}")
        return
    if args.pretrained:
        for name in list_models(args.pattern, pretrained=True):
            p = get_pretrained(name)
            metrics = ", ".join(f"{k}={v}" for k, v in p.metrics.items())
            print(f"{name:36s} {p.params / 1e6:6.1f}M  {metrics}")
    else:
        for name in list_models(args.pattern):
            a = get_architecture(name)
            print(f"{name:28s} {a.task:12s} {a.paper}")


def cmd_info(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from zoo.hub import resolve_folder
    from zoo.registry import PRETRAINED, get_architecture, get_pretrained

    name = args.name
    if name in PRETRAINED or "." in name and not os.path.exists(name):
        entry = get_pretrained(name)
        print(json.dumps(asdict(entry), indent=2))
        try:
            card = os.path.join(resolve_folder(name), "README.md")
            print(open(card, encoding="utf-8").read())
        except (OSError, ValueError) as err:
            print(f"(card not available offline: {err})")
    else:
        arch = get_architecture(name)
        net = arch.builder()
        n = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
        print(json.dumps({"name": name, "task": arch.task, "paper": arch.paper, "params": n, "config": net.config_dict()}, indent=2))


def cmd_translate(args: argparse.Namespace) -> None:
    model = _load_kind(args.name, "translate", "translation")
    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for line in model.translate(sentences, beam_size=args.beam, max_len=args.max_len):
        print(line)


def cmd_sample(args: argparse.Namespace) -> None:
    import zoo

    model = zoo.load(args.name)
    if model.task_name == "image":
        return _sample_images(model, args)
    if not hasattr(model, "sample"):
        raise ValueError(f"{args.name} is a {model.task_name} model; sampling needs a language model (zoo list)")
    from zoo.data.midi import ChoraleTokenizer, EventTokenizer

    if isinstance(model.tokenizers[1], (EventTokenizer, ChoraleTokenizer)):
        return _sample_midi(model, args)
    prompts = args.prompts or None
    for text in model.sample(prompts, num_samples=args.num, max_len=args.max_len, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        print(text)


def _sample_midi(model: Any, args: argparse.Namespace) -> None:
    if not args.out:
        raise ValueError(f"{args.name} makes music: give the MIDI file to write with --out piece.mid")
    if args.prompts:
        raise ValueError("a music model takes no text prompts; continue a MIDI file with --primer primer.mid")
    if args.primer is not None and not os.path.isfile(args.primer):
        raise FileNotFoundError(f"primer {args.primer} does not exist; give a MIDI file with --primer")
    path = model.generate_midi(args.out, prompt_events=args.primer, max_events=args.max_events,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                               stop_at_end=not args.no_end, progress=True)
    print(f"wrote {path} and its piano roll {Path(path).with_suffix('.png')}")


def _sample_images(model: Any, args: argparse.Namespace) -> None:
    import numpy as np

    from zoo.data.pixels import save_grid

    out = args.out or "samples.png"
    if not out.lower().endswith(".png"):
        raise ValueError(f"--out {out} does not end in .png; image samples are written as a PNG grid")
    src = None
    if args.input is not None:
        from matplotlib import image as mpimg

        if not os.path.isfile(args.input):
            raise FileNotFoundError(f"--input {args.input} does not exist; give the low-resolution PNG to enlarge")
        pixels = mpimg.imread(args.input)  # PNG: floats in [0, 1]
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[..., :3]
        tok = model.tokenizers[0]
        if pixels.ndim == 3 and tok.channels == 1:
            pixels = pixels.mean(-1)
        src = np.rint(pixels * tok.max_value).astype(np.int64)[None]
    labels = None if args.label is None else [args.label] * args.n
    images = model.generate(n=args.n, labels=labels, src=src, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, progress=True)
    save_grid(out, images, max_value=model.tokenizers[1].max_value)
    print(f"wrote {len(images)} sample(s) to {out}")


def cmd_attention(args: argparse.Namespace) -> None:
    from zoo.viz import attention_figure, save_figure

    model = _load_kind(args.name, "attention", "translation", "qa")
    if model.task_name == "qa":
        return _memory_attention(model, args)
    item = model.translate([args.sentence], beam_size=args.beam, return_attention=True)[0]
    maps = item.attention
    if args.layer is not None:
        names = list(maps)
        if not 1 <= args.layer <= len(names):
            raise ValueError(f"--layer {args.layer} does not exist; {args.name} has layers 1..{len(names)}")
        maps = {names[args.layer - 1]: maps[names[args.layer - 1]]}
    fig = attention_figure(maps, item.source_tokens, item.target_tokens, head=args.head, title=item.text)
    save_figure(fig, args.out, dpi=120)
    print(f"{item.text}\nattention written to {args.out}")


def _memory_attention(model: Any, args: argparse.Namespace) -> None:
    """zoo attention of a question-answering model: each hop's attention over the story's sentences."""
    from zoo.viz import memory_attention_figure, save_figure

    story = _read_story(args.story)
    bad = [n for n in args.support if not 1 <= n <= len(story)]
    if bad:
        raise ValueError(f"--support {bad[0]} is not a sentence of the story; number its {len(story)} sentences from 1")
    item = model.answer(story, args.sentence, return_attention=True)
    support = [n - 1 - item.dropped for n in args.support if n > item.dropped]
    fig = memory_attention_figure(item.attention, item.sentences, support, title=f"{args.sentence}  {item.text}")
    save_figure(fig, args.out, dpi=120)
    print(f"{item.text}\nattention written to {args.out}")


def _read_story(path: str | None) -> list[str]:
    """The sentences of a story file, one a line, oldest first (blank lines skipped)."""
    if not path:
        raise ValueError("give the story with --story FILE: a text file with one sentence a line, oldest first")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"story {path} does not exist; give a text file with one sentence a line, oldest first")
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"story {path} is not UTF-8 text; give a text file with one sentence a line") from None
    if not lines:
        raise ValueError(f"story {path} is empty; write one sentence a line, oldest first")
    return lines


def cmd_answer(args: argparse.Namespace) -> None:
    story = _read_story(args.story)
    model = _load_kind(args.name, "answer", "qa")
    print(model.answer(story, args.question))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from zoo.evaluate import main as evaluate_main

    evaluate_main(args)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from zoo.reproduce import main as reproduce_main

    reproduce_main(args)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from zoo.calibrate import calibrate_image_model
    from zoo.evaluate import data_module, datamodule_spec

    model = _load_kind(args.name, "calibrate", "image")
    dm = data_module(datamodule_spec(model.pretrained_config, args.name), model.tokenizers, data_dir=args.data_dir)
    result = calibrate_image_model(model, dm, args.temperature)
    model.save_pretrained(args.out, dtype=model.pretrained_config.get("dtype", "float32"))
    print(json.dumps(result))
    print(f"wrote {args.out}; measure it with: zoo evaluate {args.out}")


def _load_kind(name: str, command: str, *kinds: str) -> Any:
    """Load ``name`` and check it is a model of one of ``kinds`` (a task name, or 'music' / 'text' for language models)."""
    import zoo

    model = zoo.load(name)
    kind = model.task_name
    if kind == "lm":
        from zoo.data.midi import ChoraleTokenizer, EventTokenizer

        kind = "music" if isinstance(model.tokenizers[1], (EventTokenizer, ChoraleTokenizer)) else "text"
    if kind not in kinds and model.task_name not in kinds:
        wanted = {"translation": "a translation model", "image": "an image model", "text": "a text language model",
                  "music": "a music model", "qa": "a question-answering model"}
        need = " or ".join(wanted.get(k, k) for k in kinds)
        raise ValueError(f"{name} is {wanted.get(kind, kind)}; zoo {command} needs {need} (zoo list --pretrained)")
    return model


def cmd_publish(args: argparse.Namespace) -> None:
    from zoo.hub import publish

    publish(args.name, args.repo_id, dry_run=args.dry_run, private=args.private)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (zoo {name} --help for its options)", add_help=False)
    p = sub.add_parser("list", help="list architectures, or pretrained weights with --pretrained")
    p.add_argument("pattern", nargs="?", help="shell wildcard, e.g. 'transformer*'")
    p.add_argument("--pretrained", action="store_true")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="parameters, metrics, recipe and card of a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("translate", help="translate sentences (arguments, or lines on stdin)")
    p.add_argument("name", help="pretrained name, folder or Hub repo id")
    p.add_argument("sentences", nargs="*")
    p.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    p.add_argument("--max-len", type=int, default=None)
    p.set_defaults(func=cmd_translate)
    p = sub.add_parser("sample", help="sample text, music (MIDI + piano roll) or images from a generative model")
    p.add_argument("name", help="pretrained name, folder or Hub repo id")
    p.add_argument("prompts", nargs="*", help="texts to continue (default: start from nothing)")
    p.add_argument("--num", type=int, default=3, help="text samples without a prompt")
    p.add_argument("--max-len", type=int, default=40, help="new tokens of a text sample")
    p.add_argument("--out", default=None, help="music: the MIDI file to write (piece.mid, piano roll beside it); "
                                                "images: the PNG grid (default samples.png)")
    p.add_argument("--primer", default=None, help="music: a MIDI file to continue")
    p.add_argument("--max-events", type=int, default=1024, help="music: new events at most")
    p.add_argument("--no-end", action="store_true", help="music: never stop at the end-of-piece token")
    p.add_argument("--n", type=int, default=16, help="images: how many")
    p.add_argument("--label", type=int, default=None, help="images: the class, for a class-conditional model")
    p.add_argument("--input", default=None, help="images: the low-resolution PNG, for super-resolution")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("answer", help="answer a question about a story with a question-answering model")
    p.add_argument("name", help="pretrained name, folder or Hub repo id")
    p.add_argument("question")
    p.add_argument("--story", required=True, help="text file with one sentence a line, oldest first")
    p.set_defaults(func=cmd_answer)
    p = sub.add_parser("attention", help="draw what a translation model attended to (a heatmap), or a "
                                         "question-answering model at each hop (--story)")
    p.add_argument("name", help="pretrained name, folder or Hub repo id")
    p.add_argument("sentence", help="the sentence to translate, or the question about --story")
    p.add_argument("--story", default=None, help="question answering: the story, one sentence a line, oldest first")
    p.add_argument("--support", type=int, nargs="*", default=[],
                   help="question answering: the supporting facts to mark, as sentence numbers from 1")
    p.add_argument("--out", default="attention.png")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--layer", type=int, default=None, help="one decoder layer (1-based); default: all")
    p.add_argument("--head", type=int, default=None, help="one head (0-based); default: the mean of the heads")
    p.set_defaults(func=cmd_attention)
    p = sub.add_parser("evaluate", help="measure a checkpoint on its data, beside the figures it records")
    p.add_argument("name", help="pretrained name, folder or Hub repo id")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--data-dir", default=None, help="where the data set is (default: $ZOO_DATA_DIR, ../shared/data, the cache)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of the split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("reproduce", help="rebuild a published checkpoint from its recipe chain (configs/chains.yaml)")
    p.add_argument("name", nargs="?", help="pretrained name")
    p.add_argument("--list", action="store_true", help="show every chain, its steps and its CPU time")
    p.add_argument("--out", default=None, help="folder for the chain's steps (default runs/reproduce/NAME)")
    p.add_argument("--resume", action="store_true", help="go on with an interrupted chain in --out")
    p.add_argument("--smoke", action="store_true", help="every step at two batches: check that the chain is whole")
    p.set_defaults(func=cmd_reproduce)
    sub.add_parser("grow", help="deepen or widen a checkpoint so that it computes what it did (zoo grow --help)",
                   add_help=False)
    p = sub.add_parser("calibrate", help="fold a temperature fitted on the validation split into an image model")
    p.add_argument("name", help="pretrained name or folder of an image model")
    p.add_argument("--out", required=True, help="folder to write the calibrated checkpoint to")
    p.add_argument("--temperature", type=float, default=None, help="fold this temperature instead of fitting one")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("publish", help="upload a checkpoint folder to the Hugging Face Hub")
    p.add_argument("name", help="pretrained name or folder")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=cmd_publish)
    return parser


def run(argv: list[str]) -> Any:
    """Run a ``zoo`` command; the Lightning subcommands return their LightningCLI object."""
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _lightning(argv)
    if argv and argv[0] == "grow":
        from zoo.grow import main as grow_main

        return grow_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return None
    try:
        args.func(args)
    except (KeyError, ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"zoo: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    return None


ZOO_DIR = Path(__file__).resolve().parent


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions behind it (causes, then contexts), outermost first."""
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out):
        out.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return out


def _raised_by_zoo(err: BaseException) -> bool:
    """Whether ``err`` comes from a ``raise`` statement in zoo's own code: a checked, one-line message."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return Path(last.filename).resolve().is_relative_to(ZOO_DIR) and (last.line or "").lstrip().startswith("raise")


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _option_error_line(err: BaseException, command: str) -> str:
    """jsonargparse's nested, many-line account of a bad option, as one line: where, what, what to do."""
    text = str(err)
    found = re.findall(r'Parser key "([^"]+)"|given class_path \'([^\']+)\'', text)
    path = [key or "init_args" for key, _ in found]
    classes = [cls for _, cls in found if cls]
    root = _chain(err)[-1]
    detail = " ".join(line.strip() for line in _message(root).strip().splitlines() if line.strip())
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail)
    where = ".".join(path)
    if classes and path:
        hint = f"`zoo {command} --{path[0]}.help {classes[-1].rsplit('.', 1)[-1]}` lists its options"
    else:
        hint = f"`zoo {command} --help` lists the options"
    return f"{where + ': ' if where else ''}{detail}; fix the --config file or the override ({hint})"


def user_error_line(err: BaseException, command: str = "fit") -> str | None:
    """The one line to print for an error the user can fix, or None for anything else (keep its traceback)."""
    for e in _chain(err):
        if _raised_by_zoo(e):
            message = _message(e)
            return message if "\n" not in message.strip() else " ".join(message.split())
    if isinstance(err, argparse.ArgumentError) or type(err).__module__.startswith("jsonargparse"):
        return _option_error_line(err, command)
    return None


def main(argv: list[str] | None = None) -> None:
    """The ``zoo`` console script.

    An error in the input (a bad option, a missing file, an impossible setting) is printed
    as one line, ``zoo: error: ...``, with exit status 2; set ``ZOO_TRACEBACK=1`` to see its
    traceback. Other errors keep their traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in LIGHTNING_COMMANDS or os.environ.get("ZOO_TRACEBACK"):
        run(argv)
        return
    try:
        run(argv)
    except Exception as err:
        line = user_error_line(err, argv[0])
        if line is None:
            raise
        print(f"zoo: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
