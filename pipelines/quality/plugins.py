"""User-defined signals: functions outside gristmill that add columns to signals/.

`signals.plugins` in the run config names each plugin by a dotted path, `package.module:function`, or by
the name of an entry point in the group `gristmill.signals` (declared by an installed package). A plugin
is called with a batch of documents, a pyarrow Table with the columns

    id          gristmill's document id
    text        the raw text
    clean_text  the text after C4's line cleaning (what later stages read)
    lang        the detected language

and returns one value per document for each of its signals: a dict of column name -> list, numpy array or
pyarrow array, or a pyarrow Table. Values are numbers, booleans or strings; null means undefined (and
never breaks a rule). Column names and types are taken from a first call on two probe documents, so the
policy can name the plugin's columns before any shard runs. Policies, reports, histograms, threshold
curves and what-if treat plugin columns like the built-in ones.

A plugin that raises on a batch is called again document by document; a document it still raises on
gets nulls in that plugin's columns and is counted (`plugin_errors` in the signals summary), so one bad
document never stops a run.
"""

from __future__ import annotations

import importlib
import keyword
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import pyarrow as pa

from pipelines.config import SignalsConfig
from pipelines.quality.policy import Policy, load_policy
from pipelines.quality.signals import SIGNALS

log = logging.getLogger("gristmill")

ENTRY_POINT_GROUP = "gristmill.signals"
RESERVED = frozenset(
    {"id", "text", "clean_text", "keep", "reasons", "source", "source_id", "metadata", "url"}
)
PROBE = pa.table(
    {
        "id": ["probe:0", "probe:1"],
        "text": ["A probe document.\nIt has two lines.", "Ein zweites Dokument, auf Deutsch."],
        "clean_text": ["A probe document.\nIt has two lines.", "Ein zweites Dokument, auf Deutsch."],
        "lang": ["en", "de"],
    }
)
PluginResult = dict[str, Any] | pa.Table | pa.RecordBatch


class PluginError(ValueError):
    """A plugin cannot be loaded, or returns columns that cannot be stored."""


@dataclass(frozen=True)
class SignalPlugin:
    """A loaded plugin: what the config named, the function, and its columns with their Arrow types."""

    spec: str
    function: Callable[[pa.Table], PluginResult]
    columns: dict[str, pa.DataType]

    def compute(self, batch: pa.Table, errors: Counter[str]) -> dict[str, pa.Array]:
        """The plugin's columns for `batch`, one value per row (null where it raised; counted in `errors`)."""
        try:
            return self._columns(self.function(batch), batch.num_rows)
        except PluginError:
            raise
        except Exception as exc:
            log.warning("signal plugin %s failed on a batch (%s); calling it per document", self.spec, exc)
        rows: list[dict[str, pa.Array] | None] = []
        for i in range(batch.num_rows):
            try:
                rows.append(self._columns(self.function(batch.slice(i, 1)), 1))
            except PluginError:
                raise
            except Exception as exc:
                if not errors[self.spec]:
                    log.warning("signal plugin %s failed on %s: %r", self.spec, batch["id"][i], exc)
                errors[self.spec] += 1
                rows.append(None)
        return {
            name: pa.concat_arrays([r[name] if r else pa.nulls(1, kind) for r in rows]).cast(kind)
            if rows
            else pa.array([], kind)
            for name, kind in self.columns.items()
        }

    def _columns(self, result: PluginResult, rows: int) -> dict[str, pa.Array]:
        found = _as_arrays(self.spec, result, rows)
        if set(found) != set(self.columns):
            raise PluginError(
                f"signal plugin {self.spec} returned columns {sorted(found)}, not {sorted(self.columns)} "
                "as on its first call (a plugin returns the same columns every time)"
            )
        out = {}
        for name, kind in self.columns.items():
            try:
                out[name] = found[name].cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PluginError(
                    f"signal plugin {self.spec}: column {name!r} holds {found[name].type}, not {kind}: {exc}"
                ) from exc
        return out


def _as_arrays(spec: str, result: PluginResult, rows: int) -> dict[str, pa.Array]:
    """A plugin's return value as named Arrow arrays of `rows` values each."""
    if isinstance(result, pa.Table | pa.RecordBatch):
        result = {name: result.column(name) for name in result.column_names}
    if not isinstance(result, dict):
        raise PluginError(
            f"signal plugin {spec} returned {type(result).__name__}; return a dict of column -> values or a "
            "pyarrow Table"
        )
    out = {}
    for name, values in result.items():
        array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else pa.array(values)
        if len(array) != rows:
            raise PluginError(
                f"signal plugin {spec}: column {name!r} has {len(array)} values for {rows} documents"
            )
        out[str(name)] = array
    return out


def resolve(spec: str) -> Callable[[pa.Table], PluginResult]:
    """The function a plugin spec names: `module:function` (or `module.function`), else an entry point."""
    if ":" in spec or "." in spec:
        module_name, _, attribute = spec.partition(":") if ":" in spec else spec.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(
                f"signal plugin {spec}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?"
            ) from exc
        function = module
        for part in attribute.split("."):
            function = getattr(function, part, None)
            if function is None:
                raise PluginError(f"signal plugin {spec}: {module_name!r} has no {attribute!r}")
    else:
        found = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == spec]
        if not found:
            known = sorted(e.name for e in entry_points(group=ENTRY_POINT_GROUP))
            raise PluginError(
                f"signal plugin {spec!r}: no entry point of that name in group {ENTRY_POINT_GROUP!r} "
                f"(installed: {known or 'none'}); name a function as module:function"
            )
        function = found[0].load()
    if not callable(function):
        raise PluginError(f"signal plugin {spec}: {function!r} is not callable")
    return function


def _probe_types(spec: str, function: Callable[[pa.Table], PluginResult]) -> dict[str, pa.DataType]:
    try:
        result = function(PROBE)
    except Exception as exc:
        raise PluginError(f"signal plugin {spec} failed on its probe documents: {exc!r}") from exc
    columns = {}
    for name, array in _as_arrays(spec, result, PROBE.num_rows).items():
        kind = array.type
        if pa.types.is_null(kind):
            kind = pa.float64()  # undefined on both probe documents: numbers are the common case
        elif pa.types.is_integer(kind):
            kind = pa.int64()
        elif pa.types.is_floating(kind):
            kind = pa.float64()
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            kind = pa.string()
        elif not pa.types.is_boolean(kind):
            raise PluginError(
                f"signal plugin {spec}: column {name!r} is {kind}; return numbers, booleans or strings"
            )
        columns[name] = kind
    if not columns:
        raise PluginError(f"signal plugin {spec} returned no columns")
    return columns


@lru_cache(maxsize=32)
def load_plugins(specs: tuple[str, ...]) -> tuple[SignalPlugin, ...]:
    """Import every plugin once per process (forked workers inherit them; a Ray worker imports them by
    path), probe its columns and check that no name is taken twice."""
    plugins, owner = [], {}
    for spec in specs:
        function = resolve(spec)
        columns = _probe_types(spec, function)
        for name in columns:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise PluginError(f"signal plugin {spec}: column name {name!r} is not an identifier")
            if name in SIGNALS or name in RESERVED:
                raise PluginError(f"signal plugin {spec}: column {name!r} is a built-in column; rename it")
            if name in owner:
                raise PluginError(f"signal plugins {owner[name]} and {spec} both return column {name!r}")
            owner[name] = spec
        plugins.append(SignalPlugin(spec, function, columns))
    return tuple(plugins)


def plugin_columns(plugins: Iterable[SignalPlugin]) -> dict[str, pa.DataType]:
    return {name: kind for plugin in plugins for name, kind in plugin.columns.items()}


def load_run_policy(settings: SignalsConfig) -> Policy:
    """The policy of a run's signals settings, its rules allowed to name the columns of the configured
    plugins (importing and probing them: a missing plugin or a rule on an unknown signal fails here)."""
    return load_policy(settings.policy, plugin_columns(load_plugins(tuple(settings.plugins))))
