"""The signals stage: clean and score every document shard, then apply the policy.

documents/NNNNN.parquet -> clean/NNNNN.parquet (id, text: C4's line cleaning, what every later stage reads)
                        -> signals/NNNNN.parquet (id, source_id, metadata, signals..., keep, reasons),
                           written last: its existence marks the shard done. source_id and metadata
                           are carried from documents/, so every row joins back to the user's record.
Shards are read and written in row batches, so memory does not grow with the size of a shard. The
policy used is copied to the run's _policy.yaml so a report can tell which thresholds produced `keep`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import RunConfig, SignalsConfig
from pipelines.corpus import read_signals, signal_files
from pipelines.exec.runner import run_shards
from pipelines.exec.step import ShardStep
from pipelines.quality.plugins import SignalPlugin, load_plugins, load_run_policy
from pipelines.quality.policy import default_policy_path
from pipelines.quality.signals import SIGNAL_SCHEMA, SIGNALS, SignalComputer
from pipelines.run import RunDir
from pipelines.run.files import atomic_path, parquet_file, parquet_writer, write_atomic

log = logging.getLogger("gristmill")

BATCH_ROWS = 256
CARRIED = ("source_id", "metadata")  # documents/ columns copied to signals/, so its rows join to the input
CLEAN_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.large_string())])
PLUGIN_ERRORS_KEY = "gristmill.plugin_errors"  # signals/ shard metadata: documents each plugin raised on


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Clean and score every document (clean/, signals/) and apply the policy."""
    settings = config.signals
    write_atomic(run.policy, Path(settings.policy or default_policy_path()).read_bytes())
    warm_up(settings)  # forked workers inherit the models, compiled expressions and plugins
    load_run_policy(settings)  # a rule on an unknown signal fails here, before any shard
    run_shards("signals", run.synced(SignalsStep(str(run.root), settings)), len(run.shards()),
               config.executor.workers)  # fmt: skip
    keep = read_signals(run, ["keep"]).column("keep")
    documents, kept = len(keep), int(pc.sum(keep).as_py() or 0)
    log.info("signals: %d documents, %d kept, %d dropped", documents, kept, documents - kept)
    summary: dict[str, Any] = {"documents": documents, "kept": kept, "dropped": documents - kept}
    if settings.plugins:
        summary["plugins"] = {p.spec: list(p.columns) for p in load_plugins(tuple(settings.plugins))}
        summary["plugin_errors"] = plugin_errors(run)
        if any(summary["plugin_errors"].values()):
            log.warning("signals: documents a plugin failed on (their plugin columns are null): %s",
                        summary["plugin_errors"])  # fmt: skip
    return summary


def plugin_errors(run: RunDir) -> dict[str, int]:
    """Documents each signal plugin raised on, over every signals/ shard (from the shards' metadata)."""
    total: Counter[str] = Counter()
    for path in signal_files(run):
        metadata = parquet_file(path).metadata.metadata or {}
        total.update(json.loads(metadata.get(PLUGIN_ERRORS_KEY, b"{}")))
    return dict(total)


def warm_up(settings: SignalsConfig) -> None:
    """Compile the word-splitting expressions, load the models and import the signal plugins once,
    before worker processes fork."""
    computer = SignalComputer(langid_model=settings.langid_model, quality_model=settings.quality_model)
    computer.compute("Warm up. 中文 हिन्दी")
    load_plugins(tuple(settings.plugins))


class SignalsStep(ShardStep):
    """Clean, score and keep/drop the documents of one documents/ shard."""

    label = "signals"
    driver_reads = ("signals/*",)  # the keep counts of the summary; not clean/

    def __init__(self, run_root: str, settings: SignalsConfig) -> None:
        super().__init__(run_root)
        self.settings = settings

    def output(self, index: int) -> Path:
        return self.run.signals / self.shard(index)

    def reads(self, index: int) -> list[str]:
        return [f"documents/{self.shard(index)}"]

    def process(self, index: int) -> dict[str, int]:
        name, settings = self.shard(index), self.settings
        policy = load_run_policy(settings)
        plugins = load_plugins(tuple(settings.plugins))  # imported by path where not inherited (Ray)
        errors: Counter[str] = Counter()
        computer = SignalComputer(settings.cleaning, settings.langid_model, settings.quality_model)
        documents = kept = chars = 0
        source = parquet_file(self.run.documents / name)
        carried = [c for c in CARRIED if c in source.schema_arrow.names]  # the record's own id and metadata
        empty = signals_table(pa.array([], pa.string()), [], {c: [] for c in carried})
        schema = policy.apply(with_plugins(empty, plugins, [], [], errors)).schema
        with (
            atomic_path(self.output(index)) as signals_path,
            atomic_path(self.run.clean / name) as clean_path,
            parquet_writer(clean_path, CLEAN_SCHEMA) as clean_writer,
            parquet_writer(signals_path, schema) as signals_writer,
        ):
            for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=["id", *carried, "text"]):
                ids = batch.column("id")
                texts = [t or "" for t in batch.column("text").to_pylist()]
                rows, cleaned = zip(*map(computer.compute, texts), strict=True) if texts else ((), ())
                table = signals_table(ids, list(rows), {c: batch.column(c) for c in carried})
                table = policy.apply(with_plugins(table, plugins, texts, list(cleaned), errors))
                signals_writer.write_table(table)
                clean_writer.write_table(pa.table({"id": ids, "text": list(cleaned)}, schema=CLEAN_SCHEMA))
                documents += len(rows)
                kept += sum(table.column("keep").to_pylist())
                chars += sum(map(len, texts))
                self.advance(len(rows), sum(map(len, texts)))
            if plugins:
                signals_writer.add_key_value_metadata({PLUGIN_ERRORS_KEY: json.dumps(dict(errors))})
        return {"documents": documents, "bytes": chars, "kept": kept}


def with_plugins(
    table: pa.Table,
    plugins: tuple[SignalPlugin, ...],
    texts: list[str],
    cleaned: list[str],
    errors: Counter[str],
) -> pa.Table:
    """`table` with the columns of every signal plugin appended (computed on the batch's documents)."""
    if not plugins:
        return table
    batch = pa.table(
        {
            "id": table.column("id"),
            "text": pa.array(texts, pa.large_string()),
            "clean_text": pa.array(cleaned, pa.large_string()),
            "lang": table.column("lang"),
        }
    )
    for plugin in plugins:
        for column, values in plugin.compute(batch, errors).items():
            table = table.append_column(pa.field(column, plugin.columns[column]), values)
    return table


def signals_table(
    ids: pa.Array | pa.ChunkedArray, rows: list[dict[str, Any]], carried: dict[str, Any] | None = None
) -> pa.Table:
    """The signals of a batch of documents as a table with SIGNAL_SCHEMA, the `carried` columns of
    documents/ (source_id, metadata) after the id."""
    carried = carried or {}
    columns: dict[str, Any] = {"id": ids, **carried}
    for name, (kind, _) in SIGNALS.items():
        columns[name] = pa.array([r[name] for r in rows], kind)
    schema = SIGNAL_SCHEMA
    for i, name in enumerate(carried, start=1):
        schema = schema.insert(i, pa.field(name, pa.string()))
    return pa.table(columns, schema=schema)
