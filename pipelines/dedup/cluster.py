"""Clustering of a run's signed documents (the second, single-process step of pipelines/dedup.py).

Exact duplicates are grouped by text hash, one hash range at a time; near-duplicate candidates by LSH band
key, one key range at a time, skipping exact duplicates but the first (pipelines/lsh.py). With `verify`, a
candidate pair is kept only when its estimated Jaccard similarity reaches the threshold. The connected
components of the kept pairs (union-find over candidate pairs only) are the clusters; `survivors` picks
one document per cluster and every other document of this run in it is removed.
-> dedup/removed.parquet (id, source_id, duplicate_of, duplicate_of_source_id, similarity),
dedup/clusters.parquet, dedup/summary.json;
with a cross-run index, this run's survivors are then appended to it (pipelines/dedup_index.py).

Memory: at most about `max_rows_in_memory` key rows at a time, signature shards in an LRU of `cache_mb`,
and about 50 bytes per document that is part of a candidate pair.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dedup import lsh
from pipelines.dedup.index import DedupIndex, IndexChunk
from pipelines.run.files import read_table, write_json, write_parquet
from pipelines.run.layout import RunLayout

if TYPE_CHECKING:
    from pipelines.config import DedupConfig

log = logging.getLogger("gristmill")

U64 = np.uint64
# doc keys: shard << 32 | row for this run's documents, INDEX_BIT | chunk << 32 | row for the index's
INDEX_BIT = U64(1 << 63)
INDEX_FILE = 1 << 31  # file ids (doc key >> 32) of index chunks
ROW_MASK = U64(0xFFFFFFFF)
PAIR_CHUNK = 1 << 18
REMOVED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source_id", pa.string()),  # the record's own id (ingest.id_key), null when it had none
        ("duplicate_of", pa.string()),
        ("duplicate_of_source_id", pa.string()),
        ("similarity", pa.float32()),
    ]
)
CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster", pa.int64()),
        ("survivor", pa.string()),
        ("survivor_source_id", pa.string()),
        ("survivor_from_index", pa.bool_()),
        ("size", pa.int64()),
        ("removed", pa.int64()),
        ("exact", pa.int64()),
        ("min_similarity", pa.float32()),
        ("max_similarity", pa.float32()),
    ]
)
SIZE_BINS = ((2, 2), (3, 3), (4, 5), (6, 10), (11, 100), (101, None))


class DocStore:
    """Columns of signature rows by doc key: this run's signature shards and the index's docs chunks."""

    def __init__(self, paths: dict[int, Path], run_ids: dict[int, str], cache_bytes: int) -> None:
        self.paths = paths  # doc key >> 32 -> parquet file
        self.run_ids = run_ids  # for index files: the run that kept them
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def of(cls, signature_files: list[Path], chunks: list[IndexChunk], cache_bytes: int) -> DocStore:
        """The store of this run's signature shards (file id = shard) and the index's chunks."""
        paths = {int(p.stem): p for p in signature_files}
        run_ids = {}
        for c, chunk in enumerate(chunks):
            paths[INDEX_FILE | c], run_ids[INDEX_FILE | c] = chunk.docs, chunk.run_id
        return cls(paths, run_ids, cache_bytes)

    def _groups(self, keys: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(file id, positions in keys, rows in that file) per file."""
        files = (keys >> U64(32)).astype(np.int64)
        order = np.argsort(files, kind="stable")
        bounds = np.flatnonzero(np.diff(files[order], prepend=-1, append=-1))
        for a, b in itertools.pairwise(bounds):
            positions = order[a:b]
            yield int(files[positions[0]]), positions, (keys[positions] & ROW_MASK).astype(np.int64)

    def _minhash_file(self, file_id: int) -> np.ndarray:
        if file_id in self._cache:
            self._cache.move_to_end(file_id)
            return self._cache[file_id]
        column = read_table(self.paths[file_id], columns=["minhash"]).column("minhash").combine_chunks()
        values = column.flatten().to_numpy().reshape(len(column), -1)
        self._cache[file_id] = values
        while sum(v.nbytes for v in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return values

    def minhash(self, keys: np.ndarray) -> np.ndarray:
        """Signatures of `keys`, (len(keys), num_perm)."""
        out: np.ndarray | None = None
        for file_id, positions, rows in self._groups(keys):
            values = self._minhash_file(file_id)
            if out is None:
                out = np.empty((len(keys), values.shape[1]), values.dtype)
            out[positions] = values[rows]
        return out if out is not None else np.zeros((0, 0), np.uint32)

    def column(self, keys: np.ndarray, name: str) -> list[Any]:
        """Values of one column for `keys`, as Python objects (None from a file without the column)."""
        out: list[Any] = [None] * len(keys)
        for file_id, positions, rows in self._groups(keys):
            if name not in pq.read_schema(self.paths[file_id]).names:
                continue
            values = read_table(self.paths[file_id], columns=[name]).column(name).take(rows).to_pylist()
            for position, value in zip(positions.tolist(), values, strict=True):
                out[position] = value
        return out

    def numeric(self, keys: np.ndarray, name: str, dtype: Any) -> np.ndarray:
        """A numeric column for `keys` (NaN for floats where missing)."""
        out = np.zeros(len(keys), dtype)
        for file_id, positions, rows in self._groups(keys):
            column = read_table(self.paths[file_id], columns=[name]).column(name).take(rows)
            if pa.types.is_floating(column.type):
                column = column.fill_null(np.nan)
            out[positions] = column.to_numpy()
        return out

    def names(self, keys: np.ndarray) -> list[str]:
        """Document ids; ids from the index are prefixed with the id of the run that kept them."""
        ids = self.column(keys, "id")
        files = (keys >> U64(32)).astype(np.int64).tolist()
        return [f"{self.run_ids[f]}/{i}" if f in self.run_ids else i for f, i in zip(files, ids, strict=True)]


def similarities(store: DocStore, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of each pair (u[i], v[i]), as float32."""
    out = np.zeros(len(u), np.float32)
    for lo in range(0, len(u), PAIR_CHUNK):
        a = store.minhash(u[lo : lo + PAIR_CHUNK])
        b = store.minhash(v[lo : lo + PAIR_CHUNK])
        out[lo : lo + PAIR_CHUNK] = (a == b).mean(axis=1)
    return out


def _exact_edges(files: list[tuple[Path, int]], max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(first, other) doc keys of documents with equal normalized text, one text-hash range at a time."""
    total = sum(pq.read_metadata(p).num_rows for p, _ in files)
    for lo, hi in lsh.key_ranges(total, max_rows):
        hashes, docs = [], []
        for path, base in files:
            table = read_table(path, columns=["text_hash", "n_words"])
            h = table.column("text_hash").to_numpy().view(np.int64)
            chosen = (table.column("n_words").to_numpy() > 0) & (h >= lo)
            if hi < (1 << 63):
                chosen &= h < hi
            hashes.append(h[chosen])
            docs.append(np.flatnonzero(chosen).astype(U64) + U64(base))
        if hashes:
            yield lsh.bucket_edges(np.concatenate(hashes), np.concatenate(docs))


def cluster(run: RunLayout, config: DedupConfig) -> dict[str, Any]:
    """Find exact and near-duplicates of the signed documents; write removed, clusters and summary."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    run_id = run.root.name
    signature_files = sorted(run.signatures.glob("[0-9]*.parquet"))
    index = DedupIndex(config.index, config.signature_params()) if config.index else None
    chunks = index.chunks(exclude_run=run_id) if index else []
    store = DocStore.of(signature_files, chunks, config.cache_mb << 20)
    u, v = candidate_pairs(store, [run.bands / p.name for p in signature_files], chunks, config)
    clock = _lap(timings, "candidates", clock)
    similarity = similarities(store, u, v)
    candidates = len(u)
    if config.verify:
        passed = similarity >= config.threshold
        u, v = u[passed], v[passed]
    clock = _lap(timings, "verify", clock)
    nodes, labels = lsh.components(u, v)
    survivor = survivors(store, nodes, labels)
    removed_mask = ((nodes & INDEX_BIT) == 0) & (nodes != survivor)
    removed, removed_survivor = nodes[removed_mask], survivor[removed_mask]
    removed_label = labels[removed_mask]
    removed_similarity = similarities(store, removed, removed_survivor)
    exact = store.numeric(removed, "text_hash", U64) == store.numeric(removed_survivor, "text_hash", U64)
    clock = _lap(timings, "clusters", clock)
    removed_table = pa.table(
        {
            "id": store.column(removed, "id"),
            "source_id": store.column(removed, "source_id"),
            "duplicate_of": store.names(removed_survivor),
            "duplicate_of_source_id": store.column(removed_survivor, "source_id"),
            "similarity": pa.array(removed_similarity, pa.float32()),
        },
        schema=REMOVED_SCHEMA,
    )
    write_parquet(removed_table, run.removed, compression="snappy")
    clusters = _cluster_table(store, nodes, labels, survivor, removed_label, removed_similarity, exact)
    write_parquet(clusters, run.clusters, compression="snappy")
    summary = _summary(signature_files, config, clusters, removed_survivor, exact)
    summary.update(
        candidate_pairs=candidates,
        pairs_below_threshold=candidates - len(u) if config.verify else None,
        examples=_examples(store, removed, removed_survivor, removed_similarity, exact, config.examples),
    )
    clock = _lap(timings, "write", clock)
    if index is not None:
        summary["index"] = {
            "path": config.index,
            "earlier_runs": sorted({c.run_id for c in chunks}),
            "earlier_documents": sum(pq.read_metadata(c.docs).num_rows for c in chunks),
            "added": _append_survivors(index, run_id, signature_files, removed, config),
        }
        clock = _lap(timings, "index", clock)
    summary["seconds"] = {k: round(t, 3) for k, t in timings.items()}
    write_json(run.dedup_summary, summary)
    log.info(
        "dedup: %d documents, %d removed (%d exact, %d near, %d matching earlier runs), %d clusters",
        summary["documents"],
        summary["removed"],
        summary["removed_exact"],
        summary["removed_near"],
        summary["removed_matching_earlier_runs"],
        summary["clusters"],
    )
    return summary


def candidate_pairs(
    store: DocStore, band_files: list[Path], chunks: list[IndexChunk], config: DedupConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (u < v doc keys) with at least one document of this run: equal normalized texts,
    and equal band keys of documents that are not an exact duplicate of another (but the first)."""
    signed = [(path, file_id << 32) for file_id, path in store.paths.items()]
    exact_u, exact_v = _collect(_exact_edges(signed, config.max_rows_in_memory))
    keyed = [(path, int(path.stem) << 32) for path in band_files]
    keyed += [(chunk.bands, (INDEX_FILE | c) << 32) for c, chunk in enumerate(chunks)]
    near_u, near_v = _collect(lsh.iter_buckets(keyed, config.max_rows_in_memory, np.unique(exact_v)))
    u, v = lsh.unique_edges(np.concatenate([exact_u, near_u]), np.concatenate([exact_v, near_v]))
    this_run = ((u & INDEX_BIT) == 0) | ((v & INDEX_BIT) == 0)
    return u[this_run], v[this_run]


def survivors(store: DocStore, nodes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The survivor of each node's cluster: a document of an earlier run (the oldest) if there is one,
    else the highest quality score (missing scores last), then the earliest in input order."""
    if not len(nodes):
        return nodes
    is_new = (nodes & INDEX_BIT) == 0
    quality = np.full(len(nodes), np.nan, np.float32)
    quality[is_new] = store.numeric(nodes[is_new], "quality", np.float32)
    rank = np.lexsort((nodes, np.where(np.isnan(quality), np.inf, -quality), is_new))
    ranked = rank[np.argsort(labels[rank], kind="stable")]  # grouped by cluster, best first in each
    first = np.ones(len(ranked), bool)
    first[1:] = labels[ranked][1:] != labels[ranked][:-1]
    best = np.zeros(labels.max() + 1, U64)
    best[labels[ranked][first]] = nodes[ranked][first]
    return best[labels]


def _summary(
    signature_files: list[Path],
    config: DedupConfig,
    clusters: pa.Table,
    removed_survivor: np.ndarray,
    exact: np.ndarray,
) -> dict[str, Any]:
    documents = empty = 0
    for path in signature_files:
        n_words = read_table(path, columns=["n_words"]).column("n_words").to_numpy()
        documents += len(n_words)
        empty += int((n_words == 0).sum())
    largest = clusters.sort_by([("size", "descending"), ("cluster", "ascending")]).slice(0, 5)
    return {
        "params": {**config.signature_params(), "threshold": config.threshold, "verify": config.verify},
        "documents": documents,
        "empty": empty,
        "removed": len(exact),
        "removed_exact": int(exact.sum()),
        "removed_near": int((~exact).sum()),
        "removed_matching_earlier_runs": int(((removed_survivor & INDEX_BIT) != 0).sum()),
        "survivors": documents - len(exact),
        "clusters": clusters.num_rows,
        "cluster_sizes": _size_histogram(clusters.column("size").to_numpy()),
        "largest_clusters": largest.select(["survivor", "size", "removed", "min_similarity"]).to_pylist(),
        "index": None,
    }


def _collect(edges: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(edges)
    if not pairs:
        return np.zeros(0, U64), np.zeros(0, U64)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = now - since
    return now


def _cluster_table(
    store: DocStore,
    nodes: np.ndarray,
    labels: np.ndarray,
    survivor: np.ndarray,
    removed_label: np.ndarray,
    removed_similarity: np.ndarray,
    exact: np.ndarray,
) -> pa.Table:
    """One row per cluster with a removed document, numbered in the input order of their survivors."""
    present = np.unique(removed_label)
    if not len(present):
        return CLUSTER_SCHEMA.empty_table()
    n_labels = labels.max() + 1
    survivor_of = np.zeros(n_labels, U64)
    survivor_of[labels] = survivor
    present = present[np.argsort(survivor_of[present], kind="stable")]  # earlier runs' survivors last
    lowest = np.full(n_labels, np.inf, np.float32)
    highest = np.zeros(n_labels, np.float32)
    np.minimum.at(lowest, removed_label, removed_similarity)
    np.maximum.at(highest, removed_label, removed_similarity)
    return pa.table(
        {
            "cluster": np.arange(len(present)),
            "survivor": store.names(survivor_of[present]),
            "survivor_source_id": store.column(survivor_of[present], "source_id"),
            "survivor_from_index": (survivor_of[present] & INDEX_BIT) != 0,
            "size": np.bincount(labels, minlength=n_labels)[present],
            "removed": np.bincount(removed_label, minlength=n_labels)[present],
            "exact": np.bincount(removed_label[exact], minlength=n_labels)[present],
            "min_similarity": lowest[present],
            "max_similarity": highest[present],
        },
        schema=CLUSTER_SCHEMA,
    )


def _size_histogram(sizes: np.ndarray) -> dict[str, int]:
    out = {}
    for lo, hi in SIZE_BINS:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi else f">{lo - 1}")
        out[label] = int(((sizes >= lo) & (sizes <= (hi or math.inf))).sum())
    return out


def _examples(
    store: DocStore,
    removed: np.ndarray,
    survivor: np.ndarray,
    similarity: np.ndarray,
    exact: np.ndarray,
    count: int,
) -> list[dict[str, Any]]:
    """Example pairs: near-duplicates closest to the threshold first, then earlier runs, then exact."""
    if not count or not len(removed):
        return []
    from_index = (survivor & INDEX_BIT) != 0
    near = np.flatnonzero(~exact & ~from_index)
    near = near[np.lexsort((removed[near], similarity[near]))]
    chosen = [*near[: max(count - count // 4, 1)].tolist()]
    for group in (np.flatnonzero(from_index), np.flatnonzero(exact & ~from_index)):
        chosen += group[: max(1, count // 8)].tolist()
    chosen = list(dict.fromkeys(chosen))[:count]
    picks = np.array(chosen, np.int64)
    ids, of = store.column(removed[picks], "id"), store.names(survivor[picks])
    own, of_own = store.column(removed[picks], "source_id"), store.column(survivor[picks], "source_id")
    texts, of_texts = store.column(removed[picks], "excerpt"), store.column(survivor[picks], "excerpt")
    return [
        {
            "id": ids[i],
            "source_id": own[i],
            "duplicate_of": of[i],
            "duplicate_of_source_id": of_own[i],
            "similarity": round(float(similarity[p]), 4),
            "kind": "earlier run" if from_index[p] else ("exact" if exact[p] else "near"),
            "text": texts[i],
            "duplicate_of_text": of_texts[i],
        }
        for i, p in enumerate(picks.tolist())
    ]


def _append_survivors(
    index: DedupIndex, run_id: str, signature_files: list[Path], removed: np.ndarray, config: DedupConfig
) -> int:
    """Add this run's survivors (documents with words that were not removed) to the cross-run index."""
    bands, rows = config.lsh()
    with index.appending(run_id) as part:
        for path in signature_files:
            names = ["id", "source_id", "text_hash", "n_words", "minhash", "excerpt"]
            table = read_table(path, columns=[n for n in names if n in pq.read_schema(path).names])
            shard_removed = removed[(removed >> U64(32)) == U64(int(path.stem))] & ROW_MASK
            gone = np.zeros(table.num_rows, bool)
            gone[shard_removed.astype(np.int64)] = True
            kept = table.filter(pa.array(~gone & (table.column("n_words").to_numpy() > 0)))
            column = kept.column("minhash").combine_chunks()
            values = column.flatten().to_numpy().reshape(len(column), -1) if len(column) else np.zeros((0, 0))
            part.add(kept, lsh.band_keys(values, bands, rows) if len(column) else np.zeros((0, bands)))
    return part.documents
