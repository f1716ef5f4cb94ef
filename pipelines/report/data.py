"""What a report reads from a run directory: signals, per-document token counts, texts of samples."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.corpus import text_path
from pipelines.executor import run_shards
from pipelines.filtering import read_signals, signal_files
from pipelines.ingest import document_files, quarantine_counts
from pipelines.policy import Policy, load_policy
from pipelines.rundir import RunDir, write_json
from tokenizer import file_sha256, load

NON_SIGNAL_COLUMNS = {"id", "keep", "reasons", "lang"}
TOKEN_CACHE = "_doc_tokens"


class DocumentTokens:
    """Tokens of every document of shard i with the run's tokenizer -> report/_doc_tokens/i.parquet.

    Counted on the text later stages read (cleaned when the signals stage cleaned it).

    Dropped documents are never tokenized by the pipeline, so the report counts them here, once; a
    what-if report reuses the counts.
    """

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root

    def output(self, index: int) -> Path:
        run = RunDir(self.run_root)
        return run.report / TOKEN_CACHE / document_files(run)[index].name

    def __call__(self, index: int) -> None:
        run = RunDir(self.run_root)
        tokenizer = load(run.tokenizer / "tokenizer.json")
        counts = []
        ids = []
        source = text_path(run, document_files(run)[index].name)  # the text the tokenize stage would see
        for batch in pq.ParquetFile(source).iter_batches(1_000, columns=["id", "text"]):
            texts = batch.column("text").to_pylist()
            counts += [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
            ids += batch.column("id").to_pylist()
        out = self.output(index)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(pa.table({"id": ids, "n_tokens": pa.array(counts, pa.int64())}), tmp)
        tmp.replace(out)


@dataclass
class RunData:
    """Everything a report aggregates, aligned row by row with the run's signals."""

    run: RunDir
    record: dict[str, Any]
    signals: pa.Table | None
    policy: Policy | None
    tokens: np.ndarray | None  # per-document token counts (None without a tokenizer)
    removed: pa.Table | None  # dedup/removed.parquet
    manifest: dict[str, Any] | None
    quarantine: dict[str, int]
    documents_in: int

    @property
    def unit(self) -> str:
        return "tokens" if self.tokens is not None else "characters"

    def sizes(self) -> np.ndarray:
        """Tokens per document, or characters when the run has no tokenizer."""
        if self.tokens is not None:
            return self.tokens
        return self.signals.column("n_chars").to_numpy(zero_copy_only=False).astype(np.int64)


def count_document_tokens(run: RunDir, workers: int = 0) -> np.ndarray | None:
    """Token counts of all documents in signals order (computed once, then read from the cache)."""
    if not (run.tokenizer / "tokenizer.json").exists():
        return None
    task = DocumentTokens(str(run.root))
    cache = run.report / TOKEN_CACHE
    key = {
        "tokenizer_sha256": file_sha256(run.tokenizer / "tokenizer.json"),
        "text": [text_path(run, p.name).parent.name for p in document_files(run)],
    }
    key_file = cache / "_key.json"
    if not key_file.exists() or json.loads(key_file.read_text()) != key:  # another tokenizer or text
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        write_json(key_file, key)
    run_shards("report token counts", run.synced(task), len(document_files(run)), workers)
    counts = {}
    for i in range(len(document_files(run))):
        table = pq.read_table(task.output(i))
        counts.update(zip(table.column("id").to_pylist(), table.column("n_tokens").to_pylist(), strict=True))
    ids = read_signals(run, ["id"]).column("id").to_pylist()
    return np.array([counts[i] for i in ids], np.int64)


def load_run(run: RunDir, workers: int = 0) -> RunData:
    """Read what a report needs from a run directory."""
    has_signals = bool(signal_files(run))
    signals = read_signals(run) if has_signals else None
    policy_file = run.signals / "_policy.yaml"
    removed_path = run.dedup / "removed.parquet"
    manifest_path = run.tokens / "manifest.json"
    return RunData(
        run=run,
        record=run.load(),
        signals=signals,
        policy=load_policy(policy_file) if policy_file.exists() else None,
        tokens=count_document_tokens(run, workers) if has_signals else None,
        removed=pq.read_table(removed_path) if removed_path.exists() else None,
        manifest=json.loads(manifest_path.read_text()) if manifest_path.exists() else None,
        quarantine=dict(quarantine_counts(run).most_common()),
        documents_in=sum(pq.read_metadata(p).num_rows for p in document_files(run)),
    )


def signal_columns(signals: pa.Table) -> list[str]:
    """Numeric signal columns (everything but id, lang, keep, reasons)."""
    return [
        f.name
        for f in signals.schema
        if f.name not in NON_SIGNAL_COLUMNS and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]


def as_float(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).cast(pa.float64()).fill_null(np.nan).to_numpy()


def texts_of(run: RunDir, ids: set[str], limit: int = 400) -> dict[str, dict[str, Any]]:
    """Excerpts (first `limit` characters), source and url of the given document ids."""
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    wanted = pa.array(sorted(ids))
    for path in document_files(run):
        table = pq.read_table(path, columns=["id", "source", "url", "text"])
        table = table.filter(pc.is_in(table.column("id"), value_set=wanted))
        for row in table.to_pylist():
            text = row["text"]
            found[row["id"]] = {
                "excerpt": text[:limit] + ("…" if len(text) > limit else ""),
                "source": row["source"],
                "url": row["url"],
            }
        if len(found) == len(ids):
            break
    return found
