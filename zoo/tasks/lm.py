"""Causal language modelling: one LightningModule for every language model in the zoo,
neural (trained by gradient) or counted (n-gram, trained by observing the data once).

Perplexity is computed the same way for all of them: exp of the mean negative
log-probability of every target token (the end-of-sentence token included), from the
model's ``score``.
"""

from __future__ import annotations

import inspect

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.data.text import lm_batch
from zoo.metrics import TokenNLL
from zoo.models.base import check_token_ids, check_whole
from zoo.nn.decoding import check_sampling, sample
from zoo.registry import build_network
from zoo.tasks.base import ZooModule

log = logging.getLogger(__name__)


class CausalLMTask(ZooModule):
    """Train and sample any registered language model.

    Args:
        arch: registered architecture name (``zoo list``), e.g. ``rnn_lm`` or ``ngram``.
        arch_args: overrides of the architecture's config (``cell``, ``order``, ...).
        vocab_size, pad_id: linked from the data module by the CLI.
        label_smoothing: for neural models' training loss only; evaluation is exact NLL.
        init_from: a pretrained name or folder to start from (fine-tuning).
        log_samples: for MIDI models, draw a sample of this many events at the end of each
            validation and log its piano roll (and audio, when fluidsynth and a General MIDI
            soundfont are installed) to Weights & Biases; 0 logs none.
        optim: the optimiser settings (``lr``, ``warmup_steps``, ``optimizer``, ...), which
            every task takes: see :class:`~zoo.tasks.base.ZooModule`; unused by count-based models.
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
        label_smoothing: float = 0.0,
        init_from: str | None = None,
        log_samples: int = 0,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        arch, arch_args, start = self.resolve_start(arch, arch_args, init_from)
        self.save_hyperparameters(ignore=["start"])  # arch and arch_args as resolved
        self.net = build_network(arch, vocab_size=vocab_size, pad_id=pad_id, **arch_args)
        self.take_start(start)
        self.nll = nn.ModuleDict({"val": TokenNLL(), "test": TokenNLL()})
        self.automatic_optimization = not self.net.counts_only
        self._stream_state: Any = None  # carried across the chunks of a training stream
        self._eval_state: Any = None  # and of an evaluation stream

    # -- training ---------------------------------------------------------------
    @property
    def _takes_positions(self) -> bool:
        """Whether the network reads where a training window starts (absolute positions of a crop)."""
        return "positions" in inspect.signature(self.net.forward).parameters

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        tokens, targets = batch["tokens"], batch["targets"]
        ntok = targets.ne(self.hparams.pad_id).sum()
        if self.net.counts_only:
            if self.current_epoch > 0:
                raise RuntimeError("a count-based model must see the training data once: set trainer.max_epochs=1")
            if batch.get("stream"):  # the n-grams that cross from the chunk before into this one count too
                history = None if batch.get("reset") else self._stream_state
                self._stream_state = self.net.observe(tokens, targets, history)
            else:
                self.net.observe(tokens, targets)
            self.log("train/tokens", ntok.float(), reduce_fx="sum", batch_size=1)
            return None
        state = None
        if batch.get("stream") and not batch.get("reset"):
            state = self.net.detach_state(self._stream_state)  # truncated BPTT: carry, don't backpropagate
        if batch.get("stream"):
            out = self.net(tokens, state)
        elif "positions" in batch and self._takes_positions:  # training crops keep their positions in the piece
            out = self.net(tokens, positions=batch["positions"])
        else:
            out = self.net(tokens)
        logits, new_state = out if isinstance(out, tuple) else (out, None)  # recurrent nets return a state
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
        self.nll[prefix].update(self._score(batch), targets.ne(self.hparams.pad_id))

    def _score(self, batch: dict[str, Any]) -> Tensor:
        """log P of the batch's targets; a chunk of a stream goes on from the state the chunk before left."""
        if not batch.get("stream"):
            return self.net.score(batch["tokens"], batch["targets"])
        state = None if batch.get("reset") else self._eval_state
        scores, self._eval_state = self.net.score_stream(batch["tokens"], batch["targets"], state)
        return scores

    def _log_ppl(self, prefix: str) -> None:
        nll = self.nll[prefix].compute()
        self.nll[prefix].reset()
        self.log(f"{prefix}/loss", nll)
        self.log(f"{prefix}/ppl", torch.exp(nll), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_ppl("val")
        if self.hparams.get("log_samples") and not self.trainer.sanity_checking:
            self._log_music_sample(self.hparams.log_samples)

    def on_test_epoch_end(self) -> None:
        self._log_ppl("test")

    def on_train_epoch_start(self) -> None:
        self._stream_state = None

    def setup(self, stage: str) -> None:
        # each process would count its own shard and nothing sums the counts: refuse, don't mislead
        if stage == "fit" and self.net.counts_only and self.trainer.world_size > 1:
            raise ValueError(
                f"a count-based model ({self.hparams.arch}) is trained by counting in one process, but this run has "
                f"{self.trainer.world_size}; fit it without a distributed strategy (it takes seconds)"
            )

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

    @torch.no_grad()
    def mean_nll(self, batches: Any) -> float:
        """Mean negative log-likelihood per target token (natural log, the end token included)
        over batches ``{"tokens", "targets"}`` as the data modules make them (padding ignored); the
        chunks of a stream (``"stream"``, ``"reset"``) each go on from the state the one before left."""
        nll = TokenNLL().to(self.device)
        self.eval()
        for batch in batches:
            batch = {**batch, "tokens": batch["tokens"].to(self.device), "targets": batch["targets"].to(self.device)}
            nll.update(self._score(batch), batch["targets"].ne(self.hparams.pad_id))
        return float(nll.compute())

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

    # -- music ----------------------------------------------------------------------
    def _midi_tokenizer(self) -> Any:
        from zoo.data.midi import MIDITokenizer

        tok = self._tokenizer()
        if not isinstance(tok, MIDITokenizer):
            raise ValueError(f"this is a {type(tok).__name__} language model; MIDI generation needs a model of MIDI events")
        return tok

    @torch.no_grad()
    def generate(
        self,
        prompt_events: Sequence[int] | str | os.PathLike | None = None,
        max_events: int = 1024,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_end: bool = True,
        progress: bool = False,
    ) -> list[int]:
        """Sample MIDI events, from nothing or continuing a primer.

        Args:
            prompt_events: event ids, or (performance-event models) a MIDI file to continue.
                A primer that leaves no room for ``max_events`` within the model's length
                limit keeps only its last part, with a logged warning.
            max_events: new events to draw at most.
            temperature, top_k, top_p: sampling settings (1.0, 0 and 1.0: the model's distribution).
            seed: for a repeatable sample.
            stop_at_end: stop at the end-of-piece token; ``False`` always draws ``max_events``.
            progress: show a progress bar.

        Returns:
            the primer's and the new events' ids (no start or end token); decode them with
            ``model.tokenizers[1]`` or write them with :meth:`generate_midi`.
        """
        tok = self._midi_tokenizer()
        check_whole("max_events", max_events, note=" new events")
        check_whole("top_k", top_k, minimum=0, note=" (0: no limit)")
        check_sampling(temperature, top_p)
        prompt = [] if prompt_events is None else tok.primer(prompt_events)
        limit = self.net.max_positions - 1  # room after <s>
        if max_events > limit:
            raise ValueError(f"max_events={max_events} is more than the model's limit of {limit} events; ask for fewer")
        if len(prompt) + max_events > limit:
            keep = limit - max_events
            log.warning(f"the primer has {len(prompt)} events but only {keep} fit before {max_events} new ones "
                        f"within the model's {limit}; keeping its last {keep}")
            prompt = prompt[len(prompt) - keep :] if keep else []
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        self.eval()
        ids = torch.tensor([[tok.bos_id] + prompt], device=self.device)
        seq = sample(self.net, ids, max_new=max_events, eos_id=tok.eos_id if stop_at_end else None, pad_id=tok.pad_id,
                     temperature=temperature, top_k=top_k, top_p=top_p, generator=gen,
                     never=(tok.bos_id,) if stop_at_end else (tok.bos_id, tok.eos_id), progress=progress)
        out = seq[0, 1:].tolist()
        return [i for i in out if i not in (tok.pad_id, tok.eos_id)]

    def events_to_notes(self, ids: Sequence[int]) -> Any:
        """Event ids -> notes (N, 4): pitch, onset s, offset s, velocity."""
        return self._midi_tokenizer().to_notes(ids)

    def generate_midi(self, path: str | os.PathLike, piano_roll: bool = True, **kwargs: Any) -> Path:
        """:meth:`generate`, written to a MIDI file at ``path`` (and its piano roll beside it,
        ``path`` with ``.png``); ``kwargs`` go to :meth:`generate`. Returns the MIDI path."""
        from zoo.data.midi.render import check_midi_path, save_piece

        path = check_midi_path(path)  # before sampling, not after
        return save_piece(self.events_to_notes(self.generate(**kwargs)), path, piano_roll=piano_roll)

    def _log_music_sample(self, events: int) -> None:
        """A short sample's piano roll (and audio when a synthesiser is at hand) to W&B."""
        from lightning.pytorch.loggers import WandbLogger

        from zoo.data.midi import MIDITokenizer, log_sample

        if not isinstance(self.logger, WandbLogger) or self.tokenizers is None:
            return
        if not isinstance(self.tokenizers[1], MIDITokenizer):
            return
        training = self.training
        ids = self.generate(max_events=min(events, self.net.max_positions - 1), seed=self.current_epoch)
        self.train(training)
        log_sample(self.logger, self.events_to_notes(ids), title=f"epoch {self.current_epoch}", step=self.global_step)
