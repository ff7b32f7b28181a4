"""zoo's Transformer against the libraries users would pick instead: training and decoding.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        python -m benchmarks.bench_peers [--repeats 5] [--steps 4] [--skip-decoding]

Every model is the same encoder-decoder: d_model 256, 4 heads, 3+3 layers, FFN 1024,
shared 8,000-token vocabulary (embeddings shared and tied to the output projection),
dropout 0.1 on the residual branches and embeddings, no attention dropout, ReLU:

* ``zoo``: ``zoo.registry.build_network("transformer_small", dropout=0.1)`` (post-norm);
* ``torch.nn.Transformer``: :class:`TorchTransformer`, the same embedding and output
  wrapper around ``nn.Transformer(batch_first=True)`` (post-norm);
* ``marian``: ``transformers.MarianMTModel`` from a ``MarianConfig`` of that size, SDPA
  attention, no download;
* ``x-transformers``: ``x_transformers.XTransformer`` (pre-norm, learned positions, GELU,
  its defaults otherwise), flash (SDPA) attention, output tied to the embedding by hand.

Training: the same real Multi30k batches of 4,096 padded tokens for every model (the
``transformer_small.multi30k`` vocabulary, about 3,500 target tokens a batch), forward +
label-smoothed cross-entropy + backward + AdamW step, fp32 and bf16 autocast; target
tokens/s (non-padding ``tgt_out`` tokens). Decoding: 64 test sentences, exactly 40 new
tokens a sentence, greedy and beam 4, random weights, bf16 autocast. The models take turns
within every repeat after a warm-up; medians with min and max.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

D_MODEL, HEADS, LAYERS, D_FF, VOCAB, DROPOUT = 256, 4, 3, 1024, 8000, 0.1
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the zoo tokenizer's special ids
MAX_LEN = 256
NEW_TOKENS, DECODE_BATCH, BEAM = 40, 64, 4
TOKENIZER = "transformer_small.multi30k"
MODELS = ("zoo", "torch.nn.Transformer", "marian", "x-transformers")
# zoo with SDPA's fused kernel for every attention (the ablation of the
# written-out bf16 path, zoo.nn.attention.written_out); the same network otherwise
ZOO_SDPA = "zoo (SDPA only)"


def autocast(precision: str) -> ContextManager[Any]:
    """bf16 autocast on the CPU for ``"bf16"``, nothing for ``"fp32"``."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    """Median, min and max of ``values``, rounded."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


# -- the peers ------------------------------------------------------------------------
class TorchTransformer(nn.Module):
    """``torch.nn.Transformer`` with zoo's embedding and output wrapper.

    A shared embedding scaled by sqrt(C) plus sinusoidal positions and dropout on the way in,
    the output projection tied to the embedding on the way out; padding masks on the source,
    a causal mask on the target, as zoo's Transformer does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=D_MODEL**-0.5)
        pos = torch.arange(MAX_LEN)[:, None] * torch.exp(torch.arange(0, D_MODEL, 2) * (-math.log(10000.0) / D_MODEL))
        pe = torch.zeros(MAX_LEN, D_MODEL)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos), torch.cos(pos)
        self.register_buffer("pe", pe, persistent=False)
        self.drop = nn.Dropout(DROPOUT)
        self.core = nn.Transformer(D_MODEL, HEADS, LAYERS, LAYERS, D_FF, DROPOUT, batch_first=True)
        self.out = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.out.weight = self.embed.weight

    def _embed(self, ids: Tensor) -> Tensor:
        return self.drop(self.embed(ids) * math.sqrt(D_MODEL) + self.pe[: ids.size(1)])

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        pad = src.eq(PAD)
        t = tgt_in.size(1)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=src.device)
        h = self.core(self._embed(src), self._embed(tgt_in), tgt_mask=causal, src_key_padding_mask=pad,
                      memory_key_padding_mask=pad, tgt_is_causal=True)
        return self.out(h)


class MarianNet(nn.Module):
    """``MarianMTModel`` of the benchmark's size behind the ``(src, tgt_in) -> logits`` interface."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import MarianConfig, MarianMTModel

        cfg = MarianConfig(
            vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF,
            max_position_embeddings=MAX_LEN, dropout=DROPOUT, attention_dropout=0.0, activation_dropout=0.0,
            activation_function="relu", scale_embedding=True, share_encoder_decoder_embeddings=True,
            tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
            decoder_start_token_id=BOS, forced_eos_token_id=None,
        )
        self.model = MarianMTModel._from_config(cfg, attn_implementation="sdpa")
        gc = self.model.generation_config
        gc.bad_words_ids, gc.forced_eos_token_id, gc.max_length = None, None, None
        gc.pad_token_id, gc.eos_token_id, gc.decoder_start_token_id = PAD, EOS, BOS

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V); the decoder is causal only, as zoo's."""
        return self.model(input_ids=src, attention_mask=src.ne(PAD), decoder_input_ids=tgt_in, use_cache=False).logits


class XTransformerNet(nn.Module):
    """``x_transformers.XTransformer`` of the benchmark's size, called below its loss wrapper."""

    def __init__(self) -> None:
        super().__init__()
        from x_transformers import XTransformer

        self.model = XTransformer(
            dim=D_MODEL, tie_token_emb=True, enc_num_tokens=VOCAB, enc_depth=LAYERS, enc_heads=HEADS,
            enc_max_seq_len=MAX_LEN, enc_attn_dim_head=D_MODEL // HEADS, enc_ff_mult=D_FF // D_MODEL,
            enc_attn_flash=True, enc_emb_dropout=DROPOUT, enc_ff_dropout=DROPOUT, enc_layer_dropout=0.0,
            dec_num_tokens=VOCAB, dec_depth=LAYERS, dec_heads=HEADS, dec_max_seq_len=MAX_LEN,
            dec_attn_dim_head=D_MODEL // HEADS, dec_ff_mult=D_FF // D_MODEL, dec_attn_flash=True,
            dec_emb_dropout=DROPOUT, dec_ff_dropout=DROPOUT, ignore_index=-100,
        )
        dec = self.model.decoder.net  # XTransformer passes no tie_embedding on: tie the output as the others do
        dec.to_logits.weight = dec.token_emb.emb.weight

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        mask = src.ne(PAD)
        enc = self.model.encoder(src, mask=mask, return_embeddings=True)
        return self.model.decoder.net(tgt_in, context=enc, context_mask=mask)


def variant(name: str) -> ContextManager[Any]:
    """What to run model ``name`` under: for :data:`ZOO_SDPA`, zoo's attention with the written-out path off."""
    if name != ZOO_SDPA:
        return nullcontext()
    from unittest import mock

    return mock.patch("zoo.nn.attention.WRITTEN_OUT_MAX_PAIRS", 0)


def build(name: str) -> nn.Module:
    """A freshly initialised network ``name`` (one of :data:`MODELS` or :data:`ZOO_SDPA`)."""
    if name in ("zoo", ZOO_SDPA):
        from zoo.registry import build_network

        return build_network("transformer_small", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, pad_id=PAD,
                             dropout=DROPOUT)
    if name == "torch.nn.Transformer":
        return TorchTransformer()
    if name == "marian":
        return MarianNet()
    if name == "x-transformers":
        return XTransformerNet()
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def n_params(net: nn.Module) -> int:
    """Parameters, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())


# -- the work ---------------------------------------------------------------------------
def real_batches(n: int, max_tokens: int = 4096) -> list[dict[str, Tensor]]:
    """The first ``n`` Multi30k training batches of ``max_tokens`` padded tokens (seed 0)."""
    from zoo.data.text import TextDataModule

    torch.manual_seed(0)
    dm = TextDataModule(tokenizer=TOKENIZER, max_tokens=max_tokens)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [{k: next_batch[k] for k in ("src", "tgt_in", "tgt_out")} for next_batch in (next(it) for _ in range(n))]


def train_rate(net: nn.Module, opt: torch.optim.Optimizer, batches: list[dict[str, Tensor]], precision: str) -> float:
    """Target tokens/s over ``batches``: forward, label-smoothed loss, backward, AdamW step."""
    net.train()
    tokens, start = 0, time.perf_counter()
    for b in batches:
        with autocast(precision):
            logits = net(b["src"], b["tgt_in"])
        ntok = b["tgt_out"].ne(PAD).sum()
        loss = F.cross_entropy(logits.float().flatten(0, 1), b["tgt_out"].flatten(), ignore_index=PAD,
                               label_smoothing=0.1, reduction="sum") / ntok
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(ntok)
    return tokens / (time.perf_counter() - start)


def forward_flops(src: Tensor, tgt_in: Tensor) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of one forward pass at the padded shapes.

    Encoder layer on S positions: q, k, v, output projections (4 C^2) and the FFN (2 C F) per
    position, plus Q K^T and weights x V (2 S C per query). Decoder layer on T positions:
    self-attention as above (the full T x T products, as the kernels compute them), the
    cross-attention's q and output projections per target position, its k and v projections
    per source position, 2 S C per query for its products, and the FFN. Then the output
    projection, C V per target position. Embeddings, norms, softmax and the loss are left out.
    """
    b, s = src.shape
    t = tgt_in.size(1)
    c, f, v = D_MODEL, D_FF, VOCAB
    enc = b * s * (4 * c * c + 2 * c * f) + b * s * s * 2 * c
    dec = b * t * (4 * c * c + 2 * c * c + 2 * c * f) + b * s * 2 * c * c + b * t * t * 2 * c + b * t * s * 2 * c
    return 2 * (LAYERS * (enc + dec) + b * t * c * v)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype``: the median of ``repeats`` after a warm-up."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def bench_training(models: tuple[str, ...], batches: list[dict[str, Tensor]], repeats: int,
                   precisions: tuple[str, ...] = ("bf16", "fp32")) -> dict[str, Any]:
    """Interleaved training throughput of ``models`` on ``batches``; FLOPs and utilisation alongside."""
    torch.manual_seed(0)
    nets = {m: build(m) for m in models}
    opts = {m: torch.optim.AdamW(n.parameters(), lr=1e-5) for m, n in nets.items()}
    for m in models:  # warm-up: the first steps allocate and pick kernels
        for p in precisions:
            with variant(m):
                train_rate(nets[m], opts[m], batches[:2], p)
    samples: dict[str, dict[str, list[float]]] = {m: {p: [] for p in precisions} for m in models}
    peaks: dict[str, list[float]] = {"bf16": [], "fp32": []}
    for r in range(repeats):
        for p in precisions:
            for m in models:
                with variant(m):
                    samples[m][p].append(train_rate(nets[m], opts[m], batches, p))
        peaks["bf16"].append(matmul_peak(torch.bfloat16))
        peaks["fp32"].append(matmul_peak(torch.float32))
        print(f"  training repeat {r + 1}/{repeats}: " + ", ".join(
            f"{m} {samples[m]['bf16'][-1]:,.0f}" for m in models) + " bf16 tok/s", flush=True)
    tgt_tokens = sum(int(b["tgt_out"].ne(PAD).sum()) for b in batches)
    flops = 3 * sum(forward_flops(b["src"], b["tgt_in"]) for b in batches)  # forward + backward (2x forward)
    peak = {k: statistics.median(v) for k, v in peaks.items()}
    out: dict[str, Any] = {
        "batches": len(batches), "target_tokens": tgt_tokens,
        "padded_tokens": sum(b["src"].numel() + b["tgt_in"].numel() for b in batches),
        "train_flops": flops, "flops_per_target_token": round(flops / tgt_tokens),
        "matmul_peak_tflops": {k: round(v / 1e12, 3) for k, v in peak.items()},
        "matmul_peak_samples_tflops": {k: [round(x / 1e12, 3) for x in v] for k, v in peaks.items()},
        "models": {},
    }
    for m in models:
        row: dict[str, Any] = {"params": n_params(nets[m])}
        for p in precisions:
            row[f"train_{p}_tok_s"] = summary(samples[m][p])
            tflops = statistics.median(samples[m][p]) * flops / tgt_tokens
            row[f"train_{p}_tflops"] = round(tflops / 1e12, 4)
            row[f"train_{p}_mfu"] = round(tflops / peak[p], 4)
        out["models"][m] = row
    return out


# -- decoding ---------------------------------------------------------------------------
def decode_sources(n: int = DECODE_BATCH) -> Tensor:
    """The first ``n`` test_2016_flickr German sentences as padded ids ending in </s>, (n, S)."""
    from zoo.data.text import TextDataModule

    dm = TextDataModule(tokenizer=TOKENIZER, max_tokens=4096)
    tok = dm.tokenizers[0]
    rows = [ids + [EOS] for ids in tok.encode_batch(dm.texts("test")[0][:n])]
    src = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    return src


def zoo_decoder(net: nn.Module, beam: int) -> Callable[[Tensor], Tensor]:
    """zoo's greedy or beam search producing exactly :data:`NEW_TOKENS` tokens a sentence.

    EOS is given as BOS's id, which the searches never generate (BOS and padding are masked
    at every step): nothing ends early, and the last step (``max_len``) is forced to it, as a
    real search forces </s> when out of room. So every row runs :data:`NEW_TOKENS` cached
    decoder steps, like ``generate`` with ``min_new_tokens = max_new_tokens``.
    """
    from zoo.nn.decoding import beam_search, greedy_search

    ids = dict(bos_id=BOS, eos_id=BOS, pad_id=PAD, max_len=NEW_TOKENS)
    if beam == 1:
        return lambda src: greedy_search(net, src, **ids)[0]
    return lambda src: beam_search(net, src, beam_size=beam, alpha=0.6, **ids)[0]


def marian_decoder(net: MarianNet, beam: int) -> Callable[[Tensor], Tensor]:
    """``MarianMTModel.generate`` with its key/value cache, exactly :data:`NEW_TOKENS` new tokens."""
    def run(src: Tensor) -> Tensor:
        with torch.no_grad():
            return net.model.generate(input_ids=src, attention_mask=src.ne(PAD), num_beams=beam, do_sample=False,
                                      max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=True,
                                      length_penalty=0.6 if beam > 1 else 1.0, early_stopping=False)

    return run


def bench_decoding(repeats: int, precisions: tuple[str, ...] = ("bf16", "fp32"),
                   models: tuple[str, ...] = ("zoo", "marian", ZOO_SDPA)) -> dict[str, Any]:
    """Sentences/s of zoo's searches against Marian's ``generate``, greedy and beam 4, interleaved."""
    torch.manual_seed(0)
    src = decode_sources()
    nets = {m: build(m).eval() for m in models}
    runs: dict[tuple[str, int], Callable[[Tensor], Tensor]] = {}
    for beam in (1, BEAM):
        for m in models:
            runs[(m, beam)] = marian_decoder(nets[m], beam) if m == "marian" else zoo_decoder(nets[m], beam)  # type: ignore[arg-type]
    lengths = {}
    for (m, beam), fn in runs.items():  # warm-up, and the check that the work is equal
        for p in precisions:
            with autocast(p), torch.no_grad(), variant(m):
                out = fn(src)
        new = out.size(1) - (1 if m == "marian" else 0)  # generate's output starts with the start token
        lengths[f"{m}/beam{beam}"] = new
        if new != NEW_TOKENS:
            raise RuntimeError(f"{m} beam {beam} made {new} tokens, not {NEW_TOKENS}: the work is not equal")
    samples: dict[str, list[float]] = {f"{m}/beam{b}/{p}": [] for (m, b) in runs for p in precisions}
    for r in range(repeats):
        for p in precisions:
            for (m, beam), fn in runs.items():
                with autocast(p), torch.no_grad(), variant(m):
                    start = time.perf_counter()
                    fn(src)
                    samples[f"{m}/beam{beam}/{p}"].append(src.size(0) / (time.perf_counter() - start))
        print(f"  decoding repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]:.0f}" for k, v in samples.items() if k.endswith(precisions[0])) + " sent/s", flush=True)
    return {"batch": src.size(0), "source_len": src.size(1), "new_tokens": NEW_TOKENS, "beam": BEAM,
            "tokens_made": lengths, "sent_s": {k: summary(v) for k, v in samples.items()}}


def main() -> None:
    """Run the training and decoding comparisons and print their figures (the suite writes them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="training batches timed per model, precision and repeat")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--skip-decoding", action="store_true")
    args = p.parse_args()
    import json

    train = bench_training(tuple(args.models), real_batches(args.steps), args.repeats)
    print(json.dumps(train, indent=1))
    if not args.skip_decoding:
        print(json.dumps(bench_decoding(args.repeats), indent=1))


if __name__ == "__main__":
    main()
