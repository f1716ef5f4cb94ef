"""LSH banding and candidate grouping with bounded memory.

Band keys: the `rows` signature values of band j hash to one 64-bit key (band index mixed in), so equal
keys mean "same band, same values". Each shard writes its (key, doc) rows sorted by key, in row groups.
Grouping reads one key range at a time from every file (row groups outside the range are skipped by their
statistics), so memory holds at most about `max_rows` rows whatever the corpus size. Inside a range, rows
with equal keys form a bucket; every document of a bucket gets a candidate edge to the bucket's smallest
document key (a star, linear in the bucket size even for huge buckets).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.dedup.minhash import fmix64
from pipelines.run.files import parquet_file, write_parquet

U64 = np.uint64
KEY_SCHEMA = pa.schema([("key", pa.int64()), ("doc", pa.uint64())])
ROW_GROUP_ROWS = 1 << 16
BAND_MULTIPLIERS_SEED = 20_240_917


@functools.cache
def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimizing weighted false positive and negative probabilities: datasketch's choice."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    return lsh.b, lsh.r


@functools.cache
def _band_multipliers(rows: int) -> np.ndarray:
    values = np.random.default_rng(BAND_MULTIPLIERS_SEED).integers(0, 1 << 63, rows + 1, dtype=U64)
    return values * U64(2) + U64(1)


def band_keys(minhash: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) int64 keys; equal keys: equal values in the same band (up to 64-bit collisions)."""
    multipliers = _band_multipliers(rows)
    keys = np.empty((len(minhash), bands), U64)
    for band in range(bands):
        values = minhash[:, band * rows : (band + 1) * rows].astype(U64)
        total = np.full(len(minhash), ((band + 1) * int(multipliers[rows])) & 0xFFFFFFFFFFFFFFFF, U64)
        for r in range(rows):
            total += values[:, r] * multipliers[r]
        keys[:, band] = fmix64(total)
    return keys.view(np.int64)


def write_keys(path: Path, keys: np.ndarray, docs: np.ndarray) -> None:
    """Write (key, doc) rows sorted by (key, doc), atomically, in row groups of ROW_GROUP_ROWS."""
    order = np.lexsort((docs, keys))
    table = pa.table({"key": keys[order], "doc": docs[order]}, schema=KEY_SCHEMA)
    write_parquet(table, path, row_group_size=ROW_GROUP_ROWS)


def key_ranges(total_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """Equal slices [lo, hi) of the int64 key space, enough that each holds about max_rows rows."""
    parts = max(1, -(-total_rows // max(max_rows, 1)))
    bounds = [-(1 << 63) + (i << 64) // parts for i in range(parts)] + [1 << 63]
    return list(itertools.pairwise(bounds))


def read_key_range(files: list[tuple[Path, int]], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """All (key, doc + base) rows with lo <= key < hi of sorted key files given as (path, base)."""
    keys, docs = [], []
    for path, base in files:
        reader = parquet_file(path)
        groups = [g for g in range(reader.num_row_groups) if _overlaps(reader.metadata.row_group(g), lo, hi)]
        if not groups:
            continue
        table = reader.read_row_groups(groups)
        k = table.column("key").to_numpy()
        a, b = np.searchsorted(k, lo), np.searchsorted(k, hi) if hi < (1 << 63) else len(k)
        keys.append(k[a:b])
        docs.append(table.column("doc").to_numpy()[a:b] + U64(base))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, U64)
    return np.concatenate(keys), np.concatenate(docs)


def _overlaps(group: pq.RowGroupMetaData, lo: int, hi: int) -> bool:
    if group.num_rows == 0:
        return False
    stats = group.column(0).statistics
    if stats is None or not stats.has_min_max:
        return True
    return stats.max >= lo and stats.min < hi


def bucket_edges(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges (center, member): each member of a bucket to the bucket's smallest doc key."""
    order = np.lexsort((docs, keys))
    keys, docs = keys[order], docs[order]
    new = np.ones(len(keys), bool)
    new[1:] = keys[1:] != keys[:-1]
    first = np.flatnonzero(new)
    center = docs[first][np.cumsum(new) - 1]
    member = ~new & (docs != center)
    return center[member], docs[member]


def iter_buckets(
    files: list[tuple[Path, int]], max_rows: int, exclude: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate edges of every key range of (path, doc base) files, skipping docs in sorted `exclude`."""
    total = sum(pq.read_metadata(p).num_rows for p, _ in files)
    for lo, hi in key_ranges(total, max_rows):
        keys, docs = read_key_range(files, lo, hi)
        if exclude is not None and len(exclude) and len(docs):
            keep = ~is_in(docs, exclude)
            keys, docs = keys[keep], docs[keep]
        yield bucket_edges(keys, docs)


def is_in(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values in sorted_set, elementwise."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def unique_edges(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges as (smaller, larger) doc keys, deduplicated and sorted."""
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    keep = np.ones(len(lo), bool)
    keep[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[keep], hi[keep]


def components(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph of edges (u, v): (sorted node keys, component label per node)."""
    nodes = np.unique(np.concatenate([u, v]))
    if not len(nodes):
        return nodes, np.zeros(0, np.int64)
    ui, vi = np.searchsorted(nodes, u), np.searchsorted(nodes, v)
    graph = coo_matrix((np.ones(len(ui), np.int8), (ui, vi)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    return nodes, labels.astype(np.int64)
