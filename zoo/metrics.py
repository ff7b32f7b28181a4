"""Metrics, computed the same way for every model and every table.

* ``TokenNLL``: mean negative log-likelihood per target token over an evaluation (a
  torchmetrics ``Metric``, so it sums correctly across batches and processes);
  exp of it is the perplexity. Every task, neural or counted, feeds it the log-probability
  of each target token.

* ``sacrebleu``: cased BLEU on detokenised output against the raw references with the
  13a tokeniser: the number to quote.
  ``CorpusBLEU`` keeps it as n-gram counts, a ``Metric`` that sums across processes.
* ``bleu_lc``: lowercased BLEU on 13a-tokenised text, the closest match to the
  Multi30k figures usually published (computed on lowercased, tokenised text).
* ``AnswerErrors``: the share of wrong answers per task (bAbI), a ``Metric`` of counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class TokenNLL(Metric):
    """Mean negative log-likelihood per token; ``perplexity()`` is exp of it."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logprobs: Tensor, mask: Tensor) -> None:
        """logprobs (B, T) of the targets; mask (B, T) True at real (non-padding) targets."""
        # out of place: states reset under inference mode (trainer.validate) stay usable in fit's validation
        self.total = self.total - (logprobs.double() * mask).sum()
        self.count = self.count + mask.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class AnswerErrors(Metric):
    """Wrong answers and questions per task (ids ``0 .. num_tasks - 1``), summed across batches and processes."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_tasks: int = 21) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.add_state("wrong", torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_tasks, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, answer: Tensor, task: Tensor) -> None:
        """predicted and answer (B,) word ids; task (B,) each question's task."""
        self.wrong = self.wrong + torch.bincount(task[predicted != answer], minlength=self.num_tasks)
        self.count = self.count + torch.bincount(task, minlength=self.num_tasks)

    def compute(self) -> Tensor:
        """Error rate in percent per task (num_tasks,), NaN for a task without questions."""
        return torch.where(self.count > 0, 100.0 * self.wrong / self.count.clamp(min=1), float("nan"))

    def per_task(self) -> dict[int, float]:
        """{task: error %} of the tasks that had questions."""
        return {t: float(e) for t, e in enumerate(self.compute().tolist()) if self.count[t] > 0}


class CorpusBLEU(Metric):
    """Corpus BLEU (sacrebleu's 13a, exp smoothing) kept as its sufficient statistics.

    Each update adds the n-gram matches and totals and the hypothesis and reference lengths
    of a batch; these are sums, so across DDP processes they add up (``dist_reduce_fx="sum"``)
    and ``compute()`` gives exactly ``bleu()`` of all the sentences together, whichever
    process scored which.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, lowercase: bool = False, max_ngram_order: int = 4) -> None:
        super().__init__()
        self.lowercase, self.max_ngram_order = lowercase, max_ngram_order
        self.add_state("correct", torch.zeros(max_ngram_order, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(max_ngram_order, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sys_len", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ref_len", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        """Detokenised hypotheses and their (one each) raw references."""
        from sacrebleu.metrics import BLEU

        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if not hypotheses:
            return
        score = BLEU(tokenize="13a", lowercase=self.lowercase, force=True, max_ngram_order=self.max_ngram_order
                     ).corpus_score(list(hypotheses), [list(references)])
        self.correct += torch.tensor(score.counts, dtype=torch.long, device=self.correct.device)
        self.total += torch.tensor(score.totals, dtype=torch.long, device=self.total.device)
        self.sys_len += score.sys_len
        self.ref_len += score.ref_len

    def compute(self) -> Tensor:
        from sacrebleu.metrics import BLEU

        score = BLEU.compute_bleu(self.correct.tolist(), self.total.tolist(), int(self.sys_len), int(self.ref_len),
                                  smooth_method="exp", max_ngram_order=self.max_ngram_order)
        return torch.tensor(score.score, dtype=torch.float64)


def bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False) -> float:
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="13a", lowercase=lowercase).score


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Both BLEU figures, rounded to two decimals."""
    return {
        "sacrebleu": round(bleu(hypotheses, references), 2),
        "bleu_lc": round(bleu(hypotheses, references, lowercase=True), 2),
    }
