"""Ingest: read the inputs into Parquet documents, sending bad records to quarantine.

Two passes of parallel tasks:

1. **Splits** (`SplitStep`). The input files (_inputs.json) are cut into splits
   (`readers.plan_splits`: byte ranges of uncompressed JSONL and WARC/WET, runs of Parquet row groups,
   other files whole; pinned in _splits.json). Split k is read into documents/_parts/:
   NNNNN.parquet (its documents, positions counted from the split's start), NNNNN.quarantine.jsonl, and
   last NNNNN.json (positions read, rows per shard block, counts: the completion marker).
2. **Shards** (`ShardStep`). The records of input file f whose byte offset (in the decompressed file;
   a Parquet row group's offset) falls in block b = offset // shard_mb form documents shard (f, b),
   numbered in input order (_shards.json). Each shard is written from the parts that hold its
   records, positions made absolute (those of the file's earlier splits added), as
   documents/NNNNN.parquet (id, source, source_id, url, metadata, text) and quarantine/NNNNN.jsonl.
   The parts are deleted at the end.

So documents/ and quarantine/ depend on the inputs and `ingest.shard_mb` only, never on the split size
or the number of workers; a split that had to skip the rest of its file (a broken record) ends the file
there, as a whole-file read would.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import RunConfig
from pipelines.errors import UserError
from pipelines.exec.runner import default_workers, run_shards
from pipelines.exec.step import ShardStep
from pipelines.io import s3
from pipelines.io.fingerprint import changes, fingerprints
from pipelines.io.inputs import expand_inputs, local_input
from pipelines.readers import (
    Document,
    Quarantined,
    ReadOptions,
    Split,
    format_of,
    plan_splits,
    plan_splits_by_head,
    read_file,
)
from pipelines.readers.base import HEAD
from pipelines.run import RunDir
from pipelines.run.files import atomic_path, parquet_file, parquet_writer, write_json
from pipelines.run.layout import shard_name

log = logging.getLogger("gristmill")

DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("url", pa.string()),
        ("metadata", pa.string()),
        ("text", pa.large_string()),
    ]
)
PART_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("source_id", pa.string()),
        ("url", pa.string()),
        ("metadata", pa.string()),
        ("text", pa.large_string()),
    ]
)
BATCH_DOCUMENTS = 1_000
MB = 1 << 20
MIN_SPLIT_BYTES = 4 * MB  # splits are not made smaller than this to give every worker some


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Read every input into documents/ and quarantine/ (splits in parallel, then shards in parallel)."""
    inputs = plan_inputs(run, config)
    workers = config.executor.workers
    plan = plan_splits_of(run, config, inputs)
    run_shards("ingest splits", run.synced(SplitStep(str(run.root), config)), len(plan["splits"]), workers)
    shards = plan_shards(run)
    step = ShardWriter(str(run.root))
    run_shards("ingest shards", run.synced(step), len(shards), workers)
    summary = _summary(run, inputs, plan, shards)
    run.delete_folder(run.parts)
    log.info(
        "ingest: %d files in %d splits -> %d documents in %d shards, %d quarantined",
        summary["files"], summary["splits"], summary["documents"], summary["shards"], summary["quarantined"],
    )  # fmt: skip
    return summary


def plan_inputs(run: RunDir, config: RunConfig) -> list[dict[str, Any]]:
    """List the input files of a run with their reading settings and pin them in _inputs.json.

    A local file is pinned by its absolute path, an S3 object by its `s3://` URI (downloaded to the
    cache by the tasks that read it, so any machine can run or resume them).
    """
    specs = config.input_specs()
    found = expand_inputs([spec.uri for spec in specs])
    inputs = [
        {"path": path, "source": source, "text_key": specs[i].text_key, "id_key": specs[i].id_key}
        for path, source, i in found
    ]
    if not inputs:
        raise ValueError(f"no input files found in {[spec.uri for spec in specs]}")
    files = [(entry["path"], entry["source"]) for entry in inputs]
    if run.inputs.exists():
        if json.loads(run.inputs.read_text()) != inputs:
            raise ValueError(f"{run.root} was started on other input files; use a new run id or output")
        _stop_if_changed(run, files)
    else:
        write_json(run.inputs, inputs)
        run.record.update(input_files=fingerprints(files))
    return inputs


def check_inputs_unchanged(run: RunDir, config: RunConfig) -> None:
    """Before a run goes on with results of an earlier attempt: stop, naming the file, when an input file
    changed since the ingest listed it (run.json `input_files`: size, mtime and a fingerprint of each)."""
    if run.record.load().get("input_files") is not None:
        _stop_if_changed(run, [(path, source) for path, source, _ in _expand(config)])


def _expand(config: RunConfig) -> list[tuple[str, str, int]]:
    return expand_inputs([spec.uri for spec in config.input_specs()])


def _stop_if_changed(run: RunDir, files: list[tuple[str, str]]) -> None:
    recorded = run.record.load().get("input_files")
    if recorded is None:
        return
    if found := changes(recorded, fingerprints(files)):
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(
            f"input {found[0]}{more} since run {run.root.name} read it: start a new run with another "
            "--run-id, or rerun with --force-restart to discard this run's results"
        )


def split_bytes(config: RunConfig, sizes: list[int]) -> int:
    """The split size: `ingest.split_mb`, lowered (not below MIN_SPLIT_BYTES) so that the splittable
    bytes make at least two splits per worker."""
    workers = config.executor.workers or default_workers()
    enough = math.ceil(sum(sizes) / (2 * workers)) if sizes else MIN_SPLIT_BYTES
    return max(1, min(int(config.ingest.split_mb * MB), max(MIN_SPLIT_BYTES, enough)))


def plan_splits_of(run: RunDir, config: RunConfig, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The splits of every input file, pinned in _splits.json (kept on a resume)."""
    settings = {"read": _read_settings(config), "shard_bytes": _shard_bytes(config)}
    if run.splits.exists():
        plan = json.loads(run.splits.read_text())
        if {k: plan[k] for k in settings} != settings:
            raise ValueError(f"{run.root} was started with other ingest settings; use a new run id or output")
        return plan
    splittable = [i for i, entry in enumerate(inputs) if _may_split(entry["path"])]
    sizes = {i: _size(inputs[i]["path"]) for i in splittable}
    size = split_bytes(config, list(sizes.values()))
    splits = []
    for i, entry in enumerate(inputs):
        parts = (
            _splits_of(entry["path"], sizes[i], size, _options(config, entry)) if i in sizes else [Split()]
        )
        splits += [{"input": i, "start": s.start, "stop": s.stop} for s in parts]
    plan = {**settings, "split_bytes": size, "splits": splits}
    write_json(run.splits, plan)
    return plan


def _size(path: str) -> int:
    if not s3.is_s3(path):
        return os.path.getsize(path)
    info = s3.head(s3.S3Uri.parse(path))
    return int(info["ContentLength"]) if info else 0


def _splits_of(path: str, size: int, split_bytes: int, options: ReadOptions) -> list[Split]:
    """The splits of one input; an S3 object is downloaded for planning only when its first bytes are not
    enough (WARC walk, Parquet footer)."""
    if s3.is_s3(path):
        head = s3.read_range(s3.S3Uri.parse(path), 0, HEAD)
        planned = plan_splits_by_head(path, head, size, split_bytes)
        if planned is not None:
            return planned
    return plan_splits(local_input(path), split_bytes, options)


def _may_split(path: str) -> bool:
    """Whether a file's name allows a split (an uncompressed file of a splittable format)."""
    fmt = format_of(path)
    return fmt is not None and fmt.split is not None and not path.lower().endswith((".gz", ".zst", ".zstd"))


def _read_settings(config: RunConfig) -> dict[str, Any]:
    ingest = config.ingest
    return {"metadata": ingest.metadata, "max_line_bytes": ingest.max_line_bytes,
            "max_document_bytes": ingest.max_document_bytes, "too_large": ingest.too_large}  # fmt: skip


def _shard_bytes(config: RunConfig) -> int:
    return max(1, int(config.ingest.shard_mb * MB))


def _options(config: RunConfig, entry: dict[str, Any]) -> ReadOptions:
    return ReadOptions(
        text_key=entry["text_key"],
        id_key=entry["id_key"],
        metadata=config.ingest.metadata,
        max_line_bytes=config.ingest.max_line_bytes,
        max_document_bytes=config.ingest.max_document_bytes,
        truncate=config.ingest.too_large == "truncate",
    )


class SplitStep(ShardStep):
    """Read split `k` of _splits.json into documents/_parts/."""

    label = "ingest split"
    driver_reads = ("documents/_parts/*.json",)  # the split summaries ShardWriter's plan is made of

    def __init__(self, run_root: str, config: RunConfig) -> None:
        super().__init__(run_root)
        self.config = config

    def plan_files(self) -> list[str]:
        return ["_inputs.json", "_splits.json"]

    def reads(self, index: int) -> list[str]:
        return []  # the input file itself: `local_input`

    def output(self, index: int) -> Path:
        return self.run.parts / f"{shard_name(index)}.json"

    def process(self, index: int) -> dict[str, int]:
        """Stream the split's documents and quarantine records to the part files, noting where each shard
        block's rows are; the summary (the completion marker) is written last."""
        plan = json.loads(self.run.splits.read_text())
        split = plan["splits"][index]
        entry = json.loads(self.run.inputs.read_text())[split["input"]]
        shard_bytes = plan["shard_bytes"]
        path = local_input(entry["path"])
        options = _options(self.config, entry)
        items = read_file(path, entry["source"], options, Split(split["start"], split["stop"]))
        blocks: dict[int, list[int]] = {}  # block -> [first row, stop row, first quarantine line, stop line]
        reasons: Counter[str] = Counter()
        documents, truncated, block, batch = 0, 0, 0, []
        stem = self.run.parts / shard_name(index)
        with (
            atomic_path(self.output(index)) as marker,
            atomic_path(stem.with_suffix(".parquet")) as out,
            atomic_path(stem.with_suffix(".quarantine.jsonl")) as bad_path,
            parquet_writer(out, PART_SCHEMA) as writer,
            bad_path.open("w") as bad,
        ):
            while True:
                try:
                    item = next(items)
                except StopIteration as stop:
                    positions = stop.value
                    break
                if item.offset is not None:
                    block = item.offset // shard_bytes
                rows = blocks.setdefault(block, [documents, documents, reasons.total(), reasons.total()])
                if isinstance(item, Quarantined):
                    bad.write(json.dumps(_quarantine_line(item), ensure_ascii=False) + "\n")
                    reasons[item.reason] += 1
                    rows[3] = reasons.total()
                    continue
                batch.append(item)
                documents += 1
                truncated += item.truncated
                rows[1] = documents
                if len(batch) >= BATCH_DOCUMENTS:
                    writer.write_table(_part_table(batch))
                    batch = []
            writer.write_table(_part_table(batch))
            summary = {
                "positions": positions,
                "blocks": [[b, *rows] for b, rows in blocks.items()],
                "documents": documents,
                "truncated": truncated,
                "reasons": dict(reasons),
            }
            write_json(marker, summary)
        if reasons:
            log.info("ingest %s: quarantined %s", entry["source"], dict(reasons))
        if truncated:
            log.info("ingest %s: %d documents cut to ingest.max_document_bytes", entry["source"], truncated)
        stop = split["stop"] if split["stop"] is not None else os.path.getsize(path)
        return {"documents": documents, "bytes": stop - split["start"], "quarantined": reasons.total()}


def _quarantine_line(item: Quarantined) -> dict[str, Any]:
    return {"unit": item.unit, "number": item.number, "reason": item.reason, "detail": item.detail,
            "excerpt": item.excerpt, "offset": item.offset}  # fmt: skip


def _part_table(batch: list[Document]) -> pa.Table:
    return pa.table(
        {
            "position": [d.position for d in batch],
            "source_id": [d.source_id for d in batch],
            "url": [d.url for d in batch],
            "metadata": [d.metadata for d in batch],
            "text": [d.text for d in batch],
        },
        schema=PART_SCHEMA,
    )


def plan_shards(run: RunDir) -> list[dict[str, Any]]:
    """The documents shards: per input file, in block order, the part rows of each block and the
    position offset of their split; pinned in _shards.json. Splits after one that stopped early
    are left out; a file without any record still gets one (empty) shard."""
    plan = json.loads(run.splits.read_text())
    by_input: dict[int, list[int]] = {}
    for k, split in enumerate(plan["splits"]):
        by_input.setdefault(split["input"], []).append(k)
    shards = []
    for i in sorted(by_input):
        blocks: dict[int, list[list[int]]] = {}
        base = 0
        for k in by_input[i]:
            summary = json.loads((run.parts / f"{shard_name(k)}.json").read_text())
            for block, *rows in summary["blocks"]:
                blocks.setdefault(block, []).append([k, *rows, base])
            if summary["positions"] is None:
                break
            base += summary["positions"]
        shards += [{"input": i, "block": b, "parts": blocks[b]} for b in sorted(blocks)] or [
            {"input": i, "block": 0, "parts": []}
        ]
    if not run.shards_plan.exists() or json.loads(run.shards_plan.read_text()) != shards:
        write_json(run.shards_plan, shards)
    return shards


class ShardWriter(ShardStep):
    """Write documents shard `i` (_shards.json) from the parts that hold its records."""

    label = "ingest shard"
    driver_reads = ()

    def plan_files(self) -> list[str]:
        return ["_inputs.json", "_shards.json"]

    def reads(self, index: int) -> list[str]:
        parts = json.loads(self.run.shards_plan.read_text())[index]["parts"]
        stems = [f"documents/_parts/{shard_name(part[0])}" for part in parts]
        return [f"{stem}{suffix}" for stem in stems for suffix in (".parquet", ".quarantine.jsonl")]

    def output(self, index: int) -> Path:
        return self.run.documents / f"{shard_name(index)}.parquet"

    def process(self, index: int) -> dict[str, int]:
        """Documents in batches of BATCH_DOCUMENTS rows from the shard's start (so the file does not
        depend on how the parts were cut), quarantine first, so a documents/ shard always has its
        quarantine file."""
        shard = json.loads(self.run.shards_plan.read_text())[index]
        source = json.loads(self.run.inputs.read_text())[shard["input"]]["source"]
        quarantine = self.run.quarantine / f"{shard_name(index)}.jsonl"
        documents = quarantined = text_bytes = 0
        with (
            atomic_path(self.output(index)) as out,
            atomic_path(quarantine) as bad_path,
            parquet_writer(out, DOCUMENT_SCHEMA) as writer,
            bad_path.open("w") as bad,
        ):
            pending: list[pa.Table] = []
            for k, first, stop, q_first, q_stop, base in shard["parts"]:
                stem = self.run.parts / shard_name(k)
                for table in _part_rows(stem.with_suffix(".parquet"), first, stop):
                    pending.append(_documents_table(table, source, base))
                    documents += table.num_rows
                    text_bytes += int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
                    pending = _write_full_batches(writer, pending)
                for line in _lines(stem.with_suffix(".quarantine.jsonl"), q_first, q_stop):
                    bad.write(json.dumps(_absolute(line, source, base), ensure_ascii=False) + "\n")
                    quarantined += 1
            writer.write_table(pa.concat_tables([DOCUMENT_SCHEMA.empty_table(), *pending]).combine_chunks())
        return {"documents": documents, "bytes": text_bytes, "quarantined": quarantined}


def _part_rows(path: Path, first: int, stop: int) -> Iterator[pa.Table]:
    """Rows [first, stop) of a part file, by row group."""
    if stop <= first:
        return
    part = parquet_file(path)
    row = 0
    for group in range(part.metadata.num_row_groups):
        n = part.metadata.row_group(group).num_rows
        if row < stop and row + n > first:
            lo, hi = max(first - row, 0), min(stop - row, n)
            yield part.read_row_group(group).slice(lo, hi - lo)
        row += n


def _documents_table(part: pa.Table, source: str, base: int) -> pa.Table:
    positions = pc.cast(pc.add(part.column("position"), base), pa.string())
    ids = pc.binary_join_element_wise(source, positions, ":")
    return pa.table(
        {
            "id": ids,
            "source": pa.array([source] * part.num_rows, pa.string()),
            "source_id": part.column("source_id"),
            "url": part.column("url"),
            "metadata": part.column("metadata"),
            "text": part.column("text"),
        },
        schema=DOCUMENT_SCHEMA,
    )


def _write_full_batches(writer: pq.ParquetWriter, pending: list[pa.Table]) -> list[pa.Table]:
    """Write BATCH_DOCUMENTS-row row groups while enough rows are pending; return the rest."""
    if sum(t.num_rows for t in pending) < BATCH_DOCUMENTS:
        return pending
    table = pa.concat_tables(pending)
    start = 0
    while table.num_rows - start >= BATCH_DOCUMENTS:
        writer.write_table(table.slice(start, BATCH_DOCUMENTS).combine_chunks())
        start += BATCH_DOCUMENTS
    return [table.slice(start)] if start < table.num_rows else []


def _lines(path: Path, first: int, stop: int) -> Iterator[dict[str, Any]]:
    if stop <= first:
        return
    with path.open() as f:
        for n, line in enumerate(f):
            if n >= stop:
                return
            if n >= first:
                yield json.loads(line)


def _absolute(line: dict[str, Any], source: str, base: int) -> dict[str, str]:
    """A part's quarantine line as the quarantine/ line of the shard: the position made absolute."""
    number = None if line["number"] is None else line["number"] + base
    item = Quarantined(source, line["unit"], number, line["reason"], line["detail"], line["excerpt"],
                       line["offset"])  # fmt: skip
    return item.record()


def _summary(
    run: RunDir, inputs: list[dict[str, Any]], plan: dict[str, Any], shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """Counts over the splits that made the shards."""
    used = sorted({part[0] for shard in shards for part in shard["parts"]})
    documents, truncated, reasons = 0, 0, Counter[str]()
    for k in used:
        summary = json.loads((run.parts / f"{shard_name(k)}.json").read_text())
        documents += summary["documents"]
        truncated += summary["truncated"]
        reasons.update(summary["reasons"])
    return {
        "files": len(inputs),
        "splits": len(plan["splits"]),
        "split_bytes": plan["split_bytes"],
        "shards": len(shards),
        "documents": documents,
        "truncated": truncated,
        "quarantined": reasons.total(),
        "quarantine_reasons": dict(reasons.most_common()),
    }
