"""The tokenizer stage: byte-level BPE trained on a seeded sample of the final corpus's train split,
and bytes per token measured on held-out kept text.

The sample is drawn from the documents `pipelines.corpus.split_of` puts in the train split only, so the
validation split (what the model is evaluated on) is never seen by the tokenizer and serves as held-out
text: bytes per token = UTF-8 bytes / tokens over (a seeded sample of at most `heldout_chars`
characters of) the validation documents. With no validation documents, the train documents left out of
the sample are used instead; with none of those either, bytes per token is not measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipelines.config import RunConfig, TokenizerTrainingConfig
from pipelines.corpus import FinalCorpus, split_of, unit_hash
from pipelines.exec.runner import in_child
from pipelines.run import RunDir
from pipelines.run.files import sha256_file, write_json
from pipelines.run.layout import RunLayout
from tokenizer import bytes_per_token, save, train_bpe

log = logging.getLogger("gristmill")


@dataclass
class Sample:
    """How the training sample and the held-out text are drawn from the final corpus."""

    sample_chars: int
    sample_documents: int  # 0: no cap
    heldout_chars: int
    validation_fraction: float
    seed: int
    # filled by plan()
    fraction: float = 1.0
    heldout_fraction: float = 1.0
    heldout_source: str = "validation split"
    corpus: dict[str, int] = field(default_factory=dict)

    def plan(self, run: RunLayout) -> None:
        """Count the corpus (one pass over ids and text lengths) and set the sampling fractions."""
        counts = {
            "train_documents": 0,
            "train_characters": 0,
            "validation_documents": 0,
            "validation_characters": 0,
        }
        for table in FinalCorpus(run).batches():
            lengths = pc.utf8_length(table.column("text")).to_pylist()
            for doc_id, n in zip(table.column("id").to_pylist(), lengths, strict=True):
                split = split_of(doc_id, self.validation_fraction)
                counts[f"{split}_documents"] += 1
                counts[f"{split}_characters"] += n or 0
        self.corpus = counts
        fractions = [1.0]
        if counts["train_characters"] > self.sample_chars:
            fractions.append(self.sample_chars / counts["train_characters"])
        if self.sample_documents and counts["train_documents"] > self.sample_documents:
            fractions.append(self.sample_documents / counts["train_documents"])
        self.fraction = min(fractions)
        if counts["validation_documents"]:
            self.heldout_source, pool = "validation split", counts["validation_characters"]
        else:  # no validation split: the train documents the sample leaves out
            self.heldout_source = "train documents outside the sample"
            pool = int(counts["train_characters"] * (1 - self.fraction))
        self.heldout_fraction = 1.0 if pool <= self.heldout_chars else self.heldout_chars / pool

    def in_sample(self, doc_id: str) -> bool:
        return split_of(doc_id, self.validation_fraction) == "train" and (
            self.fraction >= 1.0 or unit_hash(doc_id, f"{self.seed}:") < self.fraction
        )

    def in_heldout(self, doc_id: str) -> bool:
        if self.heldout_source == "validation split":
            if split_of(doc_id, self.validation_fraction) != "validation":
                return False
        elif split_of(doc_id, self.validation_fraction) != "train" or self.in_sample(doc_id):
            return False
        return (
            self.heldout_fraction >= 1.0 or unit_hash(doc_id, f"heldout:{self.seed}:") < self.heldout_fraction
        )


class _SampleTexts:
    """The sample's texts, streamed to the trainer; collects the held-out texts on the way."""

    def __init__(self, run: RunLayout, sample: Sample) -> None:
        self.run, self.sample = run, sample
        self.documents = self.characters = 0
        self.heldout: list[str] = []

    def __iter__(self) -> Any:
        for table in FinalCorpus(self.run).batches():
            for doc_id, text in zip(
                table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True
            ):
                if self.sample.in_sample(doc_id):
                    self.documents += 1
                    self.characters += len(text)
                    yield text
                elif self.sample.in_heldout(doc_id):
                    self.heldout.append(text)


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Train the tokenizer (in a child process, see `train_in_child`) and summarise it."""
    meta = train_in_child(str(run.root), config.tokenizer, config.tokenize.validation_fraction)
    heldout = meta["heldout"]
    log.info(
        "tokenizer: vocab %d trained on %d documents (%d characters); %s bytes per token on %d "
        "held-out documents (%s)",
        meta["vocab_size"],
        meta["trained_on_documents"],
        meta["trained_on_characters"],
        meta["bytes_per_token"],
        heldout["documents"],
        heldout["source"],
    )
    return {
        "vocab_size": meta["vocab_size"],
        "sha256": meta["sha256"],
        "documents": meta["trained_on_documents"],
        "characters": meta["trained_on_characters"],
        "bytes_per_token": meta["bytes_per_token"],
        "heldout_documents": heldout["documents"],
    }


def train(run_root: str, settings: TokenizerTrainingConfig, validation_fraction: float) -> dict[str, Any]:
    """Train, save tokenizer/ (tokenizer.json, transformers files, tokenizer.meta.json) and measure
    bytes per token on the held-out text. Returns tokenizer.meta.json's content."""
    run = RunLayout(Path(run_root))
    sample = Sample(
        settings.sample_chars, settings.sample_documents, settings.heldout_chars, validation_fraction,
        settings.seed,
    )  # fmt: skip
    vocab_size, min_frequency, special_tokens = (
        settings.vocab_size,
        settings.min_frequency,
        settings.special_tokens,
    )
    sample.plan(run)
    texts = _SampleTexts(run, sample)
    tok = train_bpe(texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens)
    if texts.documents == 0:
        raise ValueError("no documents left to train a tokenizer on: every document was dropped")
    path = save(tok, run.tokenizer, special_tokens)
    heldout: dict[str, Any] = {"source": sample.heldout_source, "documents": len(texts.heldout)}
    if texts.heldout:
        n_bytes, n_tokens = bytes_per_token(tok, texts.heldout)
        heldout.update(bytes=n_bytes, tokens=n_tokens, bytes_per_token=round(n_bytes / max(n_tokens, 1), 4))
    else:
        heldout["bytes_per_token"] = None
        log.warning("tokenizer: no held-out documents, bytes per token not measured")
    meta = {
        "sha256": sha256_file(path),
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": special_tokens,
        "trained_on_documents": texts.documents,
        "trained_on_characters": texts.characters,
        "seed": sample.seed,
        "sample": {
            "sample_chars": sample.sample_chars,
            "sample_documents": sample.sample_documents,
            "fraction": sample.fraction,
            "from": "train split (validation documents are never sampled)",
            "validation_fraction": sample.validation_fraction,
        },
        "corpus": sample.corpus,
        "heldout": heldout,
        "bytes_per_token": heldout["bytes_per_token"],
    }
    write_json(run.tokenizer_meta, meta)
    return meta


def train_in_child(*args: Any) -> dict[str, Any]:
    """`train` in a forked child process.

    `tokenizers` runs training on a Rayon thread pool; a process that has used it and then forks gets
    workers with tokenizers' parallelism switched off. Training in a child keeps the calling process
    (the flow runs every stage in one process) free of that pool, so the tokenize stage's forked
    workers can still encode on every core.
    """
    return in_child(train, *args)
