"""Translation metrics, computed the same way for every model and every table.

* ``sacrebleu``: cased BLEU on detokenised output against the raw references with the
  13a tokeniser: the number to quote.
* ``bleu_lc``: lowercased BLEU on 13a-tokenised text, the closest match to the
  Multi30k figures usually published (computed on lowercased, tokenised text).
"""

from __future__ import annotations

from collections.abc import Sequence


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
