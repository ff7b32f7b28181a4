"""Sequence-to-sequence translation: one LightningModule for every encoder-decoder in the zoo."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.utils.parametrize
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.metrics import CorpusBLEU, TokenNLL
from zoo.models.base import check_token_ids, check_whole
from zoo.nn.decoding import beam_search, greedy_search
from zoo.registry import build_network
from zoo.tasks.base import ZooModule

log = logging.getLogger(__name__)


class TranslationTask(ZooModule):
    """Train and run any registered encoder-decoder.

    Args:
        arch: registered architecture name (``zoo list``).
        arch_args: overrides of the architecture's config (``d_model``, ``dropout``, ...).
        src_vocab_size, tgt_vocab_size, pad_id: linked from the data module by the CLI.
        lr: peak learning rate (after warm-up).
        warmup_steps: linear warm-up, then inverse square root decay (0: constant).
        betas: AdamW's betas (the Transformer paper's 0.9, 0.98).
        eps: AdamW's epsilon (the paper's 1e-9).
        label_smoothing: epsilon_ls of the paper (0.1).
        init_from: a pretrained name, folder or Hub id to start from (fine-tuning); its
            architecture and config are used, ``arch_args`` may still override e.g. dropout.
        val_beam_size: beam used for validation BLEU (1 = greedy).
        log_examples: source / reference / hypothesis rows logged as a table each validation.
        optim: the other optimiser settings (``weight_decay``, ``lr_schedule``, ``optimizer``,
            ...), which every task takes: see :class:`~zoo.tasks.base.ZooModule`. This task
            differs only in the defaults above, the Transformer paper's.
    """

    task_name = "translation"

    def __init__(
        self,
        arch: str = "transformer_small",
        arch_args: dict[str, Any] | None = None,
        src_vocab_size: int = 8000,
        tgt_vocab_size: int = 8000,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        lr: float = 7e-4,
        warmup_steps: int = 4000,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-9,
        label_smoothing: float = 0.1,
        init_from: str | None = None,
        val_beam_size: int = 1,
        log_examples: int = 4,
        **optim: Any,
    ) -> None:
        super().__init__(lr=lr, warmup_steps=warmup_steps, betas=betas, eps=eps, **optim)
        check_whole("val_beam_size", val_beam_size, note=" (1 = greedy)")
        arch, arch_args, start = self.resolve_start(arch, arch_args, init_from)
        self.save_hyperparameters(ignore=["start"])  # arch and arch_args as resolved
        self.net = build_network(
            arch, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, pad_id=pad_id, **arch_args
        )
        self.take_start(start)
        self.nll = nn.ModuleDict({"val": TokenNLL(), "test": TokenNLL()})
        # corpus BLEU as summed n-gram counts: under DDP the ranks' sentences add up to the one-process figure
        self.bleu = nn.ModuleDict({k: CorpusBLEU(lowercase=k.endswith("_lc"))
                                   for k in ("val", "val_lc", "test", "test_lc")})
        self._val_outputs: list[tuple[str, str, str]] = []

    # -- training ---------------------------------------------------------------
    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: source ids (B, S), shifted target ids (B, T) -> logits (B, T, V).

        Checks the ids first (one min/max each); the training loop calls ``self.net`` directly.
        """
        check_token_ids(src, self._vocab("src"), "source ids")
        check_token_ids(tgt_in, self._vocab("tgt"), "target ids")
        return self.net(src, tgt_in)  # (B, T, V)

    def _vocab(self, side: str) -> int:
        return getattr(self.net.config, f"{side}_vocab_size", self.hparams.get(f"{side}_vocab_size"))

    def _loss(self, batch: dict[str, Any], smoothing: float) -> tuple[Tensor, Tensor]:
        logits = self.net(batch["src"], batch["tgt_in"])
        target = batch["tgt_out"]
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), target.flatten(),
            ignore_index=self.hparams.pad_id, label_smoothing=smoothing, reduction="sum",
        )
        ntok = target.ne(self.hparams.pad_id).sum()
        return loss / ntok, ntok

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, ntok = self._loss(batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(ntok))
        self.log("train/tokens", ntok.float(), reduce_fx="sum", batch_size=1)
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        target = batch["tgt_out"]
        logits = self.net(batch["src"], batch["tgt_in"])
        self.nll[prefix].update(logits.float().log_softmax(-1).gather(-1, target[..., None]).squeeze(-1),
                                target.ne(self.hparams.pad_id))
        hyps = self._decode_text(self._search(batch["src"], self.hparams.val_beam_size))
        self.bleu[prefix].update(hyps, batch["tgt_text"])
        self.bleu[f"{prefix}_lc"].update(hyps, batch["tgt_text"])
        self._val_outputs += list(zip(batch["src_text"], batch["tgt_text"], hyps))

    def _eval_epoch_end(self, prefix: str) -> None:
        rows, self._val_outputs = self._val_outputs, []
        if not rows:
            return
        # every DDP rank has rows (the data modules' EvalBatchSampler), so all of them sync here
        for key, name in ((prefix, "bleu"), (f"{prefix}_lc", "bleu_lc")):
            score = round(float(self.bleu[key].compute()), 2)  # all ranks' sentences; rows: this rank's, for examples
            self.bleu[key].reset()
            self.log(f"{prefix}/{name}", score, prog_bar=name == "bleu")
        nll = self.nll[prefix].compute()
        self.nll[prefix].reset()
        self.log(f"{prefix}/loss", nll, prog_bar=True)
        self.log(f"{prefix}/ppl", torch.exp(nll))
        self._log_examples(prefix, rows[: self.hparams.log_examples])

    def _log_examples(self, prefix: str, rows: list[tuple[str, str, str]]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not rows:
            return
        picture = None
        if self.tokenizers is not None and self.net.has_attention:
            from zoo.viz import figure_to_array

            item = self.translate([rows[0][0]], beam_size=1, return_attention=True)[0]
            picture = figure_to_array(item.figure())
        for logger in loggers:
            logger.log_table(
                key=f"{prefix}/examples", columns=["source", "reference", "hypothesis"],
                data=[list(r) for r in rows], step=self.global_step,
            )
            if picture is not None:
                logger.log_image(key=f"{prefix}/attention", images=[picture], caption=[rows[0][0]], step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self._decode_text(self._search(batch["src"], self.hparams.val_beam_size))

    # -- inference --------------------------------------------------------------
    def _max_len(self, src: Tensor, max_len: int | None) -> int:
        limit = self.net.max_positions - 1
        if max_len is None:
            max_len = int(src.ne(self.hparams.pad_id).sum(1).max()) * 3 // 2 + 10
        return max(1, min(max_len, limit))

    @staticmethod
    def _check_search(beam_size: int, max_len: int | None, alpha: float) -> None:
        check_whole("beam_size", beam_size, note=" (1 = greedy)")
        if max_len is not None:
            check_whole("max_len", max_len, note=" output tokens (or None: 1.5 x the source + 10)")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or alpha < 0:
            raise ValueError(f"alpha (the length penalty) must be 0 or more, got {alpha!r}")

    @torch.no_grad()
    def _search(self, src: Tensor, beam_size: int = 1, max_len: int | None = None, alpha: float = 0.6) -> Tensor:
        """Greedy or beam search over ids already known to be valid (the data module's)."""
        self._check_search(beam_size, max_len, alpha)
        ids = dict(bos_id=self.hparams.bos_id, eos_id=self.hparams.eos_id, pad_id=self.hparams.pad_id)
        n = self._max_len(src, max_len)
        # weights behind a parametrisation (ConvS2S's weight norm) are computed once per search, not once a step
        with torch.nn.utils.parametrize.cached():
            if beam_size > 1:
                return beam_search(self.net, src, max_len=n, beam_size=beam_size, alpha=alpha, **ids)[0]
            return greedy_search(self.net, src, max_len=n, **ids)[0]

    def _decode_text(self, out: Tensor) -> list[str]:
        if self.tokenizers is None:
            return [" ".join(map(str, row.tolist())) for row in out]
        return self.tokenizers[1].decode_batch(out.tolist())

    @torch.no_grad()
    def generate_ids(self, src: Tensor, beam_size: int = 1, max_len: int | None = None, alpha: float = 0.6) -> Tensor:
        """Token ids (B, S) -> hypothesis ids (B, L), ending in </s> and padded after it."""
        check_token_ids(src, self._vocab("src"), "source ids")
        return self._search(src, beam_size, max_len, alpha)

    def generate(self, src: Tensor, beam_size: int = 1, max_len: int | None = None, alpha: float = 0.6) -> list[str]:
        """Token ids (B, S) -> detokenised target sentences."""
        return self._decode_text(self.generate_ids(src, beam_size, max_len, alpha))

    @torch.no_grad()
    def _attention(self, src: Tensor, out: Tensor) -> list[Translation]:
        """Attention of the hypotheses ``out`` (B, L) over ``src`` (B, S), trimmed per sentence."""
        pad, eos = self.hparams.pad_id, self.hparams.eos_id
        tgt_in = torch.cat([torch.full_like(out[:, :1], self.hparams.bos_id), out[:, :-1]], 1)
        maps = self.net.attention_maps(src, tgt_in)  # name -> (B, H, T, S)
        src_tok, tgt_tok = self.tokenizers
        result = []
        for i in range(src.size(0)):
            s_len, t_len = int(src[i].ne(pad).sum()), int(out[i].ne(pad).sum())
            src_ids, tgt_ids = src[i, :s_len].tolist(), out[i, :t_len].tolist()
            result.append(Translation(
                text=tgt_tok.decode(tgt_ids),
                source_tokens=src_tok.pieces(src_ids),
                target_tokens=tgt_tok.pieces(tgt_ids),
                attention={k: w[i, :, :t_len, :s_len].float() for k, w in maps.items()},
            ))
        return result

    def encode_sources(self, sentences: list[str]) -> Tensor:
        """Sentences -> padded ids (B, S) with </s>, truncating (with a warning) what does not fit."""
        if isinstance(sentences, str):
            raise TypeError("translate takes a list of sentences; wrap a single sentence in a list")
        if len(sentences) == 0:
            raise ValueError("nothing to translate: the list of sentences is empty")
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"sentence {i} is empty or not a string; give non-empty text to translate")
        if self.tokenizers is None:
            raise RuntimeError("this model has no tokenizer attached; load it with zoo.load or fit it on a data module")
        tok = self.tokenizers[0]
        limit = self.net.max_positions - 1  # room for </s>
        rows = []
        for i, ids in enumerate(tok.encode_batch(sentences)):
            if len(ids) > limit:
                log.warning("sentence %d has %d subwords; truncated to the model's maximum of %d", i, len(ids), limit)
                ids = ids[:limit]
            rows.append(ids + [tok.eos_id])
        src = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            src[i, : len(r)] = torch.tensor(r)
        return src.to(self.device)

    @torch.no_grad()
    def translate(
        self,
        sentences: list[str],
        beam_size: int = 4,
        max_len: int | None = None,
        alpha: float = 0.6,
        batch_size: int = 64,
        return_attention: bool = False,
    ) -> list[Any]:
        """Translate raw sentences; returns detokenised text, one string per sentence.

        With ``return_attention=True`` each item is a :class:`Translation` carrying the
        subword tokens and the source-attention weights, name -> (heads, T, S).
        """
        if return_attention and not self.net.has_attention:
            raise ValueError(
                f"{self.hparams.arch} has no attention over the source to show; pick a model with attention (zoo list)"
            )
        check_whole("batch_size", batch_size, note=" sentences")
        self._check_search(beam_size, max_len, alpha)
        src = self.encode_sources(sentences)
        lengths = src.ne(self.hparams.pad_id).sum(1)
        order = lengths.argsort(descending=True)  # similar lengths together: less padding
        was_training = self.training
        self.eval()
        try:
            out: list[Any] = [None] * len(sentences)
            for i in range(0, src.size(0), batch_size):
                idx = order[i : i + batch_size]
                chunk = src[idx, : int(lengths[idx].max())]
                hyp = self.generate_ids(chunk, beam_size=beam_size, max_len=max_len, alpha=alpha)
                if return_attention:
                    items = self._attention(chunk, hyp)
                else:
                    items = self.tokenizers[1].decode_batch(hyp.tolist())
                for j, item in zip(idx.tolist(), items):
                    out[j] = item
            return out
        finally:
            self.train(was_training)


@dataclass
class Translation:
    """A translation with what the model attended to."""

    text: str
    source_tokens: list[str]
    target_tokens: list[str]
    attention: dict[str, Tensor]  # name (e.g. "layer 3") -> (heads, T, S)

    def figure(self, head: int | None = None) -> Any:
        from zoo.viz import attention_figure

        return attention_figure(self.attention, self.source_tokens, self.target_tokens, head=head, title=self.text)
