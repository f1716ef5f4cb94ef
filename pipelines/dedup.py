"""MinHash near-dedup of the documents the policy kept (datasketch signatures and LSH).

1. Per shard (parallel): normalize text, take word n-gram shingles, compute a datasketch MinHash
   (affine32 scheme) and a hash of the normalized text -> dedup/signatures/{i}.parquet.
2. Clustering (one pass, input order): a document whose normalized text equals an earlier survivor's,
   or whose LSH candidates include a survivor with estimated Jaccard >= threshold, is removed as a
   duplicate of the most similar such survivor (ties: the earliest). The earliest document of a
   cluster therefore survives, whatever the number of workers.
   -> dedup/removed.parquet (id, duplicate_of, similarity).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, Field

from pipelines.ingest import document_files
from pipelines.rundir import RunDir

log = logging.getLogger("gristmill")

PUNCT_RE = re.compile(r"[^\w\s]+")
SIGNATURE_SCHEMA = pa.schema(
    [("id", pa.string()), ("text_hash", pa.binary(16)), ("minhash", pa.list_(pa.uint32()))]
)
REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("duplicate_of", pa.string()), ("similarity", pa.float32())])


class DedupConfig(BaseModel):
    """MinHash near-dedup settings."""

    threshold: float = Field(
        0.8, gt=0, lt=1, description="estimated Jaccard similarity at which two documents are near-duplicates"
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length)")
    shingle_size: int = Field(5, ge=1, le=32, description="words per shingle")
    seed: int = Field(1, description="MinHash permutation seed")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace."""
    return " ".join(PUNCT_RE.sub(" ", text.lower()).split())


def shingles(normalized: str, size: int) -> set[bytes]:
    """Word n-grams of normalized text (the whole text if it has fewer than `size` words)."""
    words = normalized.split()
    if len(words) <= size:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def signature(text: str, config: DedupConfig) -> tuple[bytes, np.ndarray]:
    """(16-byte hash of the normalized text, MinHash values as uint32) of one document."""
    norm = normalize(text)
    minhash = MinHash(num_perm=config.num_perm, seed=config.seed, scheme="affine32")
    minhash.update_batch(list(shingles(norm, config.shingle_size)))
    return hashlib.blake2b(norm.encode(), digest_size=16).digest(), minhash.hashvalues.astype(np.uint32)


class SignatureShard:
    """MinHash signatures of the kept documents of one shard (a picklable executor task)."""

    def __init__(self, run_root: str, config: DedupConfig) -> None:
        self.run_root = run_root
        self.config = config

    def output(self, index: int) -> Path:
        run = RunDir(self.run_root)
        return run.dedup / "signatures" / document_files(run)[index].name

    def __call__(self, index: int) -> None:
        run = RunDir(self.run_root)
        source = document_files(run)[index]
        keep = kept_mask(run, source.name)
        docs = pq.read_table(source, columns=["id", "text"]).filter(pa.array(keep))
        start = time.perf_counter()
        hashes, minhashes = [], []
        for text in docs.column("text").to_pylist():
            text_hash, values = signature(text, self.config)
            hashes.append(text_hash)
            minhashes.append(values)
        table = pa.table(
            {
                "id": docs.column("id"),
                "text_hash": pa.array(hashes, pa.binary(16)),
                "minhash": pa.array(minhashes, pa.list_(pa.uint32())),
            },
            schema=SIGNATURE_SCHEMA,
        )
        out = run.dedup / "signatures" / source.name
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(out)
        log.info(
            "dedup signatures %s: %d documents, %.0f docs/s",
            source.name,
            table.num_rows,
            table.num_rows / max(time.perf_counter() - start, 1e-9),
        )


def kept_mask(run: RunDir, shard: str) -> np.ndarray:
    """The policy's keep column for a shard, or all True when the run has no signals."""
    path = run.signals / shard
    if path.exists():
        return pq.read_table(path, columns=["keep"]).column("keep").to_numpy(zero_copy_only=False)
    return np.ones(pq.read_metadata(run.documents / shard).num_rows, bool)


def cluster(run: RunDir, config: DedupConfig) -> pa.Table:
    """Decide which documents are duplicates and write dedup/removed.parquet."""
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    by_text_hash: dict[bytes, str] = {}
    signatures: dict[str, MinHash] = {}
    order: dict[str, int] = {}
    removed_ids, duplicate_of, similarity = [], [], []
    files = sorted((run.dedup / "signatures").glob("[0-9]*.parquet"))
    for path in files:
        table = pq.read_table(path)
        for doc_id, text_hash, values in zip(
            table.column("id").to_pylist(),
            table.column("text_hash").to_pylist(),
            table.column("minhash").to_pylist(),
            strict=True,
        ):
            if text_hash in by_text_hash:
                removed_ids.append(doc_id)
                duplicate_of.append(by_text_hash[text_hash])
                similarity.append(1.0)
                continue
            minhash = MinHash(
                num_perm=config.num_perm,
                seed=config.seed,
                scheme="affine32",
                hashvalues=np.asarray(values, np.uint32),
            )
            best = _best_match(lsh.query(minhash), minhash, signatures, order, config.threshold)
            if best is not None:
                removed_ids.append(doc_id)
                duplicate_of.append(best[0])
                similarity.append(best[1])
                continue
            by_text_hash[text_hash] = doc_id
            signatures[doc_id] = minhash
            order[doc_id] = len(order)
            lsh.insert(doc_id, minhash)
    removed = pa.table(
        {"id": removed_ids, "duplicate_of": duplicate_of, "similarity": similarity}, schema=REMOVED_SCHEMA
    )
    out = run.dedup / "removed.parquet"
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(removed, tmp)
    tmp.replace(out)
    log.info(
        "dedup: %d documents checked, %d survivors, %d removed as duplicates",
        len(order) + removed.num_rows,
        len(order),
        removed.num_rows,
    )
    return removed


def _best_match(
    candidates: list[str],
    minhash: MinHash,
    signatures: dict[str, MinHash],
    order: dict[str, int],
    threshold: float,
) -> tuple[str, float] | None:
    """The most similar surviving candidate at or above the threshold (ties: the earliest)."""
    scored = [(minhash.jaccard(signatures[c]), -order[c], c) for c in candidates]
    scored = [s for s in scored if s[0] >= threshold]
    if not scored:
        return None
    sim, _, best = max(scored)
    return best, float(sim)


def removed_ids(run: RunDir) -> set[str]:
    """Ids that near-dedup removed (empty when the run has not been deduplicated)."""
    path: Path = run.dedup / "removed.parquet"
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())
