"""Token shards and _manifest.json, per docs/shard-format.md (the contract training reads).

The tokenize stage runs in three steps:

1. plan (one process): walk the selected documents (the final corpus, or another `corpus.Selection`)
   in input order and cut each split's documents into shards of about `shard_target_tokens` tokens,
   estimated from UTF-8 text bytes and the tokenizer's measured bytes per token (tokenizer.meta.json).
   A shard is a list of row ranges of clean/ (or documents/) files; the plan is written to
   tokens/_plan.json.
2. tokenize (parallel, `pipelines.executor.run_shards`): one task per planned shard reads its rows,
   encodes them and writes `<split>-NNNNN.parquet` atomically; that file is the task's completion
   marker, so a resumed stage only tokenizes the shards that are missing.
3. manifest (one process): documents, tokens, bytes and sha256 of every shard, read back from the files,
   written last and atomically to tokens/_manifest.json.

Everything the shards and the manifest hold is a function of the corpus, the tokenizer and the config,
never of which worker or which attempt wrote a shard, so an interrupted and resumed run gives the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import RunConfig, TokenShardsConfig, config_sha256, lineage_config
from pipelines.corpus import FinalCorpusSplits, Selection
from pipelines.exec.runner import run_shards
from pipelines.exec.step import ShardStep
from pipelines.quality.policy import policy_sha256
from pipelines.run import RunDir
from pipelines.run.files import (
    atomic_path,
    parquet_file,
    parquet_writer,
    read_table,
    sha256_file,
    write_json,
    write_parquet,
)
from pipelines.run.layout import MANIFEST_NAME, RunLayout, token_shard_name
from tokenizer import EOT, encode_ids, load

log = logging.getLogger("gristmill")

FORMAT = "gristmill.tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
PLAN_VERSION = 1
PLAN_NAME = "_plan.json"  # in the shards' folder, beside MANIFEST_NAME
DEFAULT_BYTES_PER_TOKEN = 4.0  # planning estimate when tokenizer.meta.json has no measurement
ENCODE_ROWS = 512  # documents per encode task (encode_ids bounds each call by characters)
ENCODE_CHARS = 32 << 20  # and at most about this many characters (long documents: fewer of them)


def token_dtype(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 65_536 else pa.uint32()


def shard_schema(vocab_size: int) -> pa.Schema:
    return pa.schema(
        [("id", pa.string()), ("input_ids", pa.list_(token_dtype(vocab_size))), ("n_tokens", pa.int32())]
    )


# ---------------------------------------------------------------------------------------------- plan


def final_selection(run: RunLayout, config: TokenShardsConfig) -> Selection:
    """What `gristmill tokenize` writes: the final corpus in its train/validation split."""
    return FinalCorpusSplits(run, config.validation_fraction)


def _text_bytes(path: Path) -> np.ndarray:
    """UTF-8 bytes of every row's text of a Parquet text file."""
    sizes = [
        pc.binary_length(batch.column("text").cast(pa.large_binary())).fill_null(0).to_numpy()
        for batch in parquet_file(path).iter_batches(batch_size=4096, columns=["text"])
    ]
    return np.concatenate(sizes) if sizes else np.zeros(0, np.int64)


def plan_shards(
    run: RunLayout, config: TokenShardsConfig, bytes_per_token: float, selection: Selection | None = None
) -> list[dict[str, Any]]:
    """Cut each split's selected documents (default: the final corpus), in input order, into shards of
    about shard_target_tokens tokens.

    A shard: {"split", "index", "documents", "text_bytes", "segments": [[file, first_row, stop_row]]},
    where a segment's rows of the file are scanned and the rows of the shard's split kept.
    """
    target_bytes = config.shard_target_tokens * bytes_per_token
    selection = selection or final_selection(run, config)
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    open_: dict[str, dict[str, Any] | None] = {s: None for s in SPLITS}
    for name in run.shards():
        files = {split: selection.text_file(name, split) for split in SPLITS}
        sizes = {path: _text_bytes(path) for path in set(files.values())}
        row = 0
        pf = parquet_file(files[SPLITS[0]])
        for batch in pf.iter_batches(batch_size=4096, columns=["id"]):
            for j, split in enumerate(selection.splits(name, row, batch.column("id"))):
                if split is None:
                    continue
                shard = open_[split]
                if shard is None:
                    shard = {
                        "split": split,
                        "index": len(shards[split]),
                        "documents": 0,
                        "text_bytes": 0,
                        "segments": [],
                    }
                    shards[split].append(shard)
                    open_[split] = shard
                segments = shard["segments"]
                if segments and segments[-1][0] == name:
                    segments[-1][2] = row + j + 1
                else:
                    segments.append([name, row + j, row + j + 1])
                shard["documents"] += 1
                shard["text_bytes"] += int(sizes[files[split]][row + j])
                if shard["text_bytes"] >= target_bytes:
                    open_[split] = None
            row += batch.num_rows
    return [shard for split in SPLITS for shard in shards[split]]


def token_shard_file(shard: dict[str, Any]) -> str:
    return token_shard_name(shard["split"], shard["index"])


# ----------------------------------------------------------------------------------- tokenize (task)

_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: Path) -> Any:
    """The run's tokenizer, loaded once per worker process (literal special-token text stays text)."""
    key = str(path)
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = load(path, literal_special_tokens=True)
    return _TOKENIZERS[key]


class TokenizeStep(ShardStep):
    """Tokenize planned shard `i` into <folder>/<split>-NNNNN.parquet (folder: tokens/ by default)."""

    label = "tokenize"

    def __init__(
        self,
        run_root: str,
        config: TokenShardsConfig,
        folder: str | None = None,
        selection: Selection | None = None,
    ) -> None:
        super().__init__(run_root)
        if folder is not None and Path(folder).is_relative_to(run_root):  # so it moves with run_root
            folder = Path(folder).relative_to(run_root).as_posix()
        if isinstance(selection, FinalCorpusSplits):  # made again from run_root where the shard runs
            selection = None
        self.config, self.folder, self.selection = config, folder, selection
        self._plan: list[dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_plan": None}

    @property
    def out(self) -> Path:
        return self.run.root / self.folder if self.folder else self.run.tokens

    def plan(self) -> list[dict[str, Any]]:
        if self._plan is None:
            self._plan = json.loads((self.out / PLAN_NAME).read_text())["shards"]
        return self._plan

    def output(self, index: int) -> Path:
        return self.out / token_shard_file(self.plan()[index])

    def plan_files(self) -> list[str]:
        files = ["tokenizer/tokenizer.json", "dedup/removed.parquet"]
        if self.out.is_relative_to(self.run.root):
            files.append((self.out / PLAN_NAME).relative_to(self.run.root).as_posix())
        return files

    def reads(self, index: int) -> list[str] | None:
        """The final corpus's text and signals of the shard's segments (None for another selection:
        the node's mirror is brought up to date instead)."""
        if self.selection is not None:
            return None
        names = dict.fromkeys(name for name, _, _ in self.plan()[index]["segments"])
        return [path for name in names for path in (f"clean/{name}|documents/{name}", f"signals/{name}")]

    def process(self, index: int) -> dict[str, int]:
        run, config, shard = self.run, self.config, self.plan()[index]
        tokenizer = _tokenizer(run.tokenizer_json)
        schema = shard_schema(tokenizer.get_vocab_size())
        dtype = schema.field("input_ids").type.value_type.to_pandas_dtype()
        selection = self.selection or final_selection(run, config)
        with atomic_path(self.output(index)) as tmp:
            writer = _RowGroups(tmp, schema, config)
            with writer, ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder:
                # encode batch k+1 (tokenizers releases the GIL) while batch k is converted and written
                inflight: tuple[list[str], Future[Any]] | None = None
                for ids, texts in _documents(run, shard, selection):
                    future = encoder.submit(encode_ids, tokenizer, texts, dtype)
                    if inflight is not None:
                        writer.add(inflight[0], inflight[1].result())
                        self.advance(len(inflight[0]))
                    inflight = (ids, future)
                if inflight is not None:
                    writer.add(inflight[0], inflight[1].result())
            if writer.documents != shard["documents"]:
                raise RuntimeError(
                    f"tokenize: shard {token_shard_file(shard)} planned {shard['documents']} documents, "
                    f"read {writer.documents}"
                )
        return {"documents": writer.documents, "tokens": writer.tokens}


class _RowGroups:
    """A shard's Parquet writer: a row group is closed at row_group_rows documents or row_group_tokens."""

    def __init__(self, path: Path, schema: pa.Schema, config: TokenShardsConfig) -> None:
        self.schema, self.config = schema, config
        self.dtype = schema.field("input_ids").type.value_type
        self.writer = parquet_writer(path, schema)
        self.ids: list[str] = []
        self.token_lists: list[np.ndarray] = []
        self.group_tokens = self.documents = self.tokens = 0

    def add(self, ids: list[str], token_lists: list[np.ndarray]) -> None:
        for doc_id, token_ids in zip(ids, token_lists, strict=True):
            self.ids.append(doc_id)
            self.token_lists.append(token_ids)
            self.group_tokens += len(token_ids)
            self.documents += 1
            self.tokens += len(token_ids)
            if (
                len(self.ids) >= self.config.row_group_rows
                or self.group_tokens >= self.config.row_group_tokens
            ):
                self.flush()

    def flush(self) -> None:
        if self.ids:
            self.writer.write_table(_table(self.ids, self.token_lists, self.schema, self.dtype))
        self.ids, self.token_lists, self.group_tokens = [], [], 0

    def __enter__(self) -> _RowGroups:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.flush()
        self.writer.close()


def _documents(run: RunLayout, shard: dict[str, Any], selection: Selection) -> Any:
    """(ids, texts) batches of the shard's documents in input order, each at most ENCODE_ROWS documents
    and ENCODE_CHARS characters (or one document)."""
    ids: list[str] = []
    texts: list[str] = []
    for name, first, stop in shard["segments"]:
        pf = parquet_file(selection.text_file(name, shard["split"]))
        row = 0
        groups = []
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < stop and row + n > first:
                groups.append((g, row))
            row += n
        for g, group_first in groups:
            table = pf.read_row_group(g, columns=["id", "text"])
            lo, hi = max(first - group_first, 0), min(stop - group_first, table.num_rows)
            table = table.slice(lo, hi - lo)
            splits = selection.splits(name, group_first + lo, table.column("id"))
            mask = pa.array([s == shard["split"] for s in splits])
            table = table.filter(mask)
            ids += table.column("id").to_pylist()
            texts += [t or "" for t in table.column("text").to_pylist()]
            while (n := _batch_size(texts)) < len(texts):
                yield ids[:n], texts[:n]
                ids, texts = ids[n:], texts[n:]
    if ids:
        yield ids, texts


def _batch_size(texts: list[str]) -> int:
    """How many of `texts` make the next batch: ENCODE_ROWS, or fewer when they reach ENCODE_CHARS; all
    of them when they fit."""
    chars = 0
    for n, text in enumerate(texts[:ENCODE_ROWS], 1):
        chars += len(text)
        if chars >= ENCODE_CHARS:
            return n
    return ENCODE_ROWS if len(texts) >= ENCODE_ROWS else len(texts)


def _table(ids: list[str], token_lists: list[np.ndarray], schema: pa.Schema, dtype: pa.DataType) -> pa.Table:
    lengths = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
    offsets = np.zeros(len(token_lists) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    np_dtype = dtype.to_pandas_dtype()  # numpy.uint16 or numpy.uint32
    values = pa.array(np.concatenate(token_lists) if token_lists else np.empty(0, np_dtype), dtype)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.ListArray.from_arrays(pa.array(offsets), values, type=schema.field("input_ids").type),
            pa.array(lengths.astype(np.int32), pa.int32()),
        ],
        schema=schema,
    )


# ------------------------------------------------------------------------------------------- stage


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    """Write token shards in parallel and the manifest last; an interrupted attempt resumes from the
    shards it finished."""
    start = time.perf_counter()
    manifest = write_token_shards(run, config.tokenize, lineage(run, config), config.executor.workers, resume)
    seconds = max(time.perf_counter() - start, 1e-9)
    totals = manifest["totals"]
    return {
        "documents": totals["documents"],
        "tokens": totals["tokens"],
        "shards": sum(len(s["shards"]) for s in manifest["splits"].values()),
        "bytes": totals["bytes"],
        "tokens_per_second": round(totals["tokens"] / seconds),
    }


def lineage(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """What the manifest records of where the corpus came from: the run's id and inputs (run.json), the
    hashes of the config and of the policy the signals stage used.

    The config hash covers only the corpus-shaping sections, so the same corpus built locally or on Ray,
    by hand or on a schedule, into a folder or a bucket, has the same manifest."""
    record = run.record.load()
    return {
        "run_id": record.get("run_id", run.root.name),
        "config_sha256": config_sha256(lineage_config(config.model_dump(mode="json"))),
        "policy_sha256": policy_sha256(run.policy if run.policy.exists() else None),
        "inputs": record.get("inputs", []),
    }


def write_token_shards(
    run: RunDir,
    config: TokenShardsConfig,
    lineage: dict[str, Any],
    workers: int = 0,
    resume: bool = False,
    selection: Selection | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Tokenize the selected documents of a run (default: the final corpus) into `folder` (default:
    tokens/) and write its _manifest.json last.

    With `resume`, shards already written under the same plan (same selection, tokenizer and settings)
    are kept and only the missing ones are tokenized; otherwise the folder's shards are deleted first.
    """
    if not run.tokenizer_json.exists():
        raise FileNotFoundError(
            f"{run.tokenizer_json}: train the tokenizer first (`gristmill tokenizer train`)"
        )
    selection = selection or final_selection(run, config)
    out = folder or run.tokens
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # first: readers trust only the manifest
    bpt = _planned_bytes_per_token(run)
    plan = {
        "plan_version": PLAN_VERSION,
        "tokenizer_sha256": sha256_file(run.tokenizer_json),
        "config": config.model_dump(),
        "selection": selection.key,
        "bytes_per_token": bpt,
        "shards": plan_shards(run, config, bpt, selection),
    }
    plan_path = out / PLAN_NAME
    same_plan = plan_path.exists() and json.loads(plan_path.read_text()) == plan
    if not (resume and same_plan):
        for stale in out.glob("*.parquet"):
            stale.unlink()
        write_json(plan_path, plan)
    start = time.perf_counter()
    step = TokenizeStep(str(run.root), config, str(out), selection)
    ran = run_shards("tokenize", run.synced(step), len(plan["shards"]), workers)
    write_sources(run, out, plan["shards"])
    manifest = build_manifest(run, config, lineage, plan["shards"], out)
    write_json(out / MANIFEST_NAME, manifest)  # last
    log.info(
        "tokenize: %d documents, %d tokens in %d shards (%d tokenized now) in %.1fs",
        manifest["totals"]["documents"],
        manifest["totals"]["tokens"],
        len(plan["shards"]),
        ran,
        time.perf_counter() - start,
    )
    return manifest


def _planned_bytes_per_token(run: RunLayout) -> float:
    if run.tokenizer_meta.exists():
        value = json.loads(run.tokenizer_meta.read_text()).get("bytes_per_token")
        if value:
            return float(value)
    return DEFAULT_BYTES_PER_TOKEN


def build_manifest(
    run: RunLayout,
    config: TokenShardsConfig,
    lineage: dict[str, Any],
    shards: list[dict[str, Any]],
    folder: Path | None = None,
) -> dict[str, Any]:
    """_manifest.json of the shards in `folder` (default: tokens/) from the plan and the shard files
    (counts from the files, not the plan)."""
    out = folder or run.tokens
    tokenizer = load(run.tokenizer_json)
    vocab_size = tokenizer.get_vocab_size()
    splits: dict[str, dict[str, Any]] = {s: {"documents": 0, "tokens": 0, "shards": []} for s in SPLITS}
    for shard in shards:
        path = out / token_shard_file(shard)
        n_tokens = read_table(path, columns=["n_tokens"]).column("n_tokens")
        entry = {
            "path": path.name,
            "documents": len(n_tokens),
            "tokens": int(pc.sum(n_tokens).as_py() or 0),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        split = splits[shard["split"]]
        split["shards"].append(entry)
        split["documents"] += entry["documents"]
        split["tokens"] += entry["tokens"]
    special = {
        tok.content: i for i, tok in sorted(tokenizer.get_added_tokens_decoder().items()) if tok.special
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": str(token_dtype(vocab_size)),
        "tokenizer": {
            "path": Path(os.path.relpath(run.tokenizer_json, out)).as_posix(),
            "sha256": sha256_file(run.tokenizer_json),
            "vocab_size": vocab_size,
            "special_tokens": special,
            "eot_id": tokenizer.token_to_id(EOT),
        },
        "splits": splits,
        "totals": {
            "documents": sum(s["documents"] for s in splits.values()),
            "tokens": sum(s["tokens"] for s in splits.values()),
            "bytes": sum(sh["bytes"] for s in splits.values() for sh in s["shards"]),
        },
        "split_rule": {
            "validation_fraction": config.validation_fraction,
            "method": "sha256('split:' + id) as a fraction of 2**64 < validation_fraction",
        },
        "lineage": lineage,
    }


SOURCES_NAME = "_sources.parquet"
SOURCES_SCHEMA = pa.schema(
    [("id", pa.string()), ("source_id", pa.string()), ("shard", pa.string()), ("row", pa.int32())]
)


def write_sources(run: RunLayout, folder: Path, shards: list[dict[str, Any]]) -> None:
    """`_sources.parquet` beside the shards: every token row's document id, the record's own id
    (signals/ carries it from documents/) and where the row is (shard file, row), so a token row joins
    back to the user's input by their own id. Written before the manifest."""
    rows = []
    for shard in shards:
        name = token_shard_file(shard)
        ids = read_table(folder / name, columns=["id"]).column("id").combine_chunks()
        rows.append(pa.table({"id": ids, "shard": pa.array([name] * len(ids), pa.string()),
                              "row": pa.array(np.arange(len(ids), dtype=np.int32))}))  # fmt: skip
    tokens = pa.concat_tables(rows) if rows else SOURCES_SCHEMA.empty_table().drop_columns(["source_id"])
    own = [
        read_table(path, columns=["id", "source_id"])
        for path in sorted(run.signals.glob("[0-9]*.parquet"))
        if "source_id" in parquet_file(path).schema_arrow.names
    ]
    if own:
        table = tokens.join(pa.concat_tables(own), "id", join_type="left outer")
    else:
        table = tokens.append_column("source_id", pa.nulls(tokens.num_rows, pa.string()))
    table = table.sort_by([("shard", "ascending"), ("row", "ascending")]).select(SOURCES_SCHEMA.names)
    write_parquet(table.cast(SOURCES_SCHEMA), folder / SOURCES_NAME)
