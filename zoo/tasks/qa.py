"""Question answering over a story (bAbI): one LightningModule for the memory networks.

The loss is the cross-entropy of the answer word; evaluation counts wrong answers per task
(``val/error``, ``test/error``: the mean over the tasks, in percent, and
``val/error/task_N``). The paper's training options (Sukhbaatar et al. 2015, section 4.2):

* linear start (``linear_start``): the softmax of every memory hop is left out, making the
  network linear up to its answer softmax, until the validation loss stops falling
  (``linear_start_patience`` validations without a new best) or ``linear_start_max_epochs``
  have passed (with no patience, after exactly that many, as the authors' code has it), then
  put back; the learning rate is ``linear_start_lr`` meanwhile, and the ``"step"`` schedule
  starts counting its epochs when the softmax comes back. While it is out, ``val/error`` is
  logged as infinite (no softmax model yet: checkpoints chosen by it are never linear) and
  the linear model's error as ``val/error_linear``.
* random noise (``random_noise``, 0.1): in training, empty time slots are inserted at
  random between a story's statements, up to that share of their number, so that the
  temporal encodings cannot lean on exact positions; the empty slots hold no memory.
* gradient-norm clipping (trainer.gradient_clip_val: 40) and plain SGD at 0.01 halved
  every 25 epochs (15 for joint training): ``optimizer: sgd``, ``lr_schedule: step``, of the
  loss summed over a batch's questions (``loss_reduction: sum``), as the authors' code sums it.
  The paper clips the norm of the whole gradient; ``clip_each`` clips each weight's gradient
  alone, as the authors' code does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from zoo.metrics import AnswerErrors
from zoo.models.base import check_token_ids
from zoo.registry import build_network
from zoo.tasks.base import ZooModule

log = logging.getLogger(__name__)

FAILED_ABOVE = 5.0  # a task counts as failed above 5% test error (Weston et al. 2015)


@dataclass
class Answer:
    """What :meth:`QATask.answer` returns with ``return_attention=True``."""

    text: str  # the answer word
    sentences: list[str]  # the sentences the memory held, oldest first
    attention: Tensor  # (hops, len(sentences)): each hop's weight on each sentence
    dropped: int = 0  # the story's oldest sentences that did not fit in the memory


def error_summary(errors: dict[int, float]) -> dict[str, float]:
    """Per-task test errors (percent) -> ``mean_error``, ``failed_tasks`` and ``error/task_N``, rounded as published."""
    out: dict[str, float] = {"mean_error": round(sum(errors.values()) / max(len(errors), 1), 2),
                             "failed_tasks": sum(e > FAILED_ABOVE for e in errors.values())}
    out.update({f"error/task_{t}": round(e, 2) for t, e in sorted(errors.items())})
    return out


class QATask(ZooModule):
    """Train and query a question-answering memory network.

    Args:
        arch: registered architecture name (``zoo list 'memn2n*'``).
        arch_args: overrides of the architecture's config (``hops``, ``dim``, ``encoding``, ``tying``, ...).
        vocab_size, pad_id: linked from the data module by the CLI.
        linear_start: begin every fit without the memory softmaxes (see the module's docstring);
            fine-tuning loaded weights usually wants ``linear_start=False``.
        linear_start_lr: the learning rate while they are out.
        linear_start_patience: validations without a new best loss before they come back
            (None: the validation loss does not end it, only ``linear_start_max_epochs``).
        linear_start_max_epochs: they come back after this many epochs at the latest (0: no limit).
        random_noise: share of empty time slots inserted among a story's statements in training.
        loss_reduction: ``"mean"`` over a batch's questions, or ``"sum"``, as the authors' code
            does: the paper's learning rates (0.01) and clipping (40) are for the summed gradient.
        clip_each: clip each weight's gradient to ``trainer.gradient_clip_val`` alone instead
            of the norm of them all.
        init_from: a pretrained name or folder to start from (fine-tuning).
        optim: the optimiser settings (``lr``, ``optimizer``, ``lr_schedule``, ...), which every
            task takes: see :class:`~zoo.tasks.base.ZooModule`.
    """

    task_name = "qa"

    def __init__(
        self,
        arch: str = "memn2n",
        arch_args: dict[str, Any] | None = None,
        vocab_size: int = 200,
        pad_id: int = 0,
        linear_start: bool = False,
        linear_start_lr: float = 0.005,
        linear_start_patience: int | None = 0,
        linear_start_max_epochs: int = 0,
        random_noise: float = 0.0,
        loss_reduction: str = "mean",
        clip_each: bool = False,
        init_from: str | None = None,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        if linear_start and linear_start_patience is None and linear_start_max_epochs <= 0:
            raise ValueError("linear start without linear_start_patience needs linear_start_max_epochs > 0 "
                             "to say when the softmaxes come back")
        if not 0.0 <= random_noise < 1.0:
            raise ValueError(f"random_noise is a share of the statements, in [0, 1); got {random_noise}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}")
        arch, arch_args, start = self.resolve_start(arch, arch_args, init_from)
        self.save_hyperparameters(ignore=["start"])
        self.net = build_network(arch, vocab_size=vocab_size, pad_id=pad_id, **arch_args)
        self.take_start(start)
        self.errors = nn.ModuleDict({"val": AnswerErrors(), "test": AnswerErrors()})
        self.losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        # linear start: None until a fit decides (a loaded model answers with its softmaxes)
        self.linear: bool | None = None
        self.schedule_start = 0  # the epoch the step schedule counts from
        self._best_linear_loss, self._no_better = math.inf, 0
        self._unknown_said: set[str] = set()  # the words answer() has already said are not in the vocabulary

    # -- training -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.linear is None:  # before a resumed run restores its own state
            self.linear = bool(self.hparams.linear_start)

    def noisy_times(self, story: Tensor) -> Tensor:
        """Time slots (B, M) of a batch's statements with random empty slots between them.

        A story of n statements is spread over n + b slots, b drawn uniformly from
        0 .. ceil(random_noise * n) - 1, keeping their order (slot 0, the most recent,
        stays earliest); the model clips times to its memory.
        """
        b, m = story.shape[:2]
        n = story.ne(self.hparams.pad_id).any(-1).sum(-1)  # (B,) statements fill slots 0..n-1
        blanks = (torch.rand(b, device=story.device) * torch.ceil(self.hparams.random_noise * n)).floor().long()
        width = m + math.ceil(self.hparams.random_noise * m)
        cols = torch.arange(width, device=story.device)
        keys = torch.rand(b, width, device=story.device).masked_fill(cols >= (n + blanks)[:, None], 2.0)
        chosen = keys.argsort(-1)[:, :m]  # distinct random slots among the n + b
        chosen = chosen.masked_fill(cols[:m] >= n[:, None], width)  # only n of them are used
        return chosen.sort(-1).values

    def _run(self, batch: dict[str, Tensor], noisy: bool = False) -> tuple[Tensor, Tensor]:
        time = self.noisy_times(batch["story"]) if noisy and self.hparams.random_noise > 0 else None
        return self.net(batch["story"], batch["query"], time=time, linear=bool(self.linear))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, _ = self._run(batch, noisy=True)
        loss = F.cross_entropy(logits.float(), batch["answer"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["answer"].numel())
        return loss * batch["answer"].numel() if self.hparams.get("loss_reduction") == "sum" else loss

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if self.hparams.get("clip_each") and gradient_clip_val:
            for p in self.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_(p, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def step_lr_factor(self, epoch: int) -> float:
        """While the softmaxes are out: linear_start_lr; after: the step schedule from the epoch they came back."""
        if self.linear:
            return self.hparams.linear_start_lr / self.hparams.lr
        return super().step_lr_factor(max(epoch - self.schedule_start, 0))

    # -- evaluation -------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> None:
        logits, _ = self._run(batch)
        loss = F.cross_entropy(logits.float(), batch["answer"], reduction="none")
        self.losses[prefix].update(loss)
        self.errors[prefix].update(logits.argmax(-1), batch["answer"], batch["task"])

    def _log_errors(self, prefix: str) -> float:
        errors = self.errors[prefix].per_task()
        loss = float(self.losses[prefix].compute()) if errors else math.nan
        self.errors[prefix].reset()
        self.losses[prefix].reset()
        mean = sum(errors.values()) / len(errors) if errors else math.nan
        self.log(f"{prefix}/loss", loss)
        linear = bool(self.linear) and prefix == "val"
        self.log(f"{prefix}/error", math.inf if linear else mean, prog_bar=True)  # the same arguments every epoch
        if linear:
            self.log("val/error_linear", mean)
        for task, error in errors.items():
            self.log(f"{prefix}/error/task_{task}", error)
        if prefix == "test":
            self.log("test/failed_tasks", float(sum(e > FAILED_ABOVE for e in errors.values())))
        return loss

    def on_validation_epoch_end(self) -> None:
        loss = self._log_errors("val")
        if self.linear and not self.trainer.sanity_checking:
            self._end_linear_start(loss)

    def _end_linear_start(self, loss: float) -> None:
        """Put the softmaxes back once the validation loss has stopped falling (or the epochs allowed are done)."""
        if loss < self._best_linear_loss:
            self._best_linear_loss, self._no_better = loss, 0
        else:
            self._no_better += 1
        limit, patience = self.hparams.get("linear_start_max_epochs", 0), self.hparams.linear_start_patience
        if (patience is not None and self._no_better > patience) or (limit and self.current_epoch + 1 >= limit):
            self.linear = False
            self.schedule_start = self.current_epoch + 1
            log.info("linear start ends after epoch %d (validation loss %.4f, best %.4f): softmax back in the memory",
                     self.current_epoch, loss, self._best_linear_loss)

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    # -- Lightning checkpoints carry the linear-start state -----------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["zoo_linear_start"] = {"linear": bool(self.linear), "schedule_start": self.schedule_start,
                                          "best_loss": self._best_linear_loss, "no_better": self._no_better}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("zoo_linear_start")
        if state:
            self.linear, self.schedule_start = state["linear"], state["schedule_start"]
            self._best_linear_loss, self._no_better = state["best_loss"], state["no_better"]

    # -- inference ----------------------------------------------------------------------------
    def forward(self, story: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """story (B, M, J) and query (B, Jq) word ids, slot 0 the most recent sentence ->
        answer logits (B, V) and attention (B, hops, M). Checks the ids first."""
        vocab = self.net.config.vocab_size
        check_token_ids(story.flatten(1), vocab, "story word ids")
        check_token_ids(query, vocab, "question word ids")
        return self.net(story, query, linear=bool(self.linear))

    def _tokenizer(self) -> Any:
        if self.tokenizers is None:
            raise RuntimeError("this model has no tokenizer attached; load it with zoo.load or fit it on a data module")
        return self.tokenizers[1]

    @torch.no_grad()
    def answer(self, story: list[str], question: str, return_attention: bool = False) -> str | Answer:
        """The answer word to ``question`` about ``story`` (plain sentences, oldest first).

        The memory keeps the story's most recent ``memory_size`` sentences. With
        ``return_attention`` an :class:`Answer` also gives each hop's attention over them.
        A word the vocabulary lacks reads as ``<unk>``; the first time it appears a warning names it.
        """
        from zoo.data.babi import Example, collate, encode_words, say_unknown

        if isinstance(story, str):
            raise TypeError("story is a list of sentences, oldest first; split the text into its sentences")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the story")
        sentences = [s.strip() for s in story if isinstance(s, str) and s.strip()]
        if len(sentences) != len(story):
            raise ValueError("every sentence of the story must be non-empty text")
        if not sentences:
            raise ValueError("the story is empty; give at least one sentence")
        tok = self._tokenizer()
        kept = sentences[-self.net.config.memory_size :]
        encoded, unknown = encode_words(tok, kept + [question])
        unknown -= self._unknown_said
        say_unknown(unknown, "the story and the question")  # once a word, for this model
        self._unknown_said |= unknown
        batch = collate([Example(0, [tuple(ids) for ids in encoded[:-1]], encoded[-1], 0)], tok.pad_id)
        self.eval()
        logits, weights = self.net(batch["story"].to(self.device), batch["query"].to(self.device))
        text = tok.tok.id_to_token(int(logits[0].argmax())) or ""
        if not return_attention:
            return text
        attention = weights[0, :, : len(kept)].flip(-1).float().cpu()  # slot 0 is the most recent: back to story order
        return Answer(text, kept, attention, dropped=len(sentences) - len(kept))

    @torch.no_grad()
    def task_errors(self, batches: Any) -> dict[int, float]:
        """Test error in percent of each task over the batches a :class:`~zoo.data.babi.BabiDataModule` makes."""
        errors = AnswerErrors().to(self.device)
        self.eval()
        for batch in batches:
            logits, _ = self.net(batch["story"].to(self.device), batch["query"].to(self.device))
            errors.update(logits.argmax(-1), batch["answer"].to(self.device), batch["task"].to(self.device))
        return errors.per_task()
