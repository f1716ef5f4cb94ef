"""Streaming access to one split's token stream, a row group at a time.

The split's stream is every document in manifest order (shard by shard, row by row), each followed
by ``eot_id`` (docs/shard-format.md). :class:`SplitIndex` locates every Parquet row group in that
stream from the shard footers alone: the token count of a row group is the ``input_ids`` leaf count
minus its null count (empty lists), or, when a writer left out statistics, the sum of the small
``n_tokens`` column. Totals are checked against the manifest. :class:`RowGroupCache` fetches a row
group's ``input_ids`` column chunk with one ranged read (local files and S3 alike) on a thread pool,
keeps row groups that upcoming steps need pinned in memory, and the others in an LRU bounded by
bytes; one cache per split serves every thread of a rank.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training import storage
from training.manifest import DataError, IntegrityError, Manifest

FOOTER_GUESS = 64 << 10


@dataclass(frozen=True)
class Segment:
    """A piece of a window that came from one row group: rows ``first_row..last_row`` of ``shard``."""

    shard: str
    row_group: int
    first_row: int
    last_row: int

    def to_json(self) -> list[Any]:
        return [self.shard, self.row_group, self.first_row, self.last_row]


@dataclass
class RowGroupData:
    """A decoded row group: its stream (documents + eot) and the end offset of each document in it."""

    tokens: np.ndarray
    doc_ends: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + self.doc_ends.nbytes


def _column(md: pq.FileMetaData, row_group: int, name: str) -> Any:
    rg = md.row_group(row_group)
    for j in range(rg.num_columns):
        if rg.column(j).path_in_schema.split(".")[0] == name:
            return rg.column(j)
    raise DataError(f"row group {row_group} has no column {name!r}")


def _chunk_range(col: Any) -> tuple[int, int]:
    """(offset, length) of a column chunk in the file."""
    start = col.data_page_offset
    if col.has_dictionary_page and col.dictionary_page_offset is not None:
        start = min(start, col.dictionary_page_offset)
    return int(start), int(col.total_compressed_size)


def read_footer(uri: str, file_size: int) -> pq.FileMetaData:
    """Parquet metadata from the end of the file (one or two ranged reads)."""
    tail_len = min(file_size, FOOTER_GUESS)
    tail = storage.read_range(uri, file_size - tail_len, tail_len)
    if tail[-4:] != b"PAR1":
        raise DataError(f"{uri} is not a Parquet file (no PAR1 footer)")
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len + 8 > tail_len:
        tail = storage.read_range(uri, file_size - footer_len - 8, footer_len + 8)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(footer_len + 8) :]))


class _RangedFile(io.RawIOBase):
    """A read-only file whose bytes come from already fetched ranges, else from ranged reads."""

    def __init__(self, uri: str, file_size: int, ranges: dict[int, bytes]) -> None:
        super().__init__()
        self.uri, self.file_size, self.ranges, self.pos = uri, file_size, ranges, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.file_size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.file_size - self.pos)
        if n <= 0:
            return 0
        for start, data in self.ranges.items():
            if start <= self.pos and self.pos + n <= start + len(data):
                buffer[:n] = data[self.pos - start : self.pos - start + n]
                break
        else:
            buffer[:n] = storage.read_range(self.uri, self.pos, n)
        self.pos += n
        return n


@dataclass
class ShardMeta:
    path: str  # as in the manifest (relative)
    uri: str
    size: int
    metadata: pq.FileMetaData


class SplitIndex:
    """Where every row group of a split sits in the split's token stream.

    Arrays over the split's row groups, in stream order: ``shard`` (index into ``shards``),
    ``row_group``, ``first_row`` (in its shard), ``rows`` and ``start`` (stream offset;
    ``start[-1]`` is the stream length, eot tokens included).
    """

    def __init__(self, manifest: Manifest, split: str, threads: int = 8) -> None:
        self.manifest, self.split = manifest, split
        self.dtype = np.dtype(manifest.dtype)
        entries = manifest.split(split)["shards"]
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(entries)))) as pool:
            metas = list(pool.map(self._open_shard, entries))
            counts = list(pool.map(self._row_group_lengths, metas, entries))
        self.shards = metas
        shard, row_group, first_row, rows, lengths = [], [], [], [], []
        for s, (meta, per_rg) in enumerate(zip(metas, counts, strict=True)):
            row = 0
            for r, length in enumerate(per_rg):
                shard.append(s)
                row_group.append(r)
                first_row.append(row)
                rows.append(meta.metadata.row_group(r).num_rows)
                lengths.append(length)
                row += rows[-1]
        self.shard = np.array(shard, dtype=np.int64)
        self.row_group = np.array(row_group, dtype=np.int64)
        self.first_row = np.array(first_row, dtype=np.int64)
        self.rows = np.array(rows, dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(np.array(lengths, dtype=np.int64))]).astype(np.int64)

    @property
    def n_tokens(self) -> int:
        """Length of the split's stream, eot tokens included."""
        return int(self.start[-1])

    def __len__(self) -> int:
        return len(self.shard)

    def _open_shard(self, entry: dict[str, Any]) -> ShardMeta:
        uri = self.manifest.shard_uri(entry)
        try:
            size = storage.size(uri)
        except storage.NotFound as exc:
            raise DataError(f"shard listed in the manifest is missing: {uri}") from exc
        if size != entry["bytes"]:
            raise IntegrityError(
                f"shard {uri} has {size} bytes, the manifest records {entry['bytes']}: "
                "the file is corrupt or was changed after the manifest was written"
            )
        meta = ShardMeta(entry["path"], uri, size, read_footer(uri, size))
        names = set(meta.metadata.schema.to_arrow_schema().names)
        if not {"input_ids", "n_tokens"} <= names:
            raise DataError(f"shard {uri} lacks input_ids/n_tokens columns (has {sorted(names)})")
        return meta

    def _row_group_lengths(self, meta: ShardMeta, entry: dict[str, Any]) -> list[int]:
        """Stream length (tokens + one eot per document) of each row group, checked against the manifest."""
        md = meta.metadata
        tokens: list[int | None] = []
        for r in range(md.num_row_groups):
            col = _column(md, r, "input_ids")
            stats = col.statistics
            has_nulls = stats is not None and stats.has_null_count
            tokens.append(int(col.num_values) - int(stats.null_count) if has_nulls else None)
        missing = [r for r, t in enumerate(tokens) if t is None]
        if missing:  # no statistics: sum the n_tokens column of those row groups
            ranges = {}
            for r in missing:
                start, length = _chunk_range(_column(md, r, "n_tokens"))
                ranges[start] = storage.read_range(meta.uri, start, length)
            pf = pq.ParquetFile(_RangedFile(meta.uri, meta.size, ranges), metadata=md)
            for r in missing:
                n_tokens = pf.read_row_group(r, columns=["n_tokens"]).column(0)
                tokens[r] = int(pc.sum(n_tokens).as_py() or 0)
        docs = md.num_rows
        total = sum(int(t or 0) for t in tokens)
        if total != entry["tokens"] or docs != entry["documents"]:
            raise DataError(
                f"shard {meta.uri}: {docs} documents / {total} tokens, manifest says "
                f"{entry['documents']} / {entry['tokens']}"
            )
        return [int(t or 0) + md.row_group(r).num_rows for r, t in enumerate(tokens)]

    def locate(self, start: int, stop: int) -> range:
        """Positions (into the index arrays) of the row groups that overlap stream[start:stop]."""
        first = int(np.searchsorted(self.start, start, side="right")) - 1
        last = int(np.searchsorted(self.start, stop - 1, side="right")) - 1
        return range(first, last + 1)


@dataclass
class ReadStats:
    """What a cache read: row groups decoded, storage requests, bytes fetched, tokens decoded."""

    row_groups: int = 0
    requests: int = 0
    bytes: int = 0
    tokens: int = 0


class RowGroupCache:
    """Decoded row groups of one split on this rank, shared by every thread that reads it.

    Row groups are fetched and decoded on a pool of ``threads``. A row group :meth:`pin` ned for a
    step that has not been built yet stays in memory until :meth:`unpin`; unpinned row groups are
    kept in least-recently-used order while the cache holds more than ``cache_bytes`` (pinned ones
    are never evicted, so read-ahead never throws away what it fetched). Sizes are known from the
    index before a row group is read.
    """

    def __init__(self, index: SplitIndex, cache_bytes: int = 512 << 20, threads: int = 4) -> None:
        self.index = index
        self.cache_bytes = cache_bytes
        self.threads = max(1, threads)
        self.eot = index.dtype.type(index.manifest.eot_id)
        self.vocab_size = index.manifest.vocab_size
        self.stats = ReadStats()
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, Future[RowGroupData]] = OrderedDict()  # LRU order
        self._pins: dict[int, int] = {}
        self._bytes = 0  # decoded bytes of every entry, in flight included
        self._pinned_bytes = 0
        self._pool: ThreadPoolExecutor | None = None

    def decoded_bytes(self, pos: int) -> int:
        """Memory a decoded row group takes: its stream tokens and one end offset per document."""
        tokens = int(self.index.start[pos + 1] - self.index.start[pos])
        return tokens * self.index.dtype.itemsize + int(self.index.rows[pos]) * 8

    @property
    def pinned_bytes(self) -> int:
        return self._pinned_bytes

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def _fetch(self, pos: int) -> RowGroupData:
        meta = self.index.shards[int(self.index.shard[pos])]
        r = int(self.index.row_group[pos])
        expected = int(self.index.start[pos + 1] - self.index.start[pos])
        start, length = _chunk_range(_column(meta.metadata, r, "input_ids"))
        source = _RangedFile(meta.uri, meta.size, {start: storage.read_range(meta.uri, start, length)})
        table = pq.ParquetFile(source, metadata=meta.metadata).read_row_group(r, columns=["input_ids"])
        column = table.column(0)
        if column.null_count:
            raise DataError(f"{meta.uri} row group {r}: input_ids has null rows")
        tokens, doc_ends = _stream(column, self.index.dtype, self.eot)
        if len(tokens) != expected:
            raise DataError(
                f"{meta.uri} row group {r}: {len(tokens)} stream tokens, index expects {expected}"
            )
        if len(tokens) and int(tokens.max()) >= self.vocab_size:
            raise DataError(
                f"{meta.uri} row group {r}: token id {int(tokens.max())} >= vocab {self.vocab_size}"
            )
        with self._lock:
            self.stats.row_groups += 1
            self.stats.requests += 1
            self.stats.bytes += length
            self.stats.tokens += len(tokens)
        return RowGroupData(tokens, doc_ends)

    def _entry(self, pos: int, background: bool) -> tuple[Future[RowGroupData], bool]:
        """(entry of ``pos``, whether it is new); the caller holds the lock. A new entry is fetched
        on the pool or, when ``background`` is False, left for the caller to fill."""
        future = self._entries.get(pos)
        if future is not None:
            self._entries.move_to_end(pos)
            return future, False
        if background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="rowgroups")
            future = self._pool.submit(self._fetch, pos)
        else:
            future = Future()
        self._entries[pos] = future
        self._bytes += self.decoded_bytes(pos)
        future.add_done_callback(lambda done, pos=pos: self._settled(pos, done))
        return future, True

    def _settled(self, pos: int, future: Future[RowGroupData]) -> None:
        """Forget a failed fetch (a later read retries it); evict beyond the budget."""
        with self._lock:
            if self._entries.get(pos) is future and (future.cancelled() or future.exception() is not None):
                self._drop(pos)
            self._evict()

    def _drop(self, pos: int) -> None:
        del self._entries[pos]
        self._bytes -= self.decoded_bytes(pos)

    def _evict(self) -> None:
        """Drop finished, unpinned row groups, least recently used first, while over the budget."""
        if self._bytes <= self.cache_bytes:
            return
        for pos in [p for p, f in self._entries.items() if p not in self._pins and f.done()]:
            if self._bytes <= self.cache_bytes:
                break
            self._drop(pos)

    def pin(self, positions: Any) -> None:
        """Keep these row groups until as many :meth:`unpin` calls; fetch the missing ones now."""
        with self._lock:
            for pos in map(int, positions):
                self._entry(pos, background=True)
                count = self._pins.get(pos, 0)
                if count == 0:
                    self._pinned_bytes += self.decoded_bytes(pos)
                self._pins[pos] = count + 1

    def unpin(self, positions: Any) -> None:
        with self._lock:
            for pos in map(int, positions):
                count = self._pins.pop(pos) - 1
                if count:
                    self._pins[pos] = count
                else:
                    self._pinned_bytes -= self.decoded_bytes(pos)
            self._evict()

    def get(self, pos: int) -> RowGroupData:
        """A decoded row group: cached, in flight, or read now in this thread."""
        with self._lock:
            future, new = self._entry(pos, background=False)
        if new:
            try:
                future.set_result(self._fetch(pos))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def read(self, start: int, stop: int) -> tuple[np.ndarray, list[Segment]]:
        """stream[start:stop] and the (shard, row group, rows) segments it came from."""
        pieces, segments = [], []
        for pos in self.index.locate(start, stop):
            rg_start = int(self.index.start[pos])
            data = self.get(pos)
            a, b = max(start, rg_start) - rg_start, min(stop, int(self.index.start[pos + 1])) - rg_start
            pieces.append(data.tokens[a:b])
            first = int(np.searchsorted(data.doc_ends, a, side="right"))
            last = int(np.searchsorted(data.doc_ends, b - 1, side="right"))
            row0 = int(self.index.first_row[pos])
            shard = self.index.shards[int(self.index.shard[pos])].path
            segments.append(Segment(shard, int(self.index.row_group[pos]), row0 + first, row0 + last))
        return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), segments

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _stream(column: pa.ChunkedArray, dtype: np.dtype, eot: Any) -> tuple[np.ndarray, np.ndarray]:
    """A row group's documents as one stream with ``eot`` after each, and each document's end."""
    pieces, ends, offset = [], [], 0
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy().astype(np.int64)
        values = chunk.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        doc_ends = offsets[1:] - offsets[0] + np.arange(1, len(offsets))
        tokens = np.empty(len(values) + len(doc_ends), dtype=dtype)
        keep = np.ones(len(tokens), dtype=bool)
        keep[doc_ends - 1] = False
        tokens[keep] = values
        tokens[doc_ends - 1] = eot
        pieces.append(tokens)
        ends.append(doc_ends + offset)
        offset += len(tokens)
    if len(pieces) == 1:
        return pieces[0], ends[0]
    if not pieces:
        return np.empty(0, dtype=dtype), np.empty(0, dtype=np.int64)
    return np.concatenate(pieces), np.concatenate(ends)
