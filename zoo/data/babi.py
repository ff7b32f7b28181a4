"""bAbI question answering (Weston et al. 2015, "Towards AI-Complete Question Answering: A Set of
Prerequisite Toy Tasks"): tasks 1-20, version 1.2, English, 1,000 training and 1,000 test
questions a task.

A file holds stories: numbered lines, a line number of 1 starting a new story. A statement
line is ``N sentence``; a question line is ``N question<TAB>answer<TAB>supporting ids``,
the ids being line numbers of the story's statements. Questions are not statements: the
memory of a question is the story's statements before it, of which the most recent
``memory_size`` (50) are kept, and its supporting facts are given as indices into that
memory (a fact that fell out of it is dropped).

Words are lower-cased with punctuation split off (``"Where is Mary?"`` reads ``where is
mary ?``); the vocabulary is every word of the training files of the tasks read, with the
zoo's special tokens first (``<pad>`` = 0). An answer is one token of that vocabulary even
when it names several things: task 8's ``apple,football`` and task 19's ``n,s`` (a path of
two steps) are single answer words, as in the paper, so the answer is always one softmax
over the vocabulary. The tokenizer is a Hugging Face WordLevel tokenizer with a lower-casing
normaliser and a punctuation-splitting pre-tokeniser, saved as tokenizer.json. A word it
lacks (in a validation or test split, or in files read with a reused tokenizer) reads as
``<unk>``; each split that holds such words names them in one warning.

10% of each task's training questions are held out for validation, chosen by ``seed`` (the
same every run); the test files are read for testing only. The data is read from a local
folder (``data_dir``, then ``$ZOO_DATA_DIR``, then ``../shared/data`` beside the
repository, then the download cache) or, when online, downloaded from the public archive.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from zoo.data.base import EvalBatchSampler, SequenceDataModule, batch_loader, read_lines
from zoo.data.download import fetch
from zoo.data.text import _find_folder
from zoo.data.tokenizer import EOS, TextTokenizer
from zoo.io import write_bytes

log = logging.getLogger(__name__)

TASK_NAMES = {
    1: "single-supporting-fact", 2: "two-supporting-facts", 3: "three-supporting-facts", 4: "two-arg-relations",
    5: "three-arg-relations", 6: "yes-no-questions", 7: "counting", 8: "lists-sets", 9: "simple-negation",
    10: "indefinite-knowledge", 11: "basic-coreference", 12: "conjunction", 13: "compound-coreference",
    14: "time-reasoning", 15: "basic-deduction", 16: "basic-induction", 17: "positional-reasoning",
    18: "size-reasoning", 19: "path-finding", 20: "agents-motivations",
}
ALL_TASKS = tuple(TASK_NAMES)
BABI_FOLDER = "babi/tasks_1-20_v1-2"  # under a data folder, and in the download cache
# The archive as the bAbI project publishes it. Its sha256 is the one Hugging Face's babi_qa loader
# records for it (15,719,851 bytes); every task file taken from it is checked against its own
# sha256 (BABI_SHA256, computed from the files as unpacked from that archive) before it is kept.
BABI_URLS = ("https://dl.fbaipublicfiles.com/babi/tasks_1-20_v1-2.tar.gz",
             "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz")
BABI_ARCHIVE_SHA256 = "0364ebde659f14d11bc21744516c5ec49d3d06cb692733f66680771244998898"
BABI_SHA256 = {  # en/qaN_<name>_{train,test}.txt
    "qa1_single-supporting-fact_train.txt": "c64ba9b1a49bbb111ffc4cd2ae4f129d25c012399dd7ade9679eea464b9afb05",
    "qa1_single-supporting-fact_test.txt": "55acf66cef2f6d798e2aa1d056e1ec8f24e910ea9215b639450574321132959b",
    "qa2_two-supporting-facts_train.txt": "a4978af5bc0dc30191810e7c9949aaa6eae939ed0f6beb9fcb5f4330c2a27860",
    "qa2_two-supporting-facts_test.txt": "eff93fb9cd81ba02eb765772cf7cc269769ed44ec71cbbbc19cfb16ee5eba0f6",
    "qa3_three-supporting-facts_train.txt": "a6e78019f36a02a7ed71fe6aaded0b563ff09c8deec392931801fcd9c6af4d60",
    "qa3_three-supporting-facts_test.txt": "17795c977100baf8188f386522ae301b62d6c1a13efc01b3aea781e588b4d57f",
    "qa4_two-arg-relations_train.txt": "c9370502d85fa382f32d1fea2111e817f81ae9e3e79eb2924a1a5392a90417fa",
    "qa4_two-arg-relations_test.txt": "07f0ca18ddeea9eed4ba6d59e162adcb0ce44815721114b3540d92825509331e",
    "qa5_three-arg-relations_train.txt": "086cd59c3ca9677bfac3d6a22ca5853c76a5c1fbae3159c7c4a6aef759a74ec0",
    "qa5_three-arg-relations_test.txt": "ec825c1c8a76e63a31f0d7a7763cd63740e98332fa9bdf246a19068949bd5f97",
    "qa6_yes-no-questions_train.txt": "5a133115ee35d475776df703ff605d145b11effbcdbf7e74861f9d5639246a5a",
    "qa6_yes-no-questions_test.txt": "b108b16f1eccbd1c24df6dca2649079a7b2f10af7fd12d4c45a3393802de59e3",
    "qa7_counting_train.txt": "dca03bd91876951c49f1c971c83c9dd55404de60201b7b6435451cf7ddb4751c",
    "qa7_counting_test.txt": "a74d1f2b91329b2bae814d41cdac2fbdfdf0328562b7d8afa9a0fa576d461e27",
    "qa8_lists-sets_train.txt": "058604df6f9440458317e8ae685d2b7b84261e1a80b4d6410a9140d16f81bf06",
    "qa8_lists-sets_test.txt": "362a653c821a580fa315a85243b4f03bfa06fa7e0269b6f8e596f8fe6911646a",
    "qa9_simple-negation_train.txt": "0c3b89921af0caea1c4059ee3f7b7f2a88869f924195a428da37820446b8c49f",
    "qa9_simple-negation_test.txt": "63590aff3f89993db409f0e9a9eb39c2a5b9d5efff99b255d800a891b0044d9f",
    "qa10_indefinite-knowledge_train.txt": "0b7691689447bab05476c5b48c44999b41e747c3978df69c18fdd87b60d6e8b3",
    "qa10_indefinite-knowledge_test.txt": "fde8f20ed0b3ba979058ed391a566af34653f23baab5b2793ee37f87ef4e88b7",
    "qa11_basic-coreference_train.txt": "9468de9a1f256f43dfda693a5d07182d21149a82b65f7c2451c64e9cff5eb138",
    "qa11_basic-coreference_test.txt": "46f3290d0158ce1285a40cd2d793f5a65f86ae5000226e165cbc85a3dfeb2f6f",
    "qa12_conjunction_train.txt": "45c2764bb2d3c8f699d35e9d9aa7958fcd96379c6e907116cdf74526c108bb25",
    "qa12_conjunction_test.txt": "6437718f8f9801ce345869e910b896836cdc6fd2d01dc7b4d2df49730703b4b1",
    "qa13_compound-coreference_train.txt": "533a391edbda743e4c99504de88b40cdded5b1d5ef454d1390f0863f748a4cc9",
    "qa13_compound-coreference_test.txt": "76a25b684f23c9cc473d8cd1465506168b9a1ec8891cfc59d0bbd87e6a064990",
    "qa14_time-reasoning_train.txt": "b7561cbc624205c9c2fdbb8c843cfa8ad90edd65e78bb223fc6dea8113662df8",
    "qa14_time-reasoning_test.txt": "e3f0b19858ffbec3ed1e49076cc4d1295a89ce146c50318b862f13f202b3caf2",
    "qa15_basic-deduction_train.txt": "e856ebfdcce4dd7d617c1d10f985e96a0850c0ca18e9a19a017cb710d135ed3d",
    "qa15_basic-deduction_test.txt": "32b77e117fe9acf5f94906684e3b5206de0108e646c76e1da3e022896ec7ee94",
    "qa16_basic-induction_train.txt": "20121005137e3d4b061a086eb177a456303d5742b764eb8da2d0e480b6af4d28",
    "qa16_basic-induction_test.txt": "4a11e55366f2a5a859b5a81f683ee23801bdbe71ef984e51adb976bd053e8dcf",
    "qa17_positional-reasoning_train.txt": "20083bf56ff74f0e7cf5e3e2f8c3905cdb8ef09293c3e8cf7a96ed8b45ae2277",
    "qa17_positional-reasoning_test.txt": "9e1e0250ed4ec1831757fab26c04138f81ea557ebf6976a220db879cbed04bac",
    "qa18_size-reasoning_train.txt": "18b7dcf52c9a0e87e4e7dd3d65b7e5a630de039645f52a1294197af7481d739d",
    "qa18_size-reasoning_test.txt": "d34f70eb7228a276fcb3a7854174fe562c5634f4fb454a39fc3d1ad9934be3ef",
    "qa19_path-finding_train.txt": "dcb788352a56effb7bea1449128f31cc9c342c8c327b6df2caeee0e379e6ad3a",
    "qa19_path-finding_test.txt": "023e391f0d7f79c9e6ae1c46c093e2d0dbd50ab8fbd8965e037a75e3614c20e5",
    "qa20_agents-motivations_train.txt": "29580ad55fb7b4b29ba014696056cc68f8f347dac3be88470fd692ad60150398",
    "qa20_agents-motivations_test.txt": "bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729",
}


def task_file(task: int, split: str) -> str:
    """The file name of ``task``'s ``train`` or ``test`` questions."""
    return f"qa{task}_{TASK_NAMES[task]}_{split}.txt"


def find_babi(data_dir: str | None = None, download: bool = True) -> Path:
    """The folder whose ``en/`` holds the 40 task files, found locally or downloaded.

    Each candidate folder may be that folder itself or hold it as ``babi/tasks_1-20_v1-2/``.
    """
    return _find_folder(
        "bAbI tasks 1-20 v1.2", BABI_FOLDER, lambda f: all((f / "en" / n).is_file() for n in BABI_SHA256), data_dir,
        _download_babi if download else None,
        "set data_dir or ZOO_DATA_DIR to the folder holding en/qa1_single-supporting-fact_train.txt, "
        "or go online to download it",
    )


def _download_babi(dest: Path) -> Path:
    """Fetch the archive, then keep its 40 English 1k task files, each checked against its sha256."""
    archive = fetch(BABI_URLS, dest / "tasks_1-20_v1-2.tar.gz", sha256=BABI_ARCHIVE_SHA256, timeout=60)
    (dest / "en").mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for name, digest in BABI_SHA256.items():
            try:
                member = tar.extractfile(f"tasks_1-20_v1-2/en/{name}")  # read by name: nothing else is unpacked
            except KeyError:
                member = None
            data = member.read() if member is not None else b""
            if hashlib.sha256(data).hexdigest() != digest:
                raise OSError(f"{name} in {archive.name} is not the published file (sha256 differs)")
            write_bytes(dest / "en" / name, data)
    archive.unlink()
    return dest


# -- stories and questions -------------------------------------------------------------
@dataclass
class BabiQuestion:
    """One question with its memory: the story's statements before it, oldest first."""

    task: int
    story: list[str]  # at most memory_size statements, the most recent, oldest first
    question: str
    answer: str
    support: list[int]  # indices into ``story`` of the supporting facts it still holds


_LINE = re.compile(r"(\d+) ([^\t]*)(?:\t([^\t]*)(?:\t([\d ]*))?)?")  # N text [<TAB>answer [<TAB>ids]]


def parse_babi(lines: Sequence[str], task: int = 0, memory_size: int | None = 50,
               source: str = "bAbI text") -> list[BabiQuestion]:
    """The questions of a bAbI file's lines, each with the last ``memory_size`` (None: all) statements before it."""
    questions: list[BabiQuestion] = []
    statements: list[str] = []
    index_of: dict[int, int] = {}  # line number -> index into statements
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.rstrip())
        if match is None:
            raise ValueError(f"{source} line {n} is not 'N sentence' or 'N question<TAB>answer<TAB>ids': {line!r}")
        number, text, answer, ids = match.groups()
        if int(number) == 1:
            statements, index_of = [], {}
        if answer is None:
            index_of[int(number)] = len(statements)
            statements.append(text.strip())
            continue
        start = len(statements) - memory_size if memory_size else 0
        start = max(start, 0)
        support = [index_of[int(i)] - start for i in (ids or "").split() if int(i) in index_of and index_of[int(i)] >= start]
        questions.append(BabiQuestion(task, statements[start:], text.strip(), answer.strip().lower(), support))
    return questions


def babi_tokenizer(texts: Sequence[str], answers: Sequence[str]) -> TextTokenizer:
    """A word vocabulary of ``texts`` (lower-cased, punctuation split off) and whole ``answers``."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.Lowercase()
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = [" ".join(w for w, _ in split.pre_tokenize_str(normalizer.normalize_str(t))) for t in texts]
    tok = TextTokenizer.words(words + list(answers), eos=EOS)
    tok.tok.normalizer, tok.tok.pre_tokenizer = normalizer, split
    return tok


def answer_id(tok: Any, answer: str) -> int:
    """The vocabulary id of an answer word (``<unk>`` if it has none)."""
    i = tok.tok.token_to_id(answer.lower())
    return tok.unk_id if i is None else i


def encode_words(tok: Any, texts: Sequence[str]) -> tuple[list[list[int]], set[str]]:
    """The ids of each text, and the words (lower-cased) the vocabulary lacks: each read as ``<unk>``."""
    encodings = tok.tok.encode_batch(list(texts), add_special_tokens=False)
    unknown = {text[a:b].lower() for text, e in zip(texts, encodings) for i, (a, b) in zip(e.ids, e.offsets)
               if i == tok.unk_id}
    return [e.ids for e in encodings], unknown


def say_unknown(words: set[str], where: str) -> None:
    """Log, in one line, the words of ``where`` that are not in the vocabulary."""
    if words:
        shown = sorted(words)
        listing = ", ".join(shown[:8]) + (", ..." if len(shown) > 8 else "")
        log.warning("%s hold %d word%s not in the vocabulary (%s); each reads as <unk>, which the model "
                    "never learnt", where, len(shown), "" if len(shown) == 1 else "s", listing)


@dataclass
class Example:
    task: int
    memory: list[tuple[int, ...]]  # word ids of each statement, oldest first
    query: list[int]
    answer: int


def collate(examples: list[Example], pad_id: int) -> dict[str, Tensor]:
    """story (B, M, J) with slot 0 the most recent statement, query (B, Jq), answer (B,), task (B,)."""
    slots = max(1, max(len(e.memory) for e in examples))
    width = max(1, max((len(s) for e in examples for s in e.memory), default=1))
    story = np.full((len(examples), slots, width), pad_id, dtype=np.int64)
    query = np.full((len(examples), max(len(e.query) for e in examples)), pad_id, dtype=np.int64)
    for b, e in enumerate(examples):
        for i, words in enumerate(reversed(e.memory)):
            story[b, i, : len(words)] = words
        query[b, : len(e.query)] = e.query
    return {"story": torch.from_numpy(story), "query": torch.from_numpy(query),
            "answer": torch.tensor([e.answer for e in examples]), "task": torch.tensor([e.task for e in examples])}


class BabiDataModule(SequenceDataModule):
    """bAbI QA tasks 1-20 (v1.2, English, 1k) for the question-answering models.

    Args:
        tasks: the tasks read together (default all 20: joint training), or
        task: one task alone (1..20).
        data_dir: where the tasks lie (else ``$ZOO_DATA_DIR``, ``../shared/data``, download).
        memory_size: statements kept before each question, the most recent.
        val_fraction: share of each task's training questions held out for validation.
        tokenizer: a tokenizer.json, checkpoint folder or pretrained name to reuse; ``None``
            builds the vocabulary of the tasks' training files.
        batch_size: training questions a batch, drawn at random across the tasks.
        eval_batch_size: questions a batch in evaluation.
        train_limit, val_limit, test_limit: only the first N questions of each task's split.
        seed: fixes the validation questions.
    """

    def __init__(
        self,
        tasks: list[int] | None = None,
        task: int | None = None,
        data_dir: str | None = None,
        memory_size: int = 50,
        val_fraction: float = 0.1,
        tokenizer: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 500,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if task is not None and tasks is not None:
            raise ValueError("give task (one task) or tasks (several), not both")
        chosen = [task] if task is not None else list(tasks) if tasks is not None else list(ALL_TASKS)
        bad = [t for t in chosen if t not in TASK_NAMES]
        if bad or not chosen:
            raise ValueError(f"bAbI tasks are numbered 1..20; got {bad or 'none'}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"tasks {chosen} name a task twice")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        if memory_size < 1:
            raise ValueError(f"memory_size must be at least 1, got {memory_size}")
        self.save_hyperparameters()
        self.hp = self.hparams
        self.tasks = sorted(chosen)
        self._questions: dict[str, list[BabiQuestion]] = {}
        self._tokenizer: TextTokenizer | None = None
        self.datasets: dict[str, list[Example]] = {}

    # -- raw questions ---------------------------------------------------------------
    def _read(self, task: int, split: str) -> list[BabiQuestion]:
        folder = find_babi(self.hp.data_dir)
        path = folder / "en" / task_file(task, split)
        return parse_babi(read_lines(path), task, self.hp.memory_size, source=str(path))

    def held_out(self, task: int, n: int) -> np.ndarray:
        """Indices of the validation questions among a task's ``n`` training questions, fixed by ``seed``."""
        count = max(1, round(n * self.hp.val_fraction))
        return np.sort(np.random.default_rng([self.hp.seed, task]).permutation(n)[:count])

    def questions(self, split: str) -> list[BabiQuestion]:
        """The questions of ``split`` (train / val / test): each task's in file order, the tasks in turn."""
        if split not in self._questions:
            out = []
            for task in self.tasks:
                items = self._read(task, "test" if split == "test" else "train")
                if split != "test":
                    val = set(self.held_out(task, len(items)).tolist())
                    items = [q for i, q in enumerate(items) if (i in val) == (split == "val")]
                limit = getattr(self.hp, f"{split}_limit")
                out += items[:limit] if limit else items
            self._questions[split] = out
        return self._questions[split]

    # -- vocabulary --------------------------------------------------------------------
    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            if self.hp.tokenizer:
                from zoo.hub import load_tokenizers

                self._tokenizer = load_tokenizers(self.hp.tokenizer)[1]
            else:  # every word of the training files (held-out questions included: the same stories)
                questions = [q for task in self.tasks for q in self._read(task, "train")]
                statements = sorted({s for q in questions for s in q.story})
                self._tokenizer = babi_tokenizer(statements + [q.question for q in questions],
                                                 [q.answer for q in questions])
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        joint = self.tasks == list(ALL_TASKS)
        return {"dataset": "bAbI QA tasks 1-20 v1.2, English, 1k", "lang": "en",
                "tasks": "1-20 (joint)" if joint else self.tasks, "memory_size": self.hp.memory_size,
                "val": f"{self.hp.val_fraction:.0%} of each task's training questions (seed {self.hp.seed})",
                "test_split": "test (1,000 questions a task)"}

    # -- datasets ----------------------------------------------------------------------
    def _examples(self, split: str) -> list[Example]:
        if split not in self.datasets:
            tok, questions = self.tokenizer, self.questions(split)
            sentences = sorted({s for q in questions for s in q.story})
            encoded, unknown = encode_words(tok, sentences + [q.question for q in questions])
            ids = dict(zip(sentences, map(tuple, encoded)))
            queries = encoded[len(sentences):]
            answers = [answer_id(tok, q.answer) for q in questions]
            unknown |= {q.answer.lower() for q, a in zip(questions, answers) if a == tok.unk_id}
            say_unknown(unknown, f"the {split} stories, questions and answers")
            self.datasets[split] = [Example(q.task, [ids[s] for s in q.story], query, answer)
                                    for q, query, answer in zip(questions, queries, answers)]
        return self.datasets[split]

    def _setup_split(self, split: str) -> None:
        self._examples(split)

    def _collate(self, examples: list[Example]) -> dict[str, Tensor]:
        return collate(examples, self.tokenizer.pad_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._examples("train"), batch_size=self.hp.batch_size, shuffle=True,
                          collate_fn=self._collate, num_workers=self.hp.num_workers)

    def question_batches(self, split: str, first: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Batches of ``split`` in order, of the first ``first`` questions of each task (None: all), in one process."""
        data, seen = [], Counter()
        for e in self._examples(split):
            seen[e.task] += 1
            if first is None or seen[e.task] <= first:
                data.append(e)
        size = self.hp.eval_batch_size
        return (self._collate(data[i : i + size]) for i in range(0, len(data), size))

    def _eval_loader(self, split: str) -> DataLoader:
        data = self._examples(split)
        return batch_loader(data, EvalBatchSampler(len(data), self.hp.eval_batch_size), self._collate,
                            self.hp.num_workers)
