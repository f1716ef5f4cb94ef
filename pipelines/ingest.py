"""Ingest: read input files into Parquet documents, sending bad records to quarantine.

Shard `i` of a run is input file `i` of `documents/_inputs.json`; it becomes `documents/{i:05d}.parquet`
(id, source, url, text) and `quarantine/{i:05d}.jsonl` (one JSON object per quarantined record).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.progress import Progress
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
    """List the input files of a run and pin them in documents/_inputs.json (shard i = file i).

    A local file is pinned by its absolute path, an S3 object by its `s3://` URI (downloaded to the
    cache by the shard that reads it, so any machine can run or resume the shard).
    """
    inputs = []
    for uri in uris:
        if storage.is_s3(uri):
            inputs += [{"path": path, "source": source} for path, source in list_s3_inputs(uri)]
        else:
            pairs = list_inputs([uri])
            inputs += [{"path": str(Path(path).resolve()), "source": source} for path, source in pairs]
    seen: dict[str, str] = {}
    for entry in inputs:
        if entry["source"] in seen:
            raise ValueError(
                f"inputs {seen[entry['source']]!r} and {entry['path']!r} have the same source name "
                f"{entry['source']!r}"
            )
        seen[entry["source"]] = entry["path"]
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


def list_s3_inputs(uri: str) -> list[tuple[str, str]]:
    """`(s3 URI, source)` of the input files at `uri`, named exactly as the same files on a local disk.

    An existing object is one file named by its basename; otherwise (or with a trailing `/`) the URI is a
    folder, listed recursively with the local folder rules: keys sorted, hidden parts, `*.md` and
    `LICENSE*` skipped, source `<folder name>/<relative key>`.
    """
    location = storage.S3Uri.parse(uri)
    if location.key and not location.key.endswith("/") and storage.exists(location):
        return [(str(location), location.key.rsplit("/", 1)[-1])]
    root = location.key.rstrip("/").rsplit("/", 1)[-1] or location.bucket
    found = []
    for obj in storage.list_objects(location):
        rel = obj.key[len(location.prefix) :]
        parts = rel.split("/")
        name = parts[-1]
        if not name or any(p.startswith(".") for p in parts) or name.lower().endswith(".md"):  # no name: "x/"
            continue
        if name.upper().startswith("LICENSE"):
            continue
        found.append((str(location.join(rel)), f"{root}/{rel}"))
    if not found:
        raise ValueError(f"input path does not exist: {uri!r} (no object or objects under it)")
    return sorted(found, key=lambda pair: pair[1])


def local_input(path: str) -> str:
    """A local path to read an input from: the path itself, or an S3 object's copy in the cache
    (downloaded unless the copy matches the object's size and sha256)."""
    if not storage.is_s3(path):
        return path
    location = storage.S3Uri.parse(path)
    local = storage.cache_path(location)
    state = local.with_name(f".{local.name}.sha256")
    info = storage.head(location)
    if info is None:
        raise FileNotFoundError(f"input object {path} does not exist")
    want = (info.get("Metadata") or {}).get(storage.SHA256_METADATA) or str(info.get("ETag", "")).strip('"')
    size_matches = local.exists() and local.stat().st_size == int(info["ContentLength"])
    if size_matches and state.exists() and state.read_text().strip() == want:
        return str(local)
    storage.download(location, local)
    write_atomic(state, want)
    return str(local)


class IngestShard:
    """Read one input file into documents/ and quarantine/ (a picklable executor task)."""

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root

    def output(self, index: int) -> Path:
        return RunDir(self.run_root).documents / f"{shard_name(index)}.parquet"

    def __call__(self, index: int) -> dict[str, Any]:
        run = RunDir(self.run_root)
        entry = json.loads((run.documents / "_inputs.json").read_text())[index]
        return ingest_file(local_input(entry["path"]), entry["source"], run, index)


def ingest_file(path: str, source: str, run: RunDir, index: int) -> dict[str, Any]:
    """Write the documents and quarantine records of one input file; return its counts.

    Both outputs are streamed to temporary files and renamed at the end, quarantine first, so an
    existing documents/ shard always has its quarantine file.
    """
    out = run.documents / f"{shard_name(index)}.parquet"
    tmp = out.with_name(f".{out.name}.tmp")
    quarantine = run.quarantine / f"{shard_name(index)}.jsonl"
    quarantine_tmp = quarantine.with_name(f".{quarantine.name}.tmp")
    reasons: Counter[str] = Counter()
    progress = Progress(f"ingest {source}")
    n_chars = 0
    batch: list[Document] = []
    with (
        pq.ParquetWriter(tmp, DOCUMENT_SCHEMA, compression="zstd") as writer,
        quarantine_tmp.open("w") as bad,
    ):
        for item in read_file(path, source):
            if isinstance(item, Quarantined):
                bad.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                reasons[item.reason] += 1
                continue
            batch.append(item)
            n_chars += len(item.text)
            progress.add()
            if len(batch) >= BATCH_DOCUMENTS:
                writer.write_table(_documents_table(batch))
                batch = []
        writer.write_table(_documents_table(batch))
    quarantine_tmp.replace(quarantine)
    tmp.replace(out)
    progress.done(f"({sum(reasons.values())} quarantined{': ' + str(dict(reasons)) if reasons else ''})")
    return {"documents": progress.count, "characters": n_chars, "quarantined": sum(reasons.values())}


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
