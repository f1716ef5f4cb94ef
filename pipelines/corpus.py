"""The final corpus of a run, and what later stages read of earlier ones: the one definition of
"kept by the policy and not removed by dedup", where a shard's text is, the train/validation split.

Text comes from `text_path`: the signals stage's cleaned text (clean/NNNNN.parquet, C4's line cleaning)
once it exists, else the ingested text (documents/NNNNN.parquet). Both hold `id` and `text` in the same
row order as documents/ and signals/.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.run.files import parquet_file, read_table
from pipelines.run.layout import RunLayout

BATCH_ROWS = 1_000


def text_path(run: RunLayout, shard: str) -> Path:
    """The Parquet file (`id`, `text`) later stages read shard `shard`'s text from: the cleaned text
    when the signals stage has written it, else the ingested documents."""
    cleaned = run.clean / shard
    return cleaned if cleaned.exists() else run.documents / shard


def kept_mask(run: RunLayout, shard: str) -> np.ndarray:
    """The policy's keep column of a shard, or all True when the run has no signals."""
    path = run.signals / shard
    if path.exists():
        return read_table(path, columns=["keep"]).column("keep").to_numpy(zero_copy_only=False)
    return np.ones(pq.read_metadata(run.documents / shard).num_rows, bool)


def removed_ids(run: RunLayout) -> pa.Array:
    """Ids that dedup removed (empty when the run has not been deduplicated)."""
    if not run.removed.exists():
        return pa.array([], pa.string())
    return read_table(run.removed, columns=["id"]).column("id").combine_chunks()


def is_removed(ids: pa.Array | pa.ChunkedArray, removed: pa.Array) -> np.ndarray:
    """Which of `ids` dedup removed."""
    if not len(removed):
        return np.zeros(len(ids), bool)
    return pc.is_in(ids, value_set=removed).to_numpy(zero_copy_only=False)


class FinalCorpus:
    """The documents of a run's final corpus, shard by shard (masks cached per shard)."""

    def __init__(self, run: RunLayout) -> None:
        self.run = run
        self.removed = removed_ids(run)
        self._keep: dict[str, np.ndarray] = {}

    def mask(self, shard: str, first_row: int, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Which of the rows `first_row`.. (ids `ids`) of `shard` are in the final corpus."""
        if shard not in self._keep:
            self._keep = {shard: kept_mask(self.run, shard)}
        keep = self._keep[shard][first_row : first_row + len(ids)].copy()
        return keep & ~is_removed(ids, self.removed)

    def batches(self) -> Iterator[pa.Table]:
        """Tables of (id, text), in input order, at most BATCH_ROWS rows each."""
        for shard in self.run.shards():
            row = 0
            for batch in parquet_file(text_path(self.run, shard)).iter_batches(
                BATCH_ROWS, columns=["id", "text"]
            ):
                mask = self.mask(shard, row, batch.column("id"))
                row += batch.num_rows
                if mask.any():
                    yield pa.Table.from_batches([batch]).filter(pa.array(mask))


class Selection(Protocol):
    """Which documents of a run a set of token shards holds, in which split, and which text of them
    (the seam of `pipelines.stages.token_shards`: the final corpus, or a corpus variant of an ablation).

    Picklable: the tokenize step carries it to worker processes. `key` identifies the selection in the
    shard plan, so shards written for another selection are never resumed."""

    key: dict[str, Any]

    def splits(self, shard: str, first_row: int, ids: pa.Array | pa.ChunkedArray) -> list[str | None]:
        """The split of each of the rows `first_row`.. (ids `ids`) of `shard`; None: not selected."""
        ...

    def text_file(self, shard: str, split: str) -> Path:
        """The Parquet file (`id`, `text`, rows as in documents/) the split's text of `shard` is read from."""
        ...


class FinalCorpusSplits:
    """The final corpus in its train/validation split (`split_of`), text from `text_path`: what
    `gristmill tokenize` writes. The corpus masks are read in the process that uses them."""

    def __init__(self, run: RunLayout, validation_fraction: float) -> None:
        self.run = RunLayout(run.root)  # its paths only: a RunDir of an S3 run does not pickle
        self.validation_fraction = validation_fraction
        self.key = {"corpus": "final", "validation_fraction": validation_fraction}
        self._corpus: FinalCorpus | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_corpus": None}

    def splits(self, shard: str, first_row: int, ids: pa.Array | pa.ChunkedArray) -> list[str | None]:
        if self._corpus is None:
            self._corpus = FinalCorpus(self.run)
        keep = self._corpus.mask(shard, first_row, ids)
        return [
            split_of(doc_id, self.validation_fraction) if k else None
            for doc_id, k in zip(ids.to_pylist(), keep, strict=True)
        ]

    def text_file(self, shard: str, split: str) -> Path:
        return text_path(self.run, shard)


def unit_hash(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) derived from `key` (stable across runs and machines)."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, validation_fraction: float) -> str:
    """The split of a document, decided by a hash of its id alone."""
    return "validation" if unit_hash(doc_id, "split:") < validation_fraction else "train"


def signal_files(run: RunLayout) -> list[Path]:
    return sorted(run.signals.glob("[0-9]*.parquet"))


def read_signals(run: RunLayout, columns: list[str] | None = None) -> pa.Table:
    """All signals of a run, in shard order."""
    files = signal_files(run)
    if not files:
        raise FileNotFoundError(f"{run.signals} has no signal shards; run the signals stage first")
    return pa.concat_tables(read_table(f, columns=columns) for f in files)


def quarantine_counts(run: RunLayout) -> Counter[str]:
    """Quarantined records of a run by reason."""
    counts: Counter[str] = Counter()
    for path in sorted(run.quarantine.glob("*.jsonl")):
        with path.open() as f:
            for line in f:
                counts[json.loads(line)["reason"]] += 1
    return counts
