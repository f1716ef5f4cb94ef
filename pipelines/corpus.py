"""The final corpus of a run: documents the policy kept and near-dedup did not remove.

Text comes from `text_path`: the signals stage's cleaned text (clean/{shard}.parquet, C4's line
cleaning) once it exists, else the ingested text (documents/{shard}.parquet). Both hold `id` and `text`
in the same row order as documents/ and signals/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.ingest import document_files
from pipelines.rundir import RunDir

BATCH_ROWS = 1_000


def clean_dir(run: RunDir) -> Path:
    """Where the signals stage writes the cleaned text of every document."""
    return run.root / "clean"


def text_path(run: RunDir, shard: str) -> Path:
    """The Parquet file (`id`, `text`) that later stages read shard `shard`'s text from: the cleaned
    text when the signals stage has written it, else the ingested documents."""
    cleaned = clean_dir(run) / shard
    return cleaned if cleaned.exists() else run.documents / shard


def iter_batches(run: RunDir) -> Iterator[pa.Table]:
    """Tables of (id, text) of the final corpus, in input order, at most BATCH_ROWS rows each."""
    from pipelines.dedup import kept_mask, removed_ids  # (dedup reads text through text_path)

    removed = removed_ids(run)
    for documents in document_files(run):
        path = text_path(run, documents.name)
        keep = kept_mask(run, path.name)
        if removed:
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
            keep = keep & pa.array([i not in removed for i in ids]).to_numpy(zero_copy_only=False)
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["id", "text"]):
            mask = keep[offset : offset + batch.num_rows]
            offset += batch.num_rows
            if mask.any():
                yield pa.Table.from_batches([batch]).filter(pa.array(mask))


def iter_texts(run: RunDir) -> Iterator[tuple[str, str]]:
    """(id, text) of every document of the final corpus."""
    for table in iter_batches(run):
        yield from zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)


def unit_hash(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) derived from `key` (stable across runs and machines)."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64

