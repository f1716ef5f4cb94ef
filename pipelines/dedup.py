"""MinHash near-dedup of the documents the policy kept: exact duplicates, near-duplicates, earlier runs.

1. Signatures, per input shard in parallel (`SignatureShard`, this module): datasketch affine32 MinHash
   of word n-gram shingles of the normalized text (pipelines/minhash.py), a hash of the normalized text,
   and the LSH band keys of the shard's documents (an exact duplicate within the shard gets none).
   -> dedup/signatures/{i}.parquet (id, row, text_hash, n_words, quality, excerpt, minhash)
      dedup/bands/{i}.parquet (key, doc), sorted by key
2. Clustering, one process, bounded memory (`cluster`, pipelines/dedup_cluster.py): exact duplicates,
   LSH candidates, optional verification, connected components, one survivor per cluster.
   -> dedup/removed.parquet (id, duplicate_of, similarity), dedup/clusters.parquet, dedup/summary.json
3. With `index`, the run's survivors are appended to the cross-run index (pipelines/dedup_index.py).

The survivor of a cluster: a document of an earlier run (cross-run index) if there is one (the oldest),
else the highest `quality_score` of signals/ (missing scores rank last), then the earliest in input order
(shard, then row). Documents without a single word (empty after normalization) are never removed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines import lsh, minhash
from pipelines.corpus import text_path
from pipelines.dedup_cluster import cluster
from pipelines.ingest import document_files
from pipelines.rundir import RunDir

__all__ = ["DedupConfig", "SignatureShard", "cluster", "kept_mask", "removed_ids", "report_section"]

log = logging.getLogger("gristmill")

U64 = np.uint64
EXCERPT_CHARS = 240
READ_BATCH_ROWS = 2_000


class DedupConfig(BaseModel):
    """MinHash near-dedup settings."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity of word shingles at which documents are duplicates"
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length)")
    shingle_size: int = Field(5, ge=1, le=minhash.MAX_SHINGLE, description="words per shingle")
    seed: int = Field(1, ge=0, description="MinHash permutation seed (datasketch's)")
    bands: int | None = Field(
        None, ge=2, description="LSH bands; null derives bands and rows from threshold and num_perm"
    )
    rows: int | None = Field(None, ge=1, description="signature values per LSH band; null: derived")
    verify: bool = Field(
        True, description="keep a candidate pair only if its estimated Jaccard reaches the threshold"
    )
    index: str | None = Field(
        None,
        description="cross-run index folder: also remove near-duplicates of earlier runs' survivors, "
        "then add this run's survivors to it",
    )
    max_rows_in_memory: int = Field(
        4_000_000, ge=1_000, description="band-key rows the clustering holds in memory at once"
    )
    cache_mb: int = Field(256, ge=16, description="MiB of signature shards cached while verifying pairs")
    examples: int = Field(8, ge=0, description="example duplicate pairs kept for the report")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both dedup.bands and dedup.rows, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh(self) -> tuple[int, int]:
        """(bands, rows): configured, or datasketch's optimum for threshold and num_perm."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return lsh.lsh_params(self.threshold, self.num_perm)

    def signature_params(self) -> dict[str, Any]:
        """What makes signatures and band keys comparable (recorded in the cross-run index)."""
        bands, rows = self.lsh()
        return {
            "scheme": "affine32",
            "num_perm": self.num_perm,
            "seed": self.seed,
            "shingle_size": self.shingle_size,
            "bands": bands,
            "rows": rows,
            "normalization": 1,
        }


# --- step 1: signatures per shard ---------------------------------------------------------------------


def iter_shard_texts(run: RunDir, index: int) -> Iterator[pa.Table]:
    """Tables of (id, text) of shard `index`, in order: the one place dedup reads document text."""
    reader = pq.ParquetFile(text_path(run, document_files(run)[index].name))  # cleaned text (signals stage)
    for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, columns=["id", "text"]):
        yield pa.Table.from_batches([batch])


def policy_columns(run: RunDir, shard: str, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, quality_score as float32 with NaN when missing) of a shard's documents."""
    path = run.signals / shard
    if not path.exists():
        return np.ones(n_rows, bool), np.full(n_rows, np.nan, np.float32)
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in ("keep", "quality_score") if c in names])
    keep = table.column("keep").to_numpy(zero_copy_only=False).astype(bool)
    if "quality_score" not in names:
        return keep, np.full(len(keep), np.nan, np.float32)
    quality = table.column("quality_score").cast(pa.float32()).fill_null(np.nan)
    return keep, quality.to_numpy(zero_copy_only=False)


def kept_mask(run: RunDir, shard: str) -> np.ndarray:
    """The policy's keep column for a shard, or all True when the run has no signals."""
    path = run.signals / shard
    if path.exists():
        return pq.read_table(path, columns=["keep"]).column("keep").to_numpy(zero_copy_only=False)
    return np.ones(pq.read_metadata(run.documents / shard).num_rows, bool)


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("row", pa.int64()),
            ("text_hash", pa.uint64()),
            ("n_words", pa.int32()),
            ("quality", pa.float32()),
            ("excerpt", pa.string()),
            ("minhash", pa.list_(pa.uint32(), num_perm)),
        ]
    )


class SignatureShard:
    """Signatures and band keys of the kept documents of one shard (a picklable executor task)."""

    def __init__(self, run_root: str, config: DedupConfig) -> None:
        self.run_root = run_root
        self.config = config

    def output(self, index: int) -> Path:
        run = RunDir(self.run_root)
        return run.dedup / "signatures" / document_files(run)[index].name

    def __call__(self, index: int) -> None:
        run = RunDir(self.run_root)
        cfg = self.config
        bands, rows = cfg.lsh()
        name = document_files(run)[index].name
        n_rows = pq.read_metadata(run.documents / name).num_rows
        keep, quality = policy_columns(run, name, n_rows)
        out = self.output(index)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        start, offset, n_docs, n_bytes = time.perf_counter(), 0, 0, 0
        seen: set[int] = set()
        band_rows, band_key_parts = [], []
        schema = signature_schema(cfg.num_perm)
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in iter_shard_texts(run, index):
                batch_keep = keep[offset : offset + table.num_rows]
                positions = np.flatnonzero(batch_keep)
                docs = table if batch_keep.all() else table.take(positions)
                texts = docs.column("text")
                sig = minhash.signatures(texts, cfg.num_perm, cfg.seed, cfg.shingle_size)
                first = np.zeros(docs.num_rows, bool)  # the first in the shard with this normalized text
                for i, text_hash in enumerate(sig.text_hash.tolist()):
                    if sig.n_words[i] > 0 and text_hash not in seen:
                        seen.add(text_hash)
                        first[i] = True
                chosen = np.flatnonzero(first)
                band_rows.append(chosen + n_docs)
                band_key_parts.append(lsh.band_keys(sig.minhash[chosen], bands, rows))
                writer.write_table(
                    pa.table(
                        {
                            "id": docs.column("id"),
                            "row": pa.array(positions + offset, pa.int64()),
                            "text_hash": pa.array(sig.text_hash, pa.uint64()),
                            "n_words": pa.array(sig.n_words, pa.int32()),
                            "quality": pa.array(quality[offset : offset + table.num_rows][positions]),
                            "excerpt": pc.utf8_slice_codeunits(texts, 0, EXCERPT_CHARS),
                            "minhash": pa.FixedSizeListArray.from_arrays(
                                pa.array(sig.minhash.reshape(-1)), cfg.num_perm
                            ),
                        },
                        schema=schema,
                    )
                )
                offset += table.num_rows
                n_docs += docs.num_rows
                n_bytes += int(pc.sum(pc.binary_length(texts)).as_py() or 0)
        doc_rows = np.repeat(np.concatenate(band_rows or [np.zeros(0, np.int64)]).astype(U64), bands)
        keys = np.concatenate(band_key_parts or [np.zeros((0, bands), np.int64)]).reshape(-1)
        lsh.write_keys(run.dedup / "bands" / name, keys, doc_rows)
        tmp.replace(out)
        seconds = max(time.perf_counter() - start, 1e-9)
        log.info(
            "dedup signatures %s: %d documents, %.0f docs/s, %.1f MB/s",
            name,
            n_docs,
            n_docs / seconds,
            n_bytes / seconds / 1e6,
        )


# --- what other stages and the report read ------------------------------------------------------------


def removed_ids(run: RunDir) -> set[str]:
    """Ids that dedup removed (empty when the run has not been deduplicated)."""
    path: Path = run.dedup / "removed.parquet"
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def report_section(run: RunDir) -> dict[str, Any] | None:
    """Report-ready dedup figures: counts, cluster sizes, largest clusters, example pairs (or None)."""
    path = run.dedup / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return {
        key: summary[key]
        for key in (
            "documents",
            "removed",
            "removed_exact",
            "removed_near",
            "removed_matching_earlier_runs",
            "survivors",
            "clusters",
            "cluster_sizes",
            "largest_clusters",
            "candidate_pairs",
            "pairs_below_threshold",
            "examples",
            "params",
            "index",
        )
    }


def summary_counts(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of a dedup summary that run.json records."""
    keys = ("documents", "removed", "removed_exact", "removed_near", "removed_matching_earlier_runs")
    keys += ("clusters",)
    return {k: summary[k] for k in keys} | {"seconds": summary.get("seconds", {})}
