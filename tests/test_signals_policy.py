"""Signals on real text and the keep/drop policy over stored signals."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import signals
from pipelines.policy import LANG_NOT_ALLOWED, LOW_LANG_CONFIDENCE, Policy, load_policy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"

ENGLISH = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair."
)
GERMAN = (
    "Die Würde des Menschen ist unantastbar. Sie zu achten und zu schützen ist Verpflichtung aller "
    "staatlichen Gewalt. Das Deutsche Volk bekennt sich darum zu unverletzlichen und unveräußerlichen "
    "Menschenrechten als Grundlage jeder menschlichen Gemeinschaft, des Friedens und der Gerechtigkeit "
    "in der Welt."
)


def test_english_signals_by_hand() -> None:
    s = signals.compute(ENGLISH)
    assert s["word_count"] == 60
    assert s["lang"] == "en" and s["lang_score"] > 0.9
    # "the" 10x, "of" 10x: Gopher's stop words
    assert s["stop_word_count"] == 20
    assert s["symbol_word_ratio"] == 0.0
    assert s["alpha_word_fraction"] == 1.0
    assert 3.0 < s["mean_word_length"] < 5.0


def test_german_uses_german_stop_words() -> None:
    s = signals.compute(GERMAN)
    assert s["lang"] == "de"
    assert s["stop_word_count"] >= 8  # die, des, ist, sie, zu, und, der, ...


def test_symbol_ratio_counts_hashes_and_ellipses() -> None:
    s = signals.compute("#tag #tag words here... and more … end")
    assert s["word_count"] == 7
    assert s["symbol_word_ratio"] == pytest.approx(4 / 7)


def test_no_words_and_language_without_stop_words() -> None:
    empty = signals.compute("!!! ??? ---")
    assert empty["word_count"] == 0 and empty["mean_word_length"] == 0.0
    # a language that stopwords-iso has no list for gets a null stop-word count, never 0
    assert signals.stop_words("xx") == frozenset()


def test_real_book_text() -> None:
    text = SHAKESPEARE.read_text()[:20_000]
    s = signals.compute(text)
    assert s["lang"] == "en"
    assert s["word_count"] > 3_000
    assert s["n_lines"] == text.count("\n") + 1


def _table(rows: list[dict]) -> pa.Table:
    columns = {"id": [str(i) for i in range(len(rows))]}
    for field in signals.SIGNAL_SCHEMA:
        if field.name != "id":
            columns[field.name] = pa.array([r.get(field.name) for r in rows], field.type)
    return pa.table(columns)


def test_policy_names_every_broken_rule() -> None:
    good = signals.compute(ENGLISH * 2)
    short = signals.compute("Buy now. Cheap pills!!! #win #win #win")
    german = signals.compute(GERMAN + " " + GERMAN)
    table = _table([good, short, german])
    policy = Policy.model_validate(
        {
            "language": {"allow": ["en"], "min_confidence": 0.5},
            "rules": [
                {"name": "too_few_words", "signal": "word_count", "min": 50},
                {"name": "symbols", "signal": "symbol_word_ratio", "max": 0.1},
                {"name": "few_stop_words", "signal": "stop_word_count", "min": 2},
            ],
        }
    )
    out = policy.apply(table)
    assert out.column("keep").to_pylist() == [True, False, False]
    reasons = out.column("reasons").to_pylist()
    assert reasons[0] == []
    assert set(reasons[1]) >= {"too_few_words", "symbols", "few_stop_words"}
    assert reasons[2] == [LANG_NOT_ALLOWED]


def test_null_signal_never_fires() -> None:
    row = signals.compute(ENGLISH * 2)
    row["stop_word_count"] = None
    policy = Policy.model_validate({"rules": [{"name": "stops", "signal": "stop_word_count", "min": 2}]})
    assert policy.apply(_table([row])).column("keep").to_pylist() == [True]


def test_low_confidence_rule() -> None:
    row = signals.compute(ENGLISH)
    row["lang_score"] = 0.2
    policy = Policy.model_validate({"language": {"min_confidence": 0.5}})
    assert policy.apply(_table([row])).column("reasons").to_pylist() == [[LOW_LANG_CONFIDENCE]]


def test_default_policy_loads_and_bad_policies_fail_clearly(tmp_path: Path) -> None:
    default = load_policy()
    assert {r.name for r in default.rules} >= {"too_few_words", "mean_word_length", "symbol_word_ratio"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, signal: no_such_signal, min: 1}\n")
    with pytest.raises(ValueError, match="unknown signal"):
        load_policy(bad)
    bad.write_text("rules:\n  - {name: x, signal: word_count}\n")
    with pytest.raises(ValueError, match="needs min or max"):
        load_policy(bad)
    bad.write_text("rules: [\n")
    with pytest.raises(ValueError, match="cannot read policy"):
        load_policy(bad)
