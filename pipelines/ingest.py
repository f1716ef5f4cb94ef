"""Ingest: read input files into Parquet documents, sending bad records to quarantine.

Shard `i` of a run is input file `i` of `documents/_inputs.json`; it becomes `documents/{i:05d}.parquet`
(id, source, url, text) and `quarantine/{i:05d}.jsonl` (one JSON object per quarantined record).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.readers import Document, Quarantined, list_inputs, read_file
from pipelines.rundir import RunDir, write_atomic, write_json

log = logging.getLogger("gristmill")

DOCUMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("text", pa.large_string())]
)
BATCH_DOCUMENTS = 1_000


def shard_name(index: int) -> str:
    return f"{index:05d}"


def plan_inputs(run: RunDir, uris: list[str]) -> list[dict[str, str]]:
    """List the input files of a run and pin them in documents/_inputs.json (shard i = file i)."""
    inputs = [{"path": str(Path(path).resolve()), "source": source} for path, source in list_inputs(uris)]
    if not inputs:
        raise ValueError(f"no input files found in {uris}")
    manifest = run.documents / "_inputs.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous != inputs:
            raise ValueError(f"{run.root} was started on other input files; use a new run id or output")
    else:
        write_json(manifest, inputs)
    return inputs


class IngestShard:
    """Read one input file into documents/ and quarantine/ (a picklable executor task)."""

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root

    def output(self, index: int) -> Path:
        return RunDir(self.run_root).documents / f"{shard_name(index)}.parquet"

    def __call__(self, index: int) -> dict[str, Any]:
        run = RunDir(self.run_root)
        entry = json.loads((run.documents / "_inputs.json").read_text())[index]
        return ingest_file(entry["path"], entry["source"], run, index)


def ingest_file(path: str, source: str, run: RunDir, index: int) -> dict[str, Any]:
    """Write the documents and quarantine records of one input file; return its counts."""
    start = time.perf_counter()
    out = run.documents / f"{shard_name(index)}.parquet"
    tmp = out.with_name(f".{out.name}.tmp")
    quarantined: list[dict[str, str]] = []
    n_docs = n_chars = 0
    batch: list[Document] = []
    with pq.ParquetWriter(tmp, DOCUMENT_SCHEMA, compression="zstd") as writer:
        for item in read_file(path, source):
            if isinstance(item, Quarantined):
                quarantined.append(asdict(item))
                continue
            batch.append(item)
            n_docs += 1
            n_chars += len(item.text)
            if len(batch) >= BATCH_DOCUMENTS:
                writer.write_table(_documents_table(batch))
                batch = []
        writer.write_table(_documents_table(batch))
    lines = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in quarantined)
    write_atomic(run.quarantine / f"{shard_name(index)}.jsonl", lines)
    tmp.replace(out)
    seconds = time.perf_counter() - start
    reasons = Counter(q["reason"] for q in quarantined)
    log.info(
        "ingest %s: %d documents, %d quarantined %s, %.0f docs/s",
        source,
        n_docs,
        len(quarantined),
        dict(reasons) or "",
        n_docs / max(seconds, 1e-9),
    )
    return {"documents": n_docs, "characters": n_chars, "quarantined": len(quarantined)}


def _documents_table(batch: list[Document]) -> pa.Table:
    return pa.table(
        {
            "id": [d.id for d in batch],
            "source": [d.source for d in batch],
            "url": [d.url for d in batch],
            "text": [d.text for d in batch],
        },
        schema=DOCUMENT_SCHEMA,
    )


def document_files(run: RunDir) -> list[Path]:
    """The documents/ shards of a run, in shard order."""
    return sorted(run.documents.glob("[0-9]*.parquet"))


def quarantine_counts(run: RunDir) -> Counter[str]:
    """Quarantined records of a run by reason."""
    counts: Counter[str] = Counter()
    for path in sorted(run.quarantine.glob("*.jsonl")):
        with path.open() as f:
            for line in f:
                counts[json.loads(line)["reason"]] += 1
    return counts
