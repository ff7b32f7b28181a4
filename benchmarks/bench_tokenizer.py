"""Multi30k tokenisation throughput: sentences/s of ``TextTokenizer.encode_batch``.

    python -m benchmarks.bench_tokenizer [--repeats 5]

The joint 8k BPE tokenizer of ``transformer_small.multi30k`` encodes all 29,000 German and
29,000 English training sentences in one ``encode_batch`` call per side (the Rust
``tokenizers`` library under it uses every core); the median of ``--repeats`` passes after a
warm-up, with subwords/s beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

TOKENIZER = "transformer_small.multi30k"


def bench_tokenizer(repeats: int) -> dict[str, Any]:
    """Sentences/s and subwords/s of encoding the Multi30k training sentences, both sides."""
    from zoo.data.text import TextDataModule

    dm = TextDataModule(tokenizer=TOKENIZER, max_tokens=4096)
    src, tgt = dm.texts("train")
    tok = dm.tokenizers[0]
    sentences = list(src) + list(tgt)
    pieces = sum(map(len, tok.encode_batch(sentences)))  # warm-up, and the count
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tok.encode_batch(sentences)
        rates.append(len(sentences) / (time.perf_counter() - start))
    med = statistics.median(rates)
    return {"tokenizer": TOKENIZER, "sentences": len(sentences), "subwords": pieces,
            "sent_s": {"median": round(med), "min": round(min(rates)), "max": round(max(rates)), "n": repeats},
            "subwords_s": round(med * pieces / len(sentences))}


def main() -> None:
    """Print the figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    print(json.dumps(bench_tokenizer(p.parse_args().repeats), indent=1))


if __name__ == "__main__":
    main()
