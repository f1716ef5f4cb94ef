"""A fastText quality classifier: train it on positive and negative documents, score documents with it.

Training reads documents through `pipelines.readers` (any input format), cuts each into examples of at
most EXAMPLE_CHARS at paragraph or line breaks, normalizes them (lowercase, words and punctuation split
by spaces), holds out a seeded share for evaluation, trains `fasttext.train_supervised` and quantizes the
model so it stays small. `score` gives the probability of the positive label ("hq").

The bundled default, resources/quality.ftz, is rebuilt with `make quality-model`
(scripts/build_quality_model.py): book and encyclopedic text against spam and web boilerplate.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"
EXAMPLE_CHARS = 1_000  # longest training example
MIN_EXAMPLE_CHARS = 20  # shorter pieces are dropped
SCORE_CHARS = 1_000  # a document is scored on its first characters (as long as a training example)
BUCKETS = 200_000  # hash buckets of word bigrams (fastText's default, 2M, makes training and quantizing slow)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_BREAK_RE = re.compile(r"\n\s*\n|\n")


def default_model_path() -> str:
    return str(resources.files("pipelines") / "resources" / "quality.ftz")


def normalize(text: str) -> str:
    """One line of lowercase words and punctuation marks separated by spaces (fastText's input)."""
    return " ".join(_TOKEN_RE.findall(text.lower()))


def examples(text: str, max_chars: int = EXAMPLE_CHARS) -> Iterator[str]:
    """Cut a document into pieces of at most `max_chars`, at paragraph or line breaks where possible."""
    piece = ""
    for part in _BREAK_RE.split(text):
        part = part.strip()
        while len(part) > max_chars:  # a long paragraph: cut at the last space before the limit
            cut = part.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if piece:
                yield piece
                piece = ""
            yield part[:cut]
            part = part[cut:].strip()
        if piece and len(piece) + 1 + len(part) > max_chars:
            yield piece
            piece = ""
        piece = f"{piece}\n{part}" if piece else part
    if piece:
        yield piece


def read_examples(uris: list[str]) -> list[str]:
    """Normalized examples of every document under `uris` (files or folders in any input format)."""
    from pipelines.io.inputs import list_inputs
    from pipelines.readers import Document, read_file

    out = []
    for path, source in list_inputs(uris):
        for item in read_file(path, source):
            if isinstance(item, Document):
                out.extend(
                    normalize(piece)
                    for piece in examples(item.text)
                    if len(piece.strip()) >= MIN_EXAMPLE_CHARS
                )
    return [e for e in out if e]


@dataclass
class Evaluation:
    """Precision and recall of both labels on the held-out examples (threshold 0.5)."""

    positives: int
    negatives: int
    precision: float
    recall: float
    negative_precision: float
    negative_recall: float

    def lines(self) -> list[str]:
        return [
            f"held-out examples: {self.positives} positive, {self.negatives} negative",
            f"positive (hq): precision {self.precision:.3f} recall {self.recall:.3f}",
            f"negative (lq): precision {self.negative_precision:.3f} recall {self.negative_recall:.3f}",
        ]


def train(
    positive: list[str],
    negative: list[str],
    output: str | Path,
    holdout: float = 0.2,
    seed: int = 0,
    dim: int = 16,
    epoch: int = 10,
    word_ngrams: int = 2,
    cutoff: int = 40_000,
) -> Evaluation:
    """Train on the documents under `positive` and `negative`, write the quantized model to `output` and
    return its precision/recall on a held-out share of the examples."""
    import fasttext

    rng = random.Random(seed)
    pos, neg = read_examples(positive), read_examples(negative)
    if not pos or not neg:
        raise ValueError(f"need positive and negative examples; got {len(pos)} and {len(neg)}")
    rng.shuffle(pos)
    rng.shuffle(neg)
    n_pos, n_neg = max(1, int(len(pos) * holdout)), max(1, int(len(neg) * holdout))
    test = [(POSITIVE, e) for e in pos[:n_pos]] + [(NEGATIVE, e) for e in neg[:n_neg]]
    train_rows = [(POSITIVE, e) for e in pos[n_pos:]] + [(NEGATIVE, e) for e in neg[n_neg:]]
    rng.shuffle(train_rows)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.txt")
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(f"{label} {text}\n" for label, text in train_rows)
        model = fasttext.train_supervised(
            input=data,
            dim=dim,
            epoch=epoch,
            wordNgrams=word_ngrams,
            bucket=BUCKETS,
            minCount=2,
            lr=0.5,
            thread=1,
            seed=seed,
        )
        # keep the `cutoff` most important embedding rows (at most two per word of a small vocabulary)
        rows = min(cutoff, 2 * len(model.words))
        model.quantize(input=data, qnorm=True, retrain=True, cutoff=rows, thread=1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(f".{output.name}.tmp")
    model.save_model(str(tmp_out))
    tmp_out.replace(output)
    return evaluate(model, test)


def evaluate(model: Any, rows: Iterable[tuple[str, str]]) -> Evaluation:
    """Precision and recall of a model on (label, normalized text) rows."""
    tp = fp = tn = fn = 0
    for label, text in rows:
        predicted_positive = _positive_probability(model, text) >= 0.5
        if label == POSITIVE:
            tp += predicted_positive
            fn += not predicted_positive
        else:
            fp += predicted_positive
            tn += not predicted_positive
    return Evaluation(
        positives=tp + fn,
        negatives=tn + fp,
        precision=tp / max(tp + fp, 1),
        recall=tp / max(tp + fn, 1),
        negative_precision=tn / max(tn + fn, 1),
        negative_recall=tn / max(tn + fp, 1),
    )


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> Any:
    """Load a quality model once per process (the bundled default when `path` is None)."""
    from pipelines.quality.langid import load_model as load_fasttext

    path = path or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"quality model {path} not found: run `make quality-model`")
    return load_fasttext(path)


def _positive_probability(model: Any, normalized: str) -> float:
    labels, probs = model.predict(normalized, k=2)
    for label, prob in zip(labels, probs, strict=True):
        if label == POSITIVE:
            return float(min(prob, 1.0))
    return 0.0


def score(text: str, model_path: str | None = None) -> float:
    """Probability that `text` is high-quality, judged on its first SCORE_CHARS characters."""
    from pipelines.quality.langid import valid_utf8

    return _positive_probability(load_model(model_path), valid_utf8(normalize(text[:SCORE_CHARS])))
