"""The final corpus of a run as a text dataset: `gristmill export-text RUN --output DIR`.

Writes every document of the final corpus (kept by the policy, not removed by dedup; `corpus.FinalCorpus`)
with its cleaned text, in input order, split as the token shards are (`corpus.split_of`):

    DIR/README.md                                   dataset card: where the corpus comes from, columns, counts
    DIR/data/{train,validation}-NNNNN.{parquet,jsonl}   one file per run shard and split (none when empty)

Columns: `id` (gristmill's id, `<source>:<position>`), `source_id` and `metadata` (the record's own id and
fields, when the run's documents carry them), `source` (input file), `url`, `text`, `lang`,
`quality_score`. The folder loads with `datasets.load_dataset(DIR)` or
`load_dataset("parquet", data_dir=DIR)`, and `DIR/data` with `pyarrow.dataset`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.corpus import FinalCorpus, split_of, text_path
from pipelines.run import RunDir
from pipelines.run.files import atomic_path, parquet_file, parquet_writer, read_table, write_atomic

Format = Literal["parquet", "jsonl"]
FORMATS: tuple[Format, ...] = ("parquet", "jsonl")
DOCUMENT_COLUMNS = ("source_id", "source", "url", "metadata")  # from documents/, those present
SIGNAL_COLUMNS = ("lang", "quality_score")
BATCH_ROWS = 1_000


def export_text(run: RunDir, output: Path, fmt: Format = "parquet") -> dict[str, Any]:
    """Write the run's final corpus and its dataset card into `output` (a new or empty folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if not run.run_json.exists():
        raise ValueError(f"{run.root} is not a run directory (no run.json)")
    if not any(run.signals.glob("[0-9]*.parquet")):
        raise ValueError(f"{run.root} has no signals: run the signals stage (gristmill filter) first")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty: export into a new folder")
    record = run.record.load()
    fraction = (record.get("config") or {}).get("tokenize", {}).get("validation_fraction", 0.02)
    corpus = FinalCorpus(run)
    (output / "data").mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    columns: list[str] = []
    for index, shard in enumerate(run.shards()):
        tables = _shard_tables(run, corpus, shard, fraction)
        for split, table in tables.items():
            name = output / "data" / f"{split}-{index:05d}.{fmt}"
            _write(table, name, fmt)
            counts[split] += table.num_rows
            chars[split] += int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0)
            columns = table.column_names
    if not counts:  # an empty corpus is still a dataset: one empty train file with the columns
        empty = _empty_table(run)
        _write(empty, output / "data" / f"train-00000.{fmt}", fmt)
        columns = empty.column_names
    summary = {
        "run_id": record.get("run_id"),
        "format": fmt,
        "documents": dict(counts),
        "characters": dict(chars),
        "columns": columns,
        "validation_fraction": fraction,
    }
    write_atomic(output / "README.md", dataset_card(record, summary))
    return summary


def _shard_tables(run: RunDir, corpus: FinalCorpus, shard: str, fraction: float) -> dict[str, pa.Table]:
    """The final-corpus rows of one shard, by split, with every exported column."""
    documents_path = run.documents / shard
    present = parquet_file(documents_path).schema_arrow.names
    documents = read_table(documents_path, columns=["id", *(c for c in DOCUMENT_COLUMNS if c in present)])
    signals = read_table(run.signals / shard, columns=["id", *SIGNAL_COLUMNS])
    parts: dict[str, list[pa.Table]] = {}
    row = 0
    for batch in parquet_file(text_path(run, shard)).iter_batches(BATCH_ROWS, columns=["id", "text"]):
        ids = batch.column("id")
        mask = corpus.mask(shard, row, ids)
        rows = np.flatnonzero(mask) + row
        row += batch.num_rows
        if not len(rows):
            continue
        take = pa.array(rows)
        table = _assemble(
            ids.filter(pa.array(mask)),
            batch.column("text").filter(pa.array(mask)),
            documents.take(take),
            signals.take(take),
        )
        splits = np.array([split_of(i, fraction) for i in table.column("id").to_pylist()])
        for split in ("train", "validation"):
            chosen = splits == split
            if chosen.any():
                parts.setdefault(split, []).append(table.filter(pa.array(chosen)))
    return {split: pa.concat_tables(tables) for split, tables in parts.items()}


def _assemble(ids: pa.Array, texts: pa.Array, documents: pa.Table, signals: pa.Table) -> pa.Table:
    aligned = all(t.column("id").combine_chunks().equals(ids) for t in (documents, signals))
    if not aligned:  # rows align by position in the shard
        raise RuntimeError("documents/, clean/ and signals/ rows are out of step: rerun the signals stage")
    columns: dict[str, Any] = {"id": ids}
    for name in ("source_id", "source", "url"):
        if name in documents.column_names:
            columns[name] = documents.column(name)
    columns["text"] = texts
    if "metadata" in documents.column_names:
        columns["metadata"] = documents.column("metadata")
    for name in SIGNAL_COLUMNS:
        columns[name] = signals.column(name)
    return pa.table(columns)


def _empty_table(run: RunDir) -> pa.Table:
    shard = run.shards()[0]
    present = parquet_file(run.documents / shard).schema_arrow.names
    documents = read_table(
        run.documents / shard, columns=["id", *(c for c in DOCUMENT_COLUMNS if c in present)]
    )
    signals = read_table(run.signals / shard, columns=["id", *SIGNAL_COLUMNS])
    empty = pa.array([], pa.string())
    return _assemble(empty, pa.array([], pa.large_string()), documents.slice(0, 0), signals.slice(0, 0))


def _write(table: pa.Table, path: Path, fmt: Format) -> None:
    if fmt == "parquet":
        with atomic_path(path) as tmp, parquet_writer(tmp, table.schema) as writer:
            writer.write_table(table)
        return
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in table.to_pylist():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def dataset_card(record: dict[str, Any], summary: dict[str, Any]) -> str:
    """README.md of an exported corpus: Hugging Face card metadata (the splits' files), provenance,
    columns and counts."""
    ext = summary["format"]
    splits = [s for s in ("train", "validation") if summary["documents"].get(s)] or ["train"]
    configs = "\n".join(f"      - split: {s}\n        path: data/{s}-*.{ext}" for s in splits)
    config = record.get("config") or {}
    signals, dedup = config.get("signals") or {}, config.get("dedup") or {}
    inputs = record.get("inputs") or config.get("inputs") or []
    stages = record.get("stages") or {}
    counts = ", ".join(f"{summary['documents'].get(s, 0):,} {s}" for s in splits)
    ingested = (stages.get("ingest") or {}).get("summary", {}).get("documents")
    plugins = signals.get("plugins") or []
    lines = [
        "---",
        "configs:",
        "  - config_name: default",
        "    data_files:",
        configs,
        "---",
        "",
        f"# gristmill corpus of run {record.get('run_id')}",
        "",
        "The final corpus of a gristmill run: the documents its quality policy kept and near-dedup did not "
        "remove, with their cleaned text (C4 line cleaning), in input order. The train/validation split is "
        f"the token shards' (a hash of the document id; validation fraction {summary['validation_fraction']})"
        ".",
        "",
        f"- documents: {counts}" + (f" (of {ingested:,} read)" if ingested else ""),
        f"- characters: {sum(summary['characters'].values()):,}",
        f"- inputs: {', '.join(map(str, inputs)) or 'unknown'}",
        f"- policy: {signals.get('policy') or 'the bundled default'}"
        + (f"; signal plugins: {', '.join(plugins)}" if plugins else ""),
        f"- near-dedup: MinHash, Jaccard threshold {dedup.get('threshold', 'default')}",
        f"- gristmill commit: {record.get('git_commit') or 'unknown'}",
        "",
        "## Columns",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    meaning = {
        "id": "gristmill's document id: `<input>:<position>` (line, row or record), stable across runs",
        "source_id": "the record's own id in its input",
        "source": "the input file the document was read from",
        "url": "the document's URL, when its input has one",
        "text": "the cleaned text (what the run's tokenizer and token shards saw)",
        "metadata": "the record's other fields, as JSON",
        "lang": "fastText lid.176 language",
        "quality_score": "fastText quality classifier's probability of high quality",
    }
    lines += [f"| `{c}` | {meaning.get(c, '')} |" for c in summary["columns"]]
    loader = "parquet" if ext == "parquet" else "json"
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        'corpus = datasets.load_dataset("path/to/this/folder")  # or:',
        f'corpus = datasets.load_dataset("{loader}", data_dir="path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)
