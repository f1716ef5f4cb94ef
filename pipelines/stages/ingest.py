"""Ingest: read input files into Parquet documents, sending bad records to quarantine.

Shard `i` of a run is input file `i` of `documents/_inputs.json`; it becomes `documents/NNNNN.parquet`
(id, source, url, text) and `quarantine/NNNNN.jsonl` (one JSON object per quarantined record).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import RunConfig
from pipelines.corpus import quarantine_counts
from pipelines.exec.progress import Progress
from pipelines.exec.runner import run_shards
from pipelines.exec.step import ShardStep
from pipelines.io.inputs import list_inputs, local_input
from pipelines.readers import Document, Quarantined, read_file
from pipelines.run import RunDir
from pipelines.run.files import atomic_path, parquet_writer, write_json
from pipelines.run.layout import shard_name

log = logging.getLogger("gristmill")

DOCUMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("text", pa.large_string())]
)
BATCH_DOCUMENTS = 1_000


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Read every input file into documents/ and quarantine/."""
    files = plan_inputs(run, config.inputs)
    run_shards("ingest", run.synced(IngestStep(str(run.root))), len(files), config.executor.workers)
    quarantine = quarantine_counts(run)
    documents = sum(pq.read_metadata(run.documents / name).num_rows for name in run.shards())
    log.info("ingest: %d files -> %d documents, %d quarantined", len(files), documents, quarantine.total())
    return {
        "files": len(files),
        "documents": documents,
        "quarantined": quarantine.total(),
        "quarantine_reasons": dict(quarantine),
    }


def plan_inputs(run: RunDir, uris: list[str]) -> list[dict[str, str]]:
    """List the input files of a run and pin them in documents/_inputs.json (shard i = file i).

    A local file is pinned by its absolute path, an S3 object by its `s3://` URI (downloaded to the
    cache by the shard that reads it, so any machine can run or resume the shard).
    """
    inputs = [{"path": path, "source": source} for path, source in list_inputs(uris)]
    if not inputs:
        raise ValueError(f"no input files found in {uris}")
    if run.inputs.exists():
        if json.loads(run.inputs.read_text()) != inputs:
            raise ValueError(f"{run.root} was started on other input files; use a new run id or output")
    else:
        write_json(run.inputs, inputs)
    return inputs


class IngestStep(ShardStep):
    """Read input file `i` into documents/ and quarantine/."""

    label = "ingest"

    def output(self, index: int) -> Path:
        return self.run.documents / f"{shard_name(index)}.parquet"

    def process(self, index: int) -> dict[str, int]:
        """Stream the documents and quarantine records to temporary files, renamed at the end, quarantine
        first, so an existing documents/ shard always has its quarantine file."""
        entry = json.loads(self.run.inputs.read_text())[index]
        reasons: Counter[str] = Counter()
        path = local_input(entry["path"])
        progress = Progress(f"ingest {entry['source']}")
        batch: list[Document] = []
        quarantine = self.run.quarantine / f"{shard_name(index)}.jsonl"
        with (
            atomic_path(self.output(index)) as out,
            atomic_path(quarantine) as bad_path,
            parquet_writer(out, DOCUMENT_SCHEMA) as writer,
            bad_path.open("w") as bad,
        ):
            for item in read_file(path, entry["source"]):
                if isinstance(item, Quarantined):
                    bad.write(json.dumps(item.record(), ensure_ascii=False) + "\n")
                    reasons[item.reason] += 1
                    continue
                batch.append(item)
                progress.add()
                if len(batch) >= BATCH_DOCUMENTS:
                    writer.write_table(_documents_table(batch))
                    batch = []
            writer.write_table(_documents_table(batch))
        if reasons:
            log.info("ingest %s: quarantined %s", entry["source"], dict(reasons))
        return {"documents": progress.count, "bytes": os.path.getsize(path), "quarantined": reasons.total()}


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
