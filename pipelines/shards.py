"""Token shards and manifest.json, per docs/shard-format.md (the contract training reads)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from pipelines.corpus import iter_batches, unit_hash
from pipelines.progress import Progress
from pipelines.rundir import RunDir, write_json
from tokenizer import EOT, file_sha256, load

log = logging.getLogger("gristmill")

FORMAT = "gristmill.tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")


class TokenizeConfig(BaseModel):
    """Token shard settings."""

    validation_fraction: float = Field(
        0.02, ge=0, lt=1, description="share of documents (by id hash) held out for validation"
    )
    shard_max_tokens: int = Field(50_000_000, ge=1, description="start a new shard after this many tokens")
    row_group_rows: int = Field(
        1_024, ge=1, description="documents per Parquet row group (unit of a ranged read)"
    )


def split_of(doc_id: str, validation_fraction: float) -> str:
    """The split of a document, decided by a hash of its id alone."""
    return "validation" if unit_hash(doc_id, "split:") < validation_fraction else "train"


@dataclass
class _SplitWriter:
    """Writes one split's shards, rolling to a new file after shard_max_tokens."""

    folder: Path
    split: str
    schema: pa.Schema
    config: TokenizeConfig
    shards: list[dict[str, Any]] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    _docs: int = 0
    _tokens: int = 0

    def add(self, table: pa.Table) -> None:
        if self._writer is None:
            path = self._path(len(self.shards))
            self._writer = pq.ParquetWriter(
                path.with_name(f".{path.name}.tmp"), self.schema, compression="zstd"
            )
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._docs += table.num_rows
        self._tokens += int(pc.sum(table.column("n_tokens")).as_py() or 0)
        if self._pending_rows >= self.config.row_group_rows:
            self._flush()
        if self._tokens >= self.config.shard_max_tokens:
            self.close()

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(
                pa.concat_tables(self._pending), row_group_size=self.config.row_group_rows
            )
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        path = self._path(len(self.shards))
        path.with_name(f".{path.name}.tmp").replace(path)
        self.shards.append(
            {
                "path": path.name,
                "documents": self._docs,
                "tokens": self._tokens,
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
        self._writer, self._docs, self._tokens = None, 0, 0

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.split}-{index:05d}.parquet"

    def summary(self) -> dict[str, Any]:
        return {
            "documents": sum(s["documents"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }


def write_token_shards(run: RunDir, config: TokenizeConfig, lineage: dict[str, Any]) -> dict[str, Any]:
    """Tokenize the final corpus of a run into tokens/ and write tokens/manifest.json last."""
    tokenizer_path = run.tokenizer / "tokenizer.json"
    tokenizer = load(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    dtype = pa.uint16() if vocab_size <= 65_536 else pa.uint32()
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(dtype)), ("n_tokens", pa.int32())])
    for stale in run.tokens.glob("*.parquet"):
        stale.unlink()
    (run.tokens / "manifest.json").unlink(missing_ok=True)
    writers = {s: _SplitWriter(run.tokens, s, schema, config) for s in SPLITS}
    progress = Progress("tokenize", unit="tokens")
    n_docs = 0
    for batch in iter_batches(run):
        ids = batch.column("id").to_pylist()
        encodings = tokenizer.encode_batch(batch.column("text").to_pylist(), add_special_tokens=False)
        token_lists = [e.ids for e in encodings]
        splits = [split_of(i, config.validation_fraction) for i in ids]
        for split in SPLITS:
            rows = [j for j, s in enumerate(splits) if s == split]
            if rows:
                writers[split].add(
                    pa.table(
                        {
                            "id": [ids[j] for j in rows],
                            "input_ids": [token_lists[j] for j in rows],
                            "n_tokens": pa.array([len(token_lists[j]) for j in rows], pa.int32()),
                        },
                        schema=schema,
                    )
                )
        n_docs += len(ids)
        progress.add(sum(map(len, token_lists)))
    progress.done(f"from {n_docs} documents")
    for writer in writers.values():
        writer.close()
    special = {
        tok.content: i for i, tok in sorted(tokenizer.get_added_tokens_decoder().items()) if tok.special
    }
    splits = {s: w.summary() for s, w in writers.items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": str(dtype),
        "tokenizer": {
            "path": "../tokenizer/tokenizer.json",
            "sha256": file_sha256(tokenizer_path),
            "vocab_size": vocab_size,
            "special_tokens": special,
            "eot_id": tokenizer.token_to_id(EOT),
        },
        "splits": splits,
        "totals": {
            "documents": sum(s["documents"] for s in splits.values()),
            "tokens": sum(s["tokens"] for s in splits.values()),
            "bytes": sum(sh["bytes"] for s in splits.values() for sh in s["shards"]),
        },
        "split_rule": {
            "validation_fraction": config.validation_fraction,
            "method": "sha256('split:' + id) as a fraction of 2**64 < validation_fraction",
        },
        "lineage": lineage,
    }
    write_json(run.tokens / "manifest.json", manifest)
    return manifest


def config_sha256(config: dict[str, Any]) -> str:
    """A stable hash of a config dictionary."""
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
