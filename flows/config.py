"""The whole configuration file: the corpus build (`pipelines.config.RunConfig`) plus the sections only
the flow and the launcher read (Prefect retries, the deployment, training); CLI flags override it."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipelines.config import RunConfig, Section
from pipelines.errors import validation_message
from training.config import TrainConfig


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


class Config(RunConfig):
    """A config file: the corpus build and the sections of the flow, the deployment and training."""

    stages: StagesConfig = StagesConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    train: TrainConfig = TrainConfig()


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


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> Config:
    """Read a YAML config (paths in it are relative to the file; without one, `base`, e.g. the config
    run.json recorded), apply dotted overrides, validate."""
    data: dict[str, Any] = copy.deepcopy(base or {})
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
        return Config.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise SystemExit(f"error: invalid configuration{where}: {validation_message(exc)}") from exc


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


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, dict) and "uri" in value:  # an input with its own settings
        return {**value, "uri": _resolve(value["uri"], base)}
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


def describe(model: type = Config, indent: int = 0) -> str:
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
