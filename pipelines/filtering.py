"""The signals stage: clean and score every document shard, then apply the policy.

documents/{i}.parquet -> clean/{i}.parquet (id, text: C4's line cleaning, what every later stage reads)
                      -> signals/{i}.parquet (id, signals..., keep, reasons), written last: its existence
                         marks the shard done.
Shards are read and written in row batches, so memory does not grow with the size of a shard. The
policy used is copied to signals/_policy.yaml so a report can tell which thresholds produced `keep`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.cleaning import CleaningConfig
from pipelines.corpus import clean_dir
from pipelines.ingest import document_files
from pipelines.policy import load_policy
from pipelines.rundir import RunDir, write_atomic
from pipelines.signals import SIGNAL_SCHEMA, SIGNALS, SignalComputer

log = logging.getLogger("gristmill")

BATCH_ROWS = 256
CLEAN_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.large_string())])


class SignalsShard:
    """Clean, score and keep/drop the documents of one documents/ shard (a picklable executor task)."""

    def __init__(
        self,
        run_root: str,
        policy_path: str | None,
        langid_model: str | None = None,
        quality_model: str | None = None,
        cleaning: dict[str, Any] | None = None,
    ) -> None:
        self.run_root = run_root
        self.policy_path = policy_path
        self.langid_model = langid_model
        self.quality_model = quality_model
        self.cleaning = cleaning or {}

    def output(self, index: int) -> Path:
        run = RunDir(self.run_root)
        return run.signals / document_files(run)[index].name

    def __call__(self, index: int) -> None:
        run = RunDir(self.run_root)
        source = document_files(run)[index]
        policy = load_policy(self.policy_path)
        computer = SignalComputer(
            CleaningConfig(**self.cleaning), langid_model=self.langid_model, quality_model=self.quality_model
        )
        start = time.perf_counter()
        clean_out, signals_out = clean_dir(run) / source.name, run.signals / source.name
        clean_tmp, signals_tmp = _tmp(clean_out), _tmp(signals_out)
        documents = kept = chars = 0
        schema = policy.apply(SIGNAL_SCHEMA.empty_table()).schema
        with (
            pq.ParquetWriter(clean_tmp, CLEAN_SCHEMA, compression="zstd") as clean_writer,
            pq.ParquetWriter(signals_tmp, schema, compression="zstd") as signals_writer,
        ):
            for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS, columns=["id", "text"]):
                ids = batch.column("id")
                texts = [t or "" for t in batch.column("text").to_pylist()]
                rows, cleaned = [], []
                for text in texts:
                    row, clean_text = computer.compute(text)
                    rows.append(row)
                    cleaned.append(clean_text)
                table = policy.apply(signals_table(ids, rows))
                signals_writer.write_table(table)
                clean_writer.write_table(pa.table({"id": ids, "text": cleaned}, schema=CLEAN_SCHEMA))
                documents += len(rows)
                kept += sum(table.column("keep").to_pylist())
                chars += sum(map(len, texts))
        clean_tmp.replace(clean_out)  # signals/ last: its file marks the shard done
        signals_tmp.replace(signals_out)
        seconds = max(time.perf_counter() - start, 1e-9)
        log.info(
            "signals %s: %d documents, %d kept, %.0f docs/s, %.2f M characters/s",
            source.name,
            documents,
            kept,
            documents / seconds,
            chars / seconds / 1e6,
        )


def warm_up(langid_model: str | None = None, quality_model: str | None = None) -> None:
    """Compile the word-splitting expressions and load the models once, before worker processes fork."""
    SignalComputer(langid_model=langid_model, quality_model=quality_model).compute("Warm up. 中文 हिन्दी")


def signals_table(ids: pa.Array | pa.ChunkedArray, rows: list[dict[str, Any]]) -> pa.Table:
    """The signals of a batch of documents as a table with SIGNAL_SCHEMA."""
    columns: dict[str, Any] = {"id": ids}
    for name, (kind, _) in SIGNALS.items():
        columns[name] = pa.array([r[name] for r in rows], kind)
    return pa.table(columns, schema=SIGNAL_SCHEMA)


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def save_policy(run: RunDir, policy_path: str | None) -> None:
    """Record the policy a run used next to its signals."""
    from pipelines.policy import default_policy_path

    write_atomic(run.signals / "_policy.yaml", Path(policy_path or default_policy_path()).read_bytes())


def signal_files(run: RunDir) -> list[Path]:
    return sorted(run.signals.glob("[0-9]*.parquet"))


def read_signals(run: RunDir, columns: list[str] | None = None) -> pa.Table:
    """All signals of a run, in shard order."""
    files = signal_files(run)
    if not files:
        raise FileNotFoundError(f"{run.signals} has no signal shards; run the signals stage first")
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
