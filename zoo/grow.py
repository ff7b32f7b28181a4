"""Grow a checkpoint without changing what it computes, to train on from there.

    zoo grow checkpoints/image_transformer_small.mnist --layers 32 --out runs/mnist_deeper
    zoo grow checkpoints/music_transformer_small.jsb --set relative_pitch=36 --out runs/jsb_pitch

Depth (``--layers``, pre-norm networks, any depth above the source's): each layer of the
source is followed by copies of itself, spread evenly (8 -> 16: one copy after every layer;
8 -> 12: one after every second layer, the 2nd, 4th, ...), whose residual branches end in zeros: the output projection of the attention and the second
linear map of the feed-forward network are zeroed, weights and biases. In a pre-norm network
a layer whose branches add zero is the identity, so the grown model gives the same outputs
as the source, while its copies start from trained attention and feed-forward weights
rather than random ones; gradients reach the zeroed maps at once and the copies learn from
the first step. This is the "stacking" way of growing depth (Gong et al. 2019; Net2Net's
identity layers, for Transformers).

New parts (``--set NAME=VALUE``, architecture settings that add parameters which start at
zero, such as the Music Transformer's ``relative_pitch`` table): the source's tensors are
copied, the new ones keep their initial values.

Either way :func:`grow` compares the grown network's outputs with the source's on random
input (to 1e-5) and refuses one that computes something else, such as a setting whose new
parameters do not start neutral; so nothing is written for it. Writes a Hub-layout folder that
``zoo fit --model.init_args.init_from OUT`` continues.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.hub import save_pretrained

# the last linear map of each residual branch, by its name inside a layer
BRANCH_OUTPUTS = re.compile(r"(^|\.)(out_proj|ffn\.3)\.(weight|bias)$")


def layer_stack(net: nn.Module) -> str:
    """The attribute name of the network's stack of ``config.layers`` residual layers (the decoder's, if it has an encoder too)."""
    depth = getattr(getattr(net, "config", None), "layers", None)
    names = [n for n, m in net.named_children() if isinstance(m, nn.ModuleList) and len(m) == depth]
    names = [n for n in names if n != "encoder"] if len(names) > 1 else names
    if len(names) != 1:
        raise ValueError(f"{type(net).__name__} has no single stack of config.layers layers to grow (found {names or 'none'})")
    if not getattr(net.config, "pre_norm", True):
        raise ValueError("only pre-norm networks can be grown exactly: a post-norm layer with a zero branch is not the identity")
    return names[0]


def copies_per_layer(old: int, new: int) -> list[int]:
    """How many layers of the ``new``-layer network each of the ``old`` source layers becomes
    (itself and its copies), spread evenly: 8 -> 12 gives 1, 2, 1, 2, 1, 2, 1, 2."""
    if new <= old:
        raise ValueError(f"--layers must be larger than the source's {old} layers, got {new}")
    return [(i + 1) * new // old - i * new // old for i in range(old)]


def grow_state(state: dict[str, torch.Tensor], stack: str, old: int, new: int) -> dict[str, torch.Tensor]:
    """The state dict of the ``new``-layer network: layer i of the source is followed by
    its copies (:func:`copies_per_layer`), the copies with their branch outputs zeroed."""
    counts = copies_per_layer(old, new)
    first = [sum(counts[:i]) for i in range(old)]
    prefix = re.compile(rf"^{re.escape(stack)}\.(\d+)\.(.+)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = prefix.match(key)
        if m is None:
            out[key] = value.clone()
            continue
        i, rest = int(m.group(1)), m.group(2)
        for j in range(counts[i]):
            copy = value.clone()
            if j and BRANCH_OUTPUTS.search(rest):
                copy.zero_()
            out[f"{stack}.{first[i] + j}.{rest}"] = copy
    return out


def grow(source: str, layers: int | None = None, changes: dict[str, Any] | None = None) -> Any:
    """The source checkpoint and its grown LightningModule (``layers`` deep, ``changes`` to its
    architecture settings), the new network holding every tensor of the source and computing
    the same outputs (checked; ValueError otherwise)."""
    small = zoo.load(source)
    old = dict(small.net.state_dict())
    if layers is not None:
        old = grow_state(old, layer_stack(small.net), small.net.config.layers, layers)
    args = dict(changes or {}) | ({"layers": layers} if layers is not None else {})
    if not args:
        raise ValueError("nothing to grow: give --layers or --set NAME=VALUE")
    hparams = dict(small.hparams)
    hparams["arch_args"] = {**dict(hparams.get("arch_args") or {}), **args}
    hparams.pop("init_from", None)
    big = type(small)(**hparams)
    state = big.net.state_dict()
    unknown = sorted(set(old) - set(state))
    if unknown:
        raise ValueError(f"the grown network has no place for {', '.join(unknown[:3])}; only settings that add parameters can be grown")
    for key, value in old.items():
        if state[key].shape != value.shape:
            raise ValueError(f"{key} changes shape {tuple(value.shape)} -> {tuple(state[key].shape)}; only settings that add parameters can be grown")
    big.net.load_state_dict({**state, **old}, strict=True)
    big.tokenizers = small.tokenizers
    big.data_description = getattr(small, "pretrained_config", {}).get("data")
    diff = max_difference(small.net, big.eval().net)
    if diff > 1e-5:
        raise ValueError(f"the grown network differs from the source by {diff:.2e}; nothing written")
    return small, big


def parse_setting(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as JSON where it parses (numbers, true/false), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--set takes NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def example_inputs(net: nn.Module, batch: int = 2, length: int = 256) -> tuple[torch.Tensor, dict[str, Any]]:
    """Random tokens (and labels or low-resolution images, if the network reads them) to compare outputs on."""
    c = net.config
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, getattr(c, "levels", None) or c.vocab_size, (batch, min(net.max_positions, length)), generator=g)
    kw: dict[str, Any] = {}
    if getattr(c, "num_classes", 0):
        kw["labels"] = torch.randint(0, c.num_classes, (batch,), generator=g)
    if getattr(c, "src_height", 0):
        kw["src"] = torch.randint(0, c.levels, (batch, c.src_height * c.src_width * c.channels), generator=g)
    return tokens, kw


@torch.no_grad()
def max_difference(small: nn.Module, big: nn.Module) -> float:
    """Largest absolute difference of two networks' outputs on the same random input."""
    tokens, kw = example_inputs(small)
    return float((small(tokens, **kw) - big(tokens, **kw)).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zoo grow", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a checkpoint folder or a registered name")
    parser.add_argument("--layers", type=int, help="depth of the grown network (more than the source's; copies spread evenly)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an architecture setting that adds parameters starting at zero, e.g. relative_pitch=24")
    parser.add_argument("--out", required=True, help="folder to write the grown checkpoint to (Hub layout)")
    args = parser.parse_args(argv)
    try:
        small, big = grow(args.source, args.layers, dict(parse_setting(t) for t in args.set))
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        raise SystemExit(f"zoo grow: {err}") from None
    what = ", ".join([f"{small.net.config.layers} -> {args.layers} layers"] * (args.layers is not None) + args.set)
    save_pretrained(big, Path(args.out), card=f"Grown from {args.source} ({what}) by `python -m zoo.grow`.")
    print(f"wrote {args.out}: {what}, outputs equal to the source's within 1e-5")


if __name__ == "__main__":
    main()
