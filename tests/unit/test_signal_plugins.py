"""User-defined signals: loading by dotted path and entry point, probing, errors, policies that name them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipelines.quality.plugins import PluginError, load_plugins, resolve
from pipelines.quality.policy import load_policy

PLUGIN = """
import pyarrow as pa

def shouting(batch):
    texts = batch.column("clean_text").to_pylist()
    letters = [sum(c.isalpha() for c in t) for t in texts]
    upper = [sum(c.isupper() for c in t) for t in texts]
    return {"upper_ratio": [u / n if n else None for u, n in zip(upper, letters)],
            "has_price": ["$" in t for t in texts]}

def as_table(batch):
    return pa.table({"n_ids": pa.array([len(i) for i in batch.column("id").to_pylist()], pa.int32())})

def fragile(batch):
    if any("boom" in t for t in batch.column("text").to_pylist()):
        raise RuntimeError("boom")
    return {"length": [len(t) for t in batch.column("text").to_pylist()]}

def wrong_length(batch):
    return {"x": [1.0]} if batch.num_rows > 2 else {"x": [1.0] * batch.num_rows}

def clash(batch):
    return {"word_count": [1] * batch.num_rows}

def nested(batch):
    return {"tags": [[1]] * batch.num_rows}
"""


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"team_signals_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins.cache_clear()
    return name


def _batch(texts: list[str]) -> pa.Table:
    return pa.table(
        {
            "id": [f"d:{i}" for i in range(len(texts))],
            "text": texts,
            "clean_text": texts,
            "lang": ["en"] * len(texts),
        }
    )


def test_a_plugin_is_probed_for_its_columns_and_computed_per_batch(plugin_module: str) -> None:
    shouting, table = load_plugins((f"{plugin_module}:shouting", f"{plugin_module}:as_table"))
    assert shouting.columns == {"upper_ratio": pa.float64(), "has_price": pa.bool_()}
    assert table.columns == {"n_ids": pa.int64()}
    errors: Counter[str] = Counter()
    out = shouting.compute(_batch(["LOUD TEXT $5", "quiet", ""]), errors)
    assert out["upper_ratio"].to_pylist() == [1.0, 0.0, None]
    assert out["has_price"].to_pylist() == [True, False, False] and not errors


def test_a_document_the_plugin_raises_on_gets_nulls_and_is_counted(plugin_module: str) -> None:
    (fragile,) = load_plugins((f"{plugin_module}:fragile",))
    errors: Counter[str] = Counter()
    out = fragile.compute(_batch(["fine", "boom here", "also fine"]), errors)
    assert out["length"].to_pylist() == [4, None, 9]
    assert errors == {f"{plugin_module}:fragile": 1}


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("wrong_length", "has 1 values for 3 documents"),
        ("clash", "is a built-in column"),
        ("nested", "return numbers, booleans or strings"),
        ("missing", "has no 'missing'"),
    ],
)
def test_plugins_that_cannot_be_stored_fail_with_a_clear_error(
    plugin_module: str, function: str, message: str
) -> None:
    with pytest.raises(PluginError, match=message):
        (plugin,) = load_plugins((f"{plugin_module}:{function}",))
        plugin.compute(_batch(["a", "b", "c"]), Counter())


def test_unknown_modules_and_entry_points_are_named() -> None:
    with pytest.raises(PluginError, match=r"cannot import 'no_such_module_xyz'.*PYTHONPATH"):
        resolve("no_such_module_xyz:f")
    with pytest.raises(PluginError, match=r"no entry point of that name in group 'gristmill\.signals'"):
        resolve("no-such-plugin")


def test_an_entry_point_names_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_signals_mod.py").write_text(PLUGIN)
    info = tmp_path / "ep_signals-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-signals\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gristmill.signals]\nshout = ep_signals_mod:shouting\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins.cache_clear()
    (plugin,) = load_plugins(("shout",))
    assert set(plugin.columns) == {"upper_ratio", "has_price"}


def test_a_policy_rule_may_name_a_plugin_column_only_when_it_is_loaded(tmp_path: Path) -> None:
    policy = load_policy().model_dump()
    policy["rules"].append({"name": "too_loud", "signal": "upper_ratio", "max": 0.5})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    with pytest.raises(ValueError, match="unknown signal 'upper_ratio'"):
        load_policy(path)
    loaded = load_policy(path, ["upper_ratio"])
    signals = pa.table({"lang": ["en", "en"], "lang_score": [0.9, 0.9], "upper_ratio": [0.9, 0.1]})
    loaded.rules = [r for r in loaded.rules if r.name == "too_loud"]
    assert loaded.apply(signals).column("reasons").to_pylist() == [["too_loud"], []]
