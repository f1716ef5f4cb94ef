"""Keep/drop policy: YAML thresholds applied to stored signals, naming every rule a document breaks.

A rule drops a document whose `signal` is below `min` or above `max` (a null signal never breaks a rule).
`languages:` overrides a rule's bounds, or turns it off, for documents of one detected language. The
`language:` section keeps an allow-list of languages with a minimum fastText confidence. Everything is
computed column-wise with numpy, so re-applying a policy to a run's stored signals takes seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from pipelines.quality.signals import SIGNAL_NAMES

LANG_NOT_ALLOWED = "lang_not_allowed"
LOW_LANG_CONFIDENCE = "low_lang_confidence"


class Rule(BaseModel):
    """Drop a document when `signal` is below `min` or above `max` (a null signal never fires)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="reason recorded for dropped documents")
    signal: str = Field(
        description=f"one of {', '.join(SIGNAL_NAMES)}, or a column of a signal plugin (signals.plugins)"
    )
    min: float | None = Field(None, description="smallest value kept (inclusive)")
    max: float | None = Field(None, description="largest value kept (inclusive)")
    languages: list[str] | None = Field(None, description="apply only to these languages; null: to all")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Rule:
        extra = tuple((info.context or {}).get("signals", ()))
        if self.signal not in SIGNAL_NAMES and self.signal not in extra:
            raise ValueError(
                f"rule {self.name!r}: unknown signal {self.signal!r}; known: {(*SIGNAL_NAMES, *extra)} "
                "(a user-defined signal needs its plugin in signals.plugins)"
            )
        if self.min is None and self.max is None:
            raise ValueError(f"rule {self.name!r} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"rule {self.name!r}: min {self.min} is above max {self.max}")
        return self


class Override(BaseModel):
    """New bounds of a rule for one language; a bound left out keeps the rule's, `null` removes it."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> dict[str, Any]:
        """Dump only the bounds that were given, so a dumped policy loads back with the same meaning."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def bounds(self, rule: Rule) -> tuple[float | None, float | None]:
        low = self.min if "min" in self.model_fields_set else rule.min
        high = self.max if "max" in self.model_fields_set else rule.max
        return low, high


class LanguagePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow: list[str] | None = Field(None, description="ISO codes to keep; null keeps every language")
    min_confidence: float = Field(0.0, ge=0, le=1, description="smallest fastText confidence kept")


class Policy(BaseModel):
    """The whole keep/drop policy."""

    model_config = ConfigDict(extra="forbid")
    language: LanguagePolicy = LanguagePolicy()
    rules: list[Rule] = []
    languages: dict[str, dict[str, Override | Literal[False]]] = Field(
        {}, description="per language code: rule name -> new {min, max}, or off"
    )

    @model_validator(mode="after")
    def _check(self) -> Policy:
        names = [r.name for r in self.rules]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise ValueError(f"rule names must be unique; repeated: {sorted(duplicated)}")
        reserved = {LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE} & set(names)
        if reserved:
            raise ValueError(f"rule names {sorted(reserved)} are reserved for the language section")
        for lang, overrides in self.languages.items():
            unknown = set(overrides) - set(names)
            if unknown:
                raise ValueError(f"languages.{lang}: no rule named {sorted(unknown)}; rules: {names}")
        return self

    @property
    def reason_names(self) -> list[str]:
        return [LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, *(r.name for r in self.rules)]

    def failures(self, signals: pa.Table) -> dict[str, np.ndarray]:
        """For each reason, a boolean array marking the documents that break it."""
        missing = {r.signal for r in self.rules} - set(signals.column_names)
        if missing:
            raise ValueError(f"signals lack {sorted(missing)}: recompute them with this version of gristmill")
        lang = signals.column("lang").to_numpy(zero_copy_only=False)
        fails: dict[str, np.ndarray] = {}
        allow = self.language.allow
        fails[LANG_NOT_ALLOWED] = ~np.isin(lang, allow) if allow is not None else np.zeros(len(lang), bool)
        with np.errstate(invalid="ignore"):
            fails[LOW_LANG_CONFIDENCE] = _as_float(signals, "lang_score") < self.language.min_confidence
        for rule in self.rules:
            fails[rule.name] = self.rule_failures(rule, lang, _as_float(signals, rule.signal))
        return fails

    def rule_failures(self, rule: Rule, lang: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Which documents break `rule` (this policy's language overrides of the rule's name applied),
        given their languages and the rule's signal as float64 with NaN for null. A report can pass a
        copy of a rule with another bound to see what that bound would drop."""
        low, high, enabled = self.rule_bounds(rule, lang)
        with np.errstate(invalid="ignore"):
            return enabled & ((values < low) | (values > high))

    def rule_bounds(self, rule: Rule, lang: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-document (min, max, enabled) of a rule after the language overrides (NaN: no bound); a
        document whose language overrides a bound keeps the override whatever the rule's own bound."""
        n = len(lang)
        low = np.full(n, np.nan if rule.min is None else rule.min)
        high = np.full(n, np.nan if rule.max is None else rule.max)
        enabled = np.ones(n, bool) if rule.languages is None else np.isin(lang, rule.languages)
        for code, overrides in self.languages.items():
            override = overrides.get(rule.name)
            if override is None:
                continue
            mask = lang == code
            if override is False:
                enabled[mask] = False
                continue
            new_low, new_high = override.bounds(rule)
            low[mask] = np.nan if new_low is None else new_low
            high[mask] = np.nan if new_high is None else new_high
        return low, high, enabled

    def apply(self, signals: pa.Table) -> pa.Table:
        """Return `signals` with `keep` (bool) and `reasons` (list of broken rule names) columns."""
        fails = self.failures(signals)
        names = list(fails)
        matrix = np.stack([fails[n] for n in names], axis=1)
        rows, cols = np.nonzero(matrix)  # row-major: each row's reasons in rule order
        offsets = np.zeros(signals.num_rows + 1, np.int32)
        np.cumsum(np.bincount(rows, minlength=signals.num_rows), out=offsets[1:])
        reasons = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(names, pa.string()).take(pa.array(cols))
        )
        for column in ("keep", "reasons"):
            if column in signals.column_names:
                signals = signals.drop_columns([column])
        keep = pa.array(~matrix.any(axis=1), pa.bool_())
        return signals.append_column("keep", keep).append_column("reasons", reasons)


def _as_float(table: pa.Table, column: str) -> np.ndarray:
    """A numeric column as float64, with nulls as NaN (so comparisons with NaN never fire)."""
    return table.column(column).cast(pa.float64()).fill_null(np.nan).to_numpy()


def default_policy_path() -> Path:
    return Path(str(resources.files("pipelines") / "resources" / "policy.yaml"))


def load_policy(path: str | Path | None = None, signals: Iterable[str] = ()) -> Policy:
    """Load and validate a policy YAML (the bundled default when `path` is None); `signals` names the
    columns of signal plugins that rules may use besides the built-in signals."""
    path = Path(path) if path else default_policy_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read policy {path}: {exc}") from exc
    try:
        return Policy.model_validate(data, context={"signals": tuple(signals)})
    except ValidationError as exc:
        raise ValueError(f"invalid policy {path}:\n{exc}") from exc


def policy_sha256(path: str | Path | None = None) -> str:
    return hashlib.sha256(Path(path or default_policy_path()).read_bytes()).hexdigest()
