"""The signals stage: compute signals of every document shard and apply the policy.

documents/{i}.parquet -> signals/{i}.parquet (id, signals..., keep, reasons); the policy used is
copied to signals/_policy.yaml so a report can tell which thresholds produced `keep`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import signals as sig
from pipelines.ingest import document_files
from pipelines.policy import load_policy
from pipelines.rundir import RunDir, write_atomic

log = logging.getLogger("gristmill")


class SignalsShard:
    """Compute signals and keep/drop for one documents/ shard (a picklable executor task)."""

    def __init__(self, run_root: str, policy_path: str | None, langid_model: str | None = None) -> None:
        self.run_root = run_root
        self.policy_path = policy_path
        self.langid_model = langid_model

    def output(self, index: int) -> Path:
        run = RunDir(self.run_root)
        return run.signals / document_files(run)[index].name

    def __call__(self, index: int) -> None:
        run = RunDir(self.run_root)
        source = document_files(run)[index]
        start = time.perf_counter()
        docs = pq.read_table(source, columns=["id", "text"])
        rows = [sig.compute(text, self.langid_model) for text in docs.column("text").to_pylist()]
        columns = {"id": docs.column("id")}
        for field in sig.SIGNAL_SCHEMA:
            if field.name != "id":
                columns[field.name] = pa.array([r[field.name] for r in rows], field.type)
        table = load_policy(self.policy_path).apply(pa.table(columns))
        _write_parquet(table, run.signals / source.name)
        seconds = time.perf_counter() - start
        kept = sum(table.column("keep").to_pylist())
        log.info(
            "signals %s: %d documents, %d kept, %.0f docs/s",
            source.name,
            table.num_rows,
            kept,
            table.num_rows / max(seconds, 1e-9),
        )


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


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
