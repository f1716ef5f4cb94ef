"""The dedup stage: MinHash near-dedup of the documents the policy kept, within the run and against the
cross-run index.

1. Signatures, per shard in parallel (`SignatureStep`): datasketch affine32 MinHash of word n-gram
   shingles of the normalized text (pipelines.dedup.minhash), a hash of the normalized text, and the
   LSH band keys of the shard's documents (an exact duplicate within the shard gets none).
   -> dedup/signatures/NNNNN.parquet (id, source_id, row, text_hash, n_words, quality, excerpt, minhash)
      dedup/bands/NNNNN.parquet (key, doc), sorted by key
2. Clustering, one process, bounded memory (pipelines.dedup.cluster): exact duplicates, LSH candidates,
   optional verification, connected components, one survivor per cluster.
   -> dedup/removed.parquet (id, source_id, duplicate_of, duplicate_of_source_id, similarity),
      dedup/clusters.parquet (survivor, survivor_source_id, ...), dedup/summary.json
3. With `dedup.index`, the run's survivors are appended to the cross-run index (pipelines.dedup.index).

The survivor of a cluster: a document of an earlier run (cross-run index) if there is one (the oldest),
else the highest `quality_score` of signals/ (missing scores rank last), then the earliest in input order
(shard, then row). Documents without a single word (empty after normalization) are never removed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import DedupConfig, RunConfig
from pipelines.corpus import kept_mask, text_path
from pipelines.dedup import lsh, minhash
from pipelines.dedup.cluster import cluster
from pipelines.exec.runner import run_shards
from pipelines.exec.step import ShardStep
from pipelines.run import RunDir
from pipelines.run.files import atomic_path, parquet_file, parquet_writer, read_table

U64 = np.uint64
EXCERPT_CHARS = 240
READ_BATCH_ROWS = 2_000
SUMMARY_KEYS = ("documents", "removed", "removed_exact", "removed_near", "removed_matching_earlier_runs",
                "clusters")  # fmt: skip


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Signatures per shard in parallel, then clustering in one process."""
    minhash.warm()  # lookup tables built once, inherited by the forked workers
    start = time.perf_counter()
    step = SignatureStep(str(run.root), config.dedup)
    run_shards("dedup signatures", run.synced(step), len(run.shards()), config.executor.workers)
    signature_seconds = time.perf_counter() - start
    result = cluster(run, config.dedup)
    seconds = {"signatures": round(signature_seconds, 3), **result.get("seconds", {})}
    return {k: result[k] for k in SUMMARY_KEYS} | {"seconds": seconds}


def source_ids(run: RunDir | Any, shard: str, n_rows: int) -> pa.Array:
    """The records' own ids of a shard's documents (signals/ carries them from documents/), null where
    the record had none."""
    path = run.signals / shard
    if not path.exists() or "source_id" not in pq.read_schema(path).names:
        return pa.nulls(n_rows, pa.string())
    return read_table(path, columns=["source_id"]).column("source_id").combine_chunks()


def quality_scores(run: RunDir | Any, shard: str, n_rows: int) -> np.ndarray:
    """quality_score of a shard's documents as float32, NaN where missing."""
    path = run.signals / shard
    if not path.exists() or "quality_score" not in pq.read_schema(path).names:
        return np.full(n_rows, np.nan, np.float32)
    quality = read_table(path, columns=["quality_score"]).column("quality_score")
    return quality.cast(pa.float32()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("source_id", pa.string()),
            ("row", pa.int64()),
            ("text_hash", pa.uint64()),
            ("n_words", pa.int32()),
            ("quality", pa.float32()),
            ("excerpt", pa.string()),
            ("minhash", pa.list_(pa.uint32(), num_perm)),
        ]
    )


class SignatureStep(ShardStep):
    """Signatures and band keys of the kept documents of one shard."""

    label = "dedup signatures"

    def __init__(self, run_root: str, config: DedupConfig) -> None:
        super().__init__(run_root)
        self.config = config

    def output(self, index: int) -> Path:
        return self.run.signatures / self.shard(index)

    def reads(self, index: int) -> list[str]:
        return self.text_reads(index)

    def process(self, index: int) -> dict[str, int]:
        cfg, name = self.config, self.shard(index)
        bands, rows = cfg.lsh()
        keep = kept_mask(self.run, name)
        quality = quality_scores(self.run, name, len(keep))
        own_ids = source_ids(self.run, name, len(keep))
        offset, n_docs, n_bytes = 0, 0, 0
        seen: set[int] = set()
        band_rows, band_key_parts = [], []
        schema = signature_schema(cfg.num_perm)
        reader = parquet_file(text_path(self.run, name))  # the cleaned text (signals stage)
        with atomic_path(self.output(index)) as out, parquet_writer(out, schema) as writer:
            for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, columns=["id", "text"]):
                table = pa.Table.from_batches([batch])
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
                            "source_id": own_ids.slice(offset, table.num_rows).take(pa.array(positions)),
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
                batch_bytes = int(pc.sum(pc.binary_length(texts)).as_py() or 0)
                n_bytes += batch_bytes
                self.advance(table.num_rows, batch_bytes)
            doc_rows = np.repeat(np.concatenate(band_rows or [np.zeros(0, np.int64)]).astype(U64), bands)
            keys = np.concatenate(band_key_parts or [np.zeros((0, bands), np.int64)]).reshape(-1)
            lsh.write_keys(self.run.bands / name, keys, doc_rows)
        return {"documents": n_docs, "bytes": n_bytes}
