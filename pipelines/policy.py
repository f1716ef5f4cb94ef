"""Keep/drop policy: YAML thresholds applied to stored signals, naming every rule a document breaks."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.signals import SIGNAL_NAMES

LANG_NOT_ALLOWED = "lang_not_allowed"
LOW_LANG_CONFIDENCE = "low_lang_confidence"


class Rule(BaseModel):
    """Drop a document when `signal` is below `min` or above `max` (a null signal never fires)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="reason recorded for dropped documents")
    signal: str = Field(description=f"one of {', '.join(SIGNAL_NAMES)}")
    min: float | None = Field(None, description="smallest value kept (inclusive)")
    max: float | None = Field(None, description="largest value kept (inclusive)")

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if self.signal not in SIGNAL_NAMES:
            raise ValueError(f"rule {self.name!r}: unknown signal {self.signal!r}; known: {SIGNAL_NAMES}")
        if self.min is None and self.max is None:
            raise ValueError(f"rule {self.name!r} needs min or max")
        return self


class LanguagePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow: list[str] | None = Field(None, description="ISO codes to keep; null keeps every language")
    min_confidence: float = Field(0.0, ge=0, le=1, description="smallest fastText confidence kept")


class Policy(BaseModel):
    """The whole keep/drop policy."""

    model_config = ConfigDict(extra="forbid")
    language: LanguagePolicy = LanguagePolicy()
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        names = [r.name for r in self.rules]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise ValueError(f"rule names must be unique; repeated: {sorted(duplicated)}")
        return self

    @property
    def reason_names(self) -> list[str]:
        return [LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, *(r.name for r in self.rules)]

    def failures(self, signals: pa.Table) -> dict[str, np.ndarray]:
        """For each reason, a boolean array marking the documents that break it."""
        lang = signals.column("lang").to_numpy(zero_copy_only=False)
        fails: dict[str, np.ndarray] = {}
        allow = self.language.allow
        fails[LANG_NOT_ALLOWED] = ~np.isin(lang, allow) if allow is not None else np.zeros(len(lang), bool)
        fails[LOW_LANG_CONFIDENCE] = _as_float(signals, "lang_score") < self.language.min_confidence
        for rule in self.rules:
            values = _as_float(signals, rule.signal)
            broken = np.zeros(len(values), bool)
            with np.errstate(invalid="ignore"):
                if rule.min is not None:
                    broken |= values < rule.min
                if rule.max is not None:
                    broken |= values > rule.max
            fails[rule.name] = broken
        return fails

    def apply(self, signals: pa.Table) -> pa.Table:
        """Return `signals` with `keep` (bool) and `reasons` (list of broken rule names) columns."""
        fails = self.failures(signals)
        names = list(fails)
        matrix = (
            np.stack([fails[n] for n in names], axis=1) if names else np.zeros((signals.num_rows, 0), bool)
        )
        reasons = [[names[j] for j in np.flatnonzero(row)] for row in matrix]
        keep = ~matrix.any(axis=1)
        for column in ("keep", "reasons"):
            if column in signals.column_names:
                signals = signals.drop_columns([column])
        return signals.append_column("keep", pa.array(keep, pa.bool_())).append_column(
            "reasons", pa.array(reasons, pa.list_(pa.string()))
        )


def _as_float(table: pa.Table, column: str) -> np.ndarray:
    """A numeric column as float64, with nulls as NaN (so comparisons with NaN never fire)."""
    return table.column(column).cast(pa.float64()).fill_null(np.nan).to_numpy()


def default_policy_path() -> Path:
    return Path(str(resources.files("pipelines") / "resources" / "policy.yaml"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy YAML (the bundled default when `path` is None)."""
    path = Path(path) if path else default_policy_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read policy {path}: {exc}") from exc
    return Policy.model_validate(data)


def policy_sha256(path: str | Path | None = None) -> str:
    return hashlib.sha256(Path(path or default_policy_path()).read_bytes()).hexdigest()
