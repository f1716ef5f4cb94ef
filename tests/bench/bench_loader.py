"""Loader benchmark: the streaming order against one uniform permutation of all windows, in one run.

Run with ``make bench`` (``pytest -q -s tests/bench``) or ``python tests/bench/bench_loader.py``.

A synthetic token corpus (Zipf-distributed ids of a 50,304-token vocabulary, documents of about
1,000 tokens, zstd Parquet shards) eight times larger than the configured cache is read at
``seq_len`` 1024 with a global batch of 64 windows, from local files and through the loopback S3
server (moto, tests/support/s3_server.py):

* **new**: the streaming order of training/order.py through :class:`training.data.BatchStream`
  (pinned read-ahead, one cache, ``THREADS`` decode threads), a whole epoch; also rank 0 of 4 with
  4 lanes, from local files;
* **old**: one uniform permutation of all windows, each window read through an LRU of the same
  size (the previous loader without its read-ahead, which only added evictions), the first
  ``OLD_WINDOWS`` windows of the epoch (its miss rate is the same all epoch).

Printed per case: tokens/s per decode core (window tokens over the CPU time of this process, every
thread included; the S3 server runs in its own process), read amplification (bytes fetched over
the compressed bytes of the tokens trained on, and row-group tokens decoded over tokens trained
on), GET requests per million tokens trained on, and wall-clock tokens/s. Targets: amplification
<= 1.2 and >= 2 M tokens/s per core from local files.

The geometry is scaled down 4x from the defaults so that the corpus fits this machine: row groups
of 256 documents (~0.26 M tokens; the pipeline's default is 1,024 documents / 1 M tokens) and 2 M
token chunks (default 8 M), so the chunk/row-group ratio, which sets the amplification, is the
default's; GETs per million tokens are about 4x those of default row groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS / "support"), str(REPO)]

from s3_server import aws_env, create_bucket, moto_server, upload_dir  # noqa: E402

from training import storage  # noqa: E402
from training.data import BatchStream, EpochSchedule, Shuffle, WindowSource  # noqa: E402
from training.manifest import load_manifest  # noqa: E402

VOCAB = 50304
SEQ_LEN = 1024
BATCH = 64
THREADS = 4
CACHE_MB = int(os.environ.get("GRISTMILL_BENCH_CACHE_MB", "24"))
CORPUS_TOKENS = CACHE_MB * 8 << 19  # decoded uint16: 8x the cache
ROW_GROUP_DOCS = 256
SHARD_TOKENS = 16 << 20
CHUNK_TOKENS = 2 << 20
BUFFER_CHUNKS = 4
OLD_WINDOWS = int(os.environ.get("GRISTMILL_BENCH_OLD_WINDOWS", "1000"))
MAX_AMPLIFICATION = 1.2
MIN_TOKENS_PER_CORE = 2e6


def build_corpus(root: Path, tokens: int = CORPUS_TOKENS, seed: int = 0) -> Path:
    """tokens/manifest.json over zstd shards of random documents (a train split only)."""
    manifest_path = root / "tokens" / "manifest.json"
    if manifest_path.is_file():
        return manifest_path
    rng = np.random.default_rng(seed)
    lengths = np.maximum(16, rng.lognormal(6.6, 0.8, tokens // 500)).astype(np.int64)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths + 1), tokens)]
    values = np.minimum(rng.zipf(1.2, int(lengths.sum())), VOCAB - 1).astype(np.uint16)
    (root / "tokens").mkdir(parents=True)
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.uint16())), ("n_tokens", pa.int32())])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    shard_of = np.cumsum(lengths + 1) // SHARD_TOKENS
    shards = []
    for k in np.unique(shard_of):
        docs = np.flatnonzero(shard_of == k)
        path = root / "tokens" / f"train-{int(k):05d}.parquet"
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for first in range(docs[0], docs[-1] + 1, ROW_GROUP_DOCS):
                rows = np.arange(first, min(first + ROW_GROUP_DOCS, docs[-1] + 1))
                starts = offsets[rows] - offsets[rows[0]]
                ids = pa.ListArray.from_arrays(
                    pa.array(np.append(starts, offsets[rows[-1] + 1] - offsets[rows[0]]).astype(np.int32)),
                    pa.array(values[offsets[rows[0]] : offsets[rows[-1] + 1]]),
                )
                columns = {"id": [f"doc-{r}" for r in rows], "input_ids": ids, "n_tokens": lengths[rows]}
                writer.write_table(pa.table(columns, schema=schema))
        data = path.read_bytes()
        shards.append({"path": path.name, "documents": len(docs), "tokens": int(lengths[docs].sum()),
                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    manifest = {
        "format": "gristmill.tokens",
        "format_version": 1,
        "dtype": "uint16",
        "tokenizer": {
            "path": "../tokenizer/tokenizer.json",
            "sha256": "0" * 64,
            "vocab_size": VOCAB,
            "eot_id": 0,
        },  # no tokenizer file: the reader does not open it
        "splits": {"train": {"documents": len(lengths), "tokens": int(lengths.sum()), "shards": shards}},
    }
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


@dataclass
class Figures:
    """What one reading pass cost."""

    case: str
    tokens: int  # window tokens trained on
    cpu_s: float
    wall_s: float
    decoded: int  # row-group stream tokens decoded
    fetched: int  # bytes fetched
    requests: int
    bytes_per_token: float  # compressed input_ids bytes per stream token of the split

    @property
    def per_core(self) -> float:
        return self.tokens / self.cpu_s

    @property
    def amplification(self) -> float:
        return self.fetched / (self.tokens * self.bytes_per_token)

    @property
    def decoded_ratio(self) -> float:
        return self.decoded / self.tokens

    @property
    def gets_per_m(self) -> float:
        return self.requests / (self.tokens / 1e6)

    def line(self) -> str:
        return (
            f"{self.case:<44} {self.per_core / 1e6:>9.2f} M {self.amplification:>8.3f} "
            f"{self.decoded_ratio:>8.3f} {self.gets_per_m:>8.2f} {self.tokens / self.wall_s / 1e6:>9.2f} M"
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bytes_per_token(source: WindowSource) -> float:
    total = 0
    for pos in range(len(source.index)):
        meta = source.index.shards[int(source.index.shard[pos])].metadata
        total += meta.row_group(int(source.index.row_group[pos])).column(1).total_compressed_size
    return total / source.index.n_tokens


def new_order(manifest: str, case: str, rank: int = 0, world: int = 1, lanes: int = 1) -> Figures:
    """A whole epoch of the streaming order as rank ``rank`` of ``world`` sees it."""
    source = WindowSource(load_manifest(manifest), "train", SEQ_LEN, CACHE_MB << 20, THREADS)
    shuffle = Shuffle.for_tokens(lanes, CHUNK_TOKENS, BUFFER_CHUNKS, SEQ_LEN, BATCH)
    schedule = EpochSchedule(len(source), BATCH, 0, shuffle)
    cpu, wall, windows = _cpu(), time.perf_counter(), 0
    for batch in BatchStream([source], schedule, rank, world, 0, schedule.steps_per_epoch, prefetch_steps=4):
        windows += len(batch.windows)
    stats = source.cache.stats
    figures = Figures(case, windows * (SEQ_LEN + 1), _cpu() - cpu, time.perf_counter() - wall,
                      stats.tokens, stats.bytes, stats.requests, _bytes_per_token(source))  # fmt: skip
    source.close()
    return figures


def old_order(manifest: str, case: str, windows: int = OLD_WINDOWS) -> Figures:
    """The first ``windows`` windows of one uniform permutation, each read through the LRU."""
    source = WindowSource(load_manifest(manifest), "train", SEQ_LEN, CACHE_MB << 20, THREADS)
    order = np.random.default_rng([0, 0]).permutation(len(source))[:windows]
    cpu, wall = _cpu(), time.perf_counter()
    for start in range(0, len(order), BATCH):
        np.stack([source.window(int(w))[0] for w in order[start : start + BATCH]]).astype(np.int64)
    stats = source.cache.stats
    figures = Figures(case, len(order) * (SEQ_LEN + 1), _cpu() - cpu, time.perf_counter() - wall,
                      stats.tokens, stats.bytes, stats.requests, _bytes_per_token(source))  # fmt: skip
    source.close()
    return figures


def run_benchmark(work: Path) -> list[Figures]:
    manifest = build_corpus(work / "corpus")
    corpus = sum(p.stat().st_size for p in manifest.parent.glob("*.parquet"))
    probe = WindowSource(load_manifest(str(manifest)), "train", SEQ_LEN)
    tokens = probe.index.n_tokens
    print(
        f"\ncorpus: {tokens / 1e6:.1f} M tokens ({tokens * 2 / 2**20:.0f} MB decoded, "
        f"{corpus / 2**20:.0f} MB zstd) in {len(probe.index)} row groups of {ROW_GROUP_DOCS} documents; "
        f"cache {CACHE_MB} MB; seq_len {SEQ_LEN}, batch {BATCH}; chunks of {CHUNK_TOKENS >> 20} M tokens, "
        f"buffers of {BUFFER_CHUNKS} chunks; {THREADS} decode threads; {os.cpu_count()} CPUs",
        flush=True,
    )
    probe.close()
    results = [
        new_order(str(manifest), "new, local files, one rank"),
        new_order(str(manifest), "new, local files, rank 0 of 4 (4 lanes)", 0, 4, 4),
        old_order(str(manifest), f"old, local files ({OLD_WINDOWS} windows)"),
    ]
    with moto_server() as endpoint:
        create_bucket(endpoint, "bench")
        upload_dir(endpoint, manifest.parent.parent, "bench", "corpus")
        saved = {k: os.environ.get(k) for k in aws_env(endpoint)}
        os.environ.update(aws_env(endpoint))
        storage._client = None
        try:
            uri = "s3://bench/corpus/tokens/manifest.json"
            results.append(new_order(uri, "new, S3 (loopback), one rank"))
            results.append(old_order(uri, f"old, S3 (loopback, {OLD_WINDOWS} windows)"))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
            storage._client = None
    header = ("case", "tok/s/core", "amp bytes", "decoded", "GET/Mtok", "wall tok/s")
    print(f"{header[0]:<44} {header[1]:>11} {header[2]:>8} {header[3]:>8} {header[4]:>8} {header[5]:>11}")
    for figures in results:
        print(figures.line(), flush=True)
    for where, new, old in (("local files", results[0], results[2]), ("S3", results[3], results[4])):
        print(
            f"old/new from {where}: read amplification {old.amplification / new.amplification:,.0f}x, "
            f"GETs per M tokens {old.gets_per_m / new.gets_per_m:,.0f}x; new/old tokens/s per core "
            f"{new.per_core / old.per_core:,.1f}x",
            flush=True,
        )
    return results


@pytest.mark.timeout(3600)
def test_streaming_loader_reads_each_row_group_about_once(tmp_path: Path) -> None:
    results = {f.case: f for f in run_benchmark(tmp_path)}
    for case, figures in results.items():
        if case.startswith("new"):
            assert figures.amplification <= MAX_AMPLIFICATION, figures
    assert results["new, local files, one rank"].per_core >= MIN_TOKENS_PER_CORE


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        run_benchmark(Path(tmp))
