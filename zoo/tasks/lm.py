"""Causal language modelling: one LightningModule for every language model in the zoo,
neural (trained by gradient) or counted (n-gram, trained by observing the data once).

Perplexity is computed the same way for all of them: exp of the mean negative
log-probability of every target token (the end-of-sentence token included), from the
model's ``score``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.data.text import lm_batch
from zoo.metrics import TokenNLL
from zoo.models.base import check_token_ids, check_whole
from zoo.nn.decoding import check_sampling, sample
from zoo.registry import build_network
from zoo.tasks.base import ZooModule


class CausalLMTask(ZooModule):
    """Train and sample any registered language model.

    Args:
        arch: registered architecture name (``zoo list``), e.g. ``rnn_lm`` or ``ngram``.
        arch_args: overrides of the architecture's config (``cell``, ``order``, ...).
        vocab_size, pad_id: linked from the data module by the CLI.
        lr, warmup_steps, betas, eps, weight_decay: AdamW with linear warm-up then inverse
            square root decay (``warmup_steps=0``: constant); unused by count-based models.
        label_smoothing: for neural models' training loss only; evaluation is exact NLL.
        init_from: a pretrained name or folder to start from (fine-tuning).
    """

    task_name = "lm"

    def __init__(
        self,
        arch: str = "rnn_lm",
        arch_args: dict[str, Any] | None = None,
        vocab_size: int = 8000,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        arch, arch_args, start = self.resolve_start(arch, arch_args, init_from)
        self.save_hyperparameters(ignore=["start"])  # arch and arch_args as resolved
        self.net = build_network(arch, vocab_size=vocab_size, pad_id=pad_id, **arch_args)
        self.take_start(start)
        self.nll = nn.ModuleDict({"val": TokenNLL(), "test": TokenNLL()})
        self.automatic_optimization = not self.net.counts_only
        self._stream_state: Any = None

    # -- training ---------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        tokens, targets = batch["tokens"], batch["targets"]
        ntok = targets.ne(self.hparams.pad_id).sum()
        if self.net.counts_only:
            if self.current_epoch > 0:
                raise RuntimeError("a count-based model must see the training data once: set trainer.max_epochs=1")
            self.net.observe(tokens, targets)
            self.log("train/tokens", ntok.float(), reduce_fx="sum", batch_size=1)
            return None
        state = None
        if batch.get("stream") and not batch.get("reset"):
            state = self.net.detach_state(self._stream_state)  # truncated BPTT: carry, don't backpropagate
        logits, new_state = self.net(tokens, state)
        if batch.get("stream"):
            self._stream_state = new_state
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=self.hparams.pad_id,
            label_smoothing=self.hparams.label_smoothing,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=int(ntok))
        self.log("train/tokens", ntok.float(), reduce_fx="sum", batch_size=1)
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        targets = batch["targets"]
        self.nll[prefix].update(self.net.score(batch["tokens"], targets), targets.ne(self.hparams.pad_id))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_ppl(self, prefix: str) -> None:
        nll = self.nll[prefix].compute()
        self.nll[prefix].reset()
        self.log(f"{prefix}/loss", nll)
        self.log(f"{prefix}/ppl", torch.exp(nll), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_ppl("val")

    def on_test_epoch_end(self) -> None:
        self._log_ppl("test")

    def on_train_epoch_start(self) -> None:
        self._stream_state = None

    def configure_optimizers(self) -> Any:
        return None if self.net.counts_only else super().configure_optimizers()

    # -- inference --------------------------------------------------------------
    def _vocab(self) -> int:
        return getattr(self.net.config, "vocab_size", self.hparams.vocab_size)

    def forward(self, tokens: Tensor) -> Any:
        """Token ids (B, T) -> what the network returns for them (logits (B, T, V), with a state
        for recurrent models). Checks the ids first; the training loop calls ``self.net``."""
        check_token_ids(tokens, self._vocab(), "token ids")
        return self.net(tokens)

    @torch.no_grad()
    def score(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """log P(targets[b, t] | tokens[b, :t+1]) as (B, T), for token ids checked against the vocabulary."""
        check_token_ids(tokens, self._vocab(), "token ids")
        check_token_ids(targets, self._vocab(), "target ids")
        if tokens.shape != targets.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and targets {tuple(targets.shape)} must have the same shape")
        return self.net.score(tokens, targets)

    @staticmethod
    def _check_texts(texts: Any, method: str, empty_ok: bool = False) -> None:
        if isinstance(texts, str):
            raise TypeError(f"{method} takes a list of texts; wrap a single text in a list")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text {i} given to {method} is not a string but {type(t).__name__}; give text")
            if not empty_ok and not t.strip():
                raise ValueError(f"text {i} given to {method} is empty; give non-empty text to score")

    @torch.no_grad()
    def perplexity(self, texts: list[str], batch_size: int = 128) -> float:
        """exp(mean NLL per token, </s> included) of raw sentences."""
        self._check_texts(texts, "perplexity")
        if not texts:
            raise ValueError("no text to score: the list is empty")
        check_whole("batch_size", batch_size, note=" texts")
        tok = self._tokenizer()
        nll = TokenNLL().to(self.device)
        self.eval()
        for i in range(0, len(texts), batch_size):
            ids = [s for s in tok.encode_batch(texts[i : i + batch_size]) if s]
            batch = lm_batch(ids, tok)
            tokens, targets = batch["tokens"].to(self.device), batch["targets"].to(self.device)
            nll.update(self.net.score(tokens, targets), targets.ne(tok.pad_id))
        return float(torch.exp(nll.compute()))

    def _tokenizer(self) -> Any:
        if self.tokenizers is None:
            raise RuntimeError("this model has no tokenizer attached; load it with zoo.load or fit it on a data module")
        return self.tokenizers[1]

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str] | None = None,
        num_samples: int = 1,
        max_len: int = 50,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Continue each prompt (or start from nothing) by ancestral sampling; returns the texts."""
        tok = self._tokenizer()
        if isinstance(prompts, str):
            raise TypeError("sample takes a list of prompts; wrap a single prompt in a list")
        if prompts is None:
            check_whole("num_samples", num_samples)
        if prompts is not None and len(prompts) == 0:
            raise ValueError("nothing to sample: the list of prompts is empty; pass prompts=None to sample from nothing")
        prompts = prompts if prompts is not None else [""] * num_samples
        self._check_texts(prompts, "sample", empty_ok=True)
        check_whole("max_len", max_len, note=" new tokens")
        check_whole("top_k", top_k, minimum=0, note=" (0: no limit)")
        check_sampling(temperature, top_p)  # before any work
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        self.eval()
        out = []
        for prompt in prompts:
            ids = torch.tensor([[tok.bos_id] + tok.encode(prompt)], device=self.device)
            seq = sample(self.net, ids, max_new=max_len, eos_id=tok.eos_id, pad_id=tok.pad_id,
                         temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
            out.append(tok.decode(seq[0].tolist()))
        return out
