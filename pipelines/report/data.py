"""What a report reads from a run directory: signals, per-document token counts, texts of samples."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.corpus import quarantine_counts, read_signals, signal_files, text_path
from pipelines.exec.runner import run_shards
from pipelines.exec.step import ShardStep
from pipelines.quality.policy import Policy, load_policy
from pipelines.run import RunDir
from pipelines.run.files import parquet_file, read_table, sha256_file, write_json, write_parquet
from pipelines.run.layout import RunLayout, token_shard_name
from tokenizer import count_tokens, load

NON_SIGNAL_COLUMNS = {"id", "keep", "reasons", "lang"}


class DocumentTokens(ShardStep):
    """Tokens of every document of shard i with the run's tokenizer -> report/_doc_tokens/i.parquet.

    Counted on the text later stages read (cleaned when the signals stage cleaned it). The documents of
    the final corpus take their `n_tokens` from the token shards when tokens/ was made with the run's
    tokenizer (`token_shards`: documents/ shard -> the token shards holding its documents); the others
    (dropped, or every document before the tokenize stage ran) are tokenized here, once. A what-if
    reuses the counts.
    """

    label = "report token counts"

    def __init__(self, run_root: str, token_shards: dict[str, list[str]] | None = None) -> None:
        super().__init__(run_root)
        self.token_shards = token_shards or {}

    def plan_files(self) -> list[str]:
        return ["tokenizer/tokenizer.json"]

    def reads(self, index: int) -> list[str]:
        tokens = [f"tokens/{name}" for name in self.token_shards.get(self.shard(index), [])]
        return self.text_reads(index)[:1] + tokens

    def output(self, index: int) -> Path:
        return self.run.doc_tokens / self.shard(index)

    def process(self, index: int) -> dict[str, int]:
        name = self.shard(index)
        known: dict[str, int] = {}
        for file in self.token_shards.get(name, []):
            table = read_table(self.run.tokens / file, columns=["id", "n_tokens"])
            known.update(zip(*(table.column(c).to_pylist() for c in ("id", "n_tokens")), strict=True))
        tokenizer = None
        counts: list[int] = []
        ids: list[str] = []
        tokenized = 0
        for batch in parquet_file(text_path(self.run, name)).iter_batches(1_000, columns=["id", "text"]):
            batch_ids = batch.column("id").to_pylist()
            missing = [i for i, doc_id in enumerate(batch_ids) if doc_id not in known]
            if missing:
                # special-token strings count as text, as in the tokenize stage
                tokenizer = tokenizer or load(self.run.tokenizer_json, literal_special_tokens=True)
                rows = pa.array(missing, pa.int64())
                texts = [t or "" for t in batch.column("text").take(rows).to_pylist()]
                new_ids = [batch_ids[i] for i in missing]
                known.update(zip(new_ids, count_tokens(tokenizer, texts), strict=True))
                tokenized += len(missing)
            counts += [known[doc_id] for doc_id in batch_ids]
            ids += batch_ids
        table = pa.table({"id": ids, "n_tokens": pa.array(counts, pa.int64())})
        write_parquet(table, self.output(index))
        return {"documents": len(ids), "tokens": sum(counts), "tokenized": tokenized}


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
    bytes: np.ndarray | None = None  # UTF-8 bytes of the text later stages read, per document
    groups: np.ndarray | None = None  # input group of each document (`source_group`)
    ablation: dict[str, Any] | None = None  # ablation/results.json (`gristmill ablate`)

    @property
    def unit(self) -> str:
        return "tokens" if self.tokens is not None else "characters"

    def sizes(self) -> np.ndarray:
        """Tokens per document, or characters when the run has no tokenizer."""
        if self.tokens is not None:
            return self.tokens
        return self.signals.column("n_chars").to_numpy(zero_copy_only=False).astype(np.int64)


def token_shards_by_input(run: RunDir) -> dict[str, list[str]]:
    """documents/ shard -> the token shards holding its documents of the final corpus, when tokens/ is
    complete and was made with the run's tokenizer (its `n_tokens` are then the report's counts); else {}."""
    if not (run.manifest.exists() and run.token_plan.exists() and run.tokenizer_json.exists()):
        return {}
    if json.loads(run.manifest.read_text())["tokenizer"]["sha256"] != sha256_file(run.tokenizer_json):
        return {}
    by_input: dict[str, dict[str, None]] = {}
    for shard in json.loads(run.token_plan.read_text())["shards"]:
        for name, _, _ in shard["segments"]:
            by_input.setdefault(name, {})[token_shard_name(shard["split"], shard["index"])] = None
    return {name: list(files) for name, files in by_input.items()}


def count_document_tokens(run: RunDir, workers: int = 0) -> np.ndarray | None:
    """Token counts of all documents in signals order (computed once, then read from the cache)."""
    if not run.tokenizer_json.exists():
        return None
    task = DocumentTokens(str(run.root), token_shards_by_input(run))
    cache = run.doc_tokens
    shards = run.shards()
    key = {
        "tokenizer_sha256": sha256_file(run.tokenizer_json),
        "text": [text_path(run, name).parent.name for name in shards],
        "special_tokens": "literal",  # special-token strings counted as text (older caches are stale)
    }
    key_file = run.doc_tokens_key
    if not key_file.exists() or json.loads(key_file.read_text()) != key:  # another tokenizer or text
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        write_json(key_file, key)
    run_shards("report token counts", run.synced(task), len(shards), workers)
    counts = {}
    for i in range(len(shards)):
        table = read_table(task.output(i))
        counts.update(zip(table.column("id").to_pylist(), table.column("n_tokens").to_pylist(), strict=True))
    ids = read_signals(run, ["id"]).column("id").to_pylist()
    return np.array([counts[i] for i in ids], np.int64)


def source_group(source: str) -> str:
    """The input group of a document: its input file (`source`) with every number in the file name
    replaced by `*`, so the numbered parts of one dump (`web/pages-00.jsonl.gz`, `web/pages-01.jsonl.gz`)
    are one group (`web/pages-*.jsonl.gz`) and differently named files stay apart."""
    folder, _, name = source.rpartition("/")
    name = re.sub(r"\d+", "*", name)
    return f"{folder}/{name}" if folder else name


def document_bytes_and_groups(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every document's text (as later stages read it) and its input group, in signals
    order. Bytes compare across runs, which train their own tokenizers."""
    sizes, groups = [], []
    for name in run.shards():
        table = read_table(text_path(run, name), columns=["id", "text"])
        sizes.append(pc.binary_length(table.column("text")).fill_null(0).to_numpy().astype(np.int64))
        source = source_of(table.column("id")).combine_chunks()
        encoded = source.dictionary_encode()
        names = np.array([source_group(s or "") for s in encoded.dictionary.to_pylist()] or [""], object)
        groups.append(names[encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)])
    if not sizes:
        return np.zeros(0, np.int64), np.zeros(0, object)
    return np.concatenate(sizes), np.concatenate(groups)


# What a report reads of a run (an S3 run pulls these into its mirror first): never documents/.
READS = (
    "_shards.json", "_policy.yaml", "signals/*", "clean/*", "quarantine/*", "dedup/removed.parquet",
    "dedup/clusters.parquet", "dedup/summary.json", "tokenizer/*", "tokens/_manifest.json",
    "tokens/_plan.json", "report/*", "report/_doc_tokens/*", "ablation/results.json",
)  # fmt: skip


def load_run(run: RunDir, workers: int = 0, text_sizes: bool = True) -> RunData:
    """Read what a report needs from a run directory (`text_sizes`: also the UTF-8 bytes and input group
    of every document, which a what-if does not use)."""
    run.fetch(READS)
    has_signals = bool(signal_files(run))
    signals = read_signals(run) if has_signals else None
    sizes, groups = document_bytes_and_groups(run) if has_signals and text_sizes else (None, None)
    return RunData(
        run=run,
        record=run.record.load(),
        signals=signals,
        policy=load_policy(run.policy, signals.column_names) if run.policy.exists() and has_signals else None,
        tokens=count_document_tokens(run, workers) if has_signals else None,
        removed=read_table(run.removed) if run.removed.exists() else None,
        manifest=json.loads(run.manifest.read_text()) if run.manifest.exists() else None,
        quarantine=dict(quarantine_counts(run).most_common()),
        documents_in=sum(pq.read_metadata(text_path(run, name)).num_rows for name in run.shards()),
        bytes=sizes,
        groups=groups,
        ablation=json.loads(run.ablation_results.read_text()) if run.ablation_results.exists() else None,
    )


def signal_columns(signals: pa.Table) -> list[str]:
    """Numeric and boolean signal columns, built-in and from plugins (everything but id, lang, keep,
    reasons and the carried text columns)."""
    return [
        f.name
        for f in signals.schema
        if f.name not in NON_SIGNAL_COLUMNS
        and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type))
    ]


def as_float(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).cast(pa.float64()).fill_null(np.nan).to_numpy()


def source_of(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The input file (`source`) of document ids `<source>:<position>`."""
    return pc.replace_substring_regex(ids, r":\d+$", "")


def texts_of(run: RunDir, ids: set[str], limit: int = 400) -> dict[str, dict[str, Any]]:
    """Excerpts (first `limit` characters of the text later stages read), source, the record's own id
    (`source_id`) and metadata of the given document ids. Reads clean/ and signals/, not documents/."""
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    wanted = pa.array(sorted(ids))
    for name in run.shards():
        table = read_table(text_path(run, name), columns=["id", "text"])
        chosen = pc.is_in(table.column("id"), value_set=wanted)
        if not pc.any(chosen).as_py():
            continue
        table = table.filter(chosen)
        own = _own_columns(run, name, chosen)
        for i, row in enumerate(table.to_pylist()):
            text = row["text"] or ""
            found[row["id"]] = {
                "excerpt": text[:limit] + ("…" if len(text) > limit else ""),
                "source": row["id"].rpartition(":")[0],
                "source_id": own["source_id"][i],
                "metadata": own["metadata"][i],
            }
        if len(found) == len(ids):
            break
    return found


def _own_columns(run: RunDir, shard: str, chosen: pa.ChunkedArray) -> dict[str, list[Any]]:
    """source_id and metadata of the chosen rows of a shard (from signals/; None where absent)."""
    n = int(pc.sum(chosen).as_py() or 0)
    path = run.signals / shard
    names = pq.read_schema(path).names if path.exists() else []
    out = {}
    for column in ("source_id", "metadata"):
        values = read_table(path, columns=[column]).column(column).filter(chosen) if column in names else None
        out[column] = values.to_pylist() if values is not None else [None] * n
    return out


def dedup_section(run: RunLayout) -> dict[str, Any] | None:
    """Report-ready dedup figures: counts, cluster sizes, largest clusters, example pairs (or None)."""
    path = run.dedup_summary
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return {
        key: summary[key]
        for key in (
            "documents",
            "removed",
            "removed_exact",
            "removed_near",
            "removed_matching_earlier_runs",
            "survivors",
            "clusters",
            "cluster_sizes",
            "largest_clusters",
            "candidate_pairs",
            "pairs_below_threshold",
            "examples",
            "params",
            "index",
        )
    }
