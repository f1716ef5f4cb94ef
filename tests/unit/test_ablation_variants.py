"""Corpus variants of an ablation: which documents each variant holds, which text, and what is held out
of all of them (pipelines/ablation.py), on a run directory written by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.ablation import (
    EvalSet,
    VariantSelection,
    exclusions,
    heldout_set,
    read_eval_sets,
    rule_group,
    variant,
)
from pipelines.corpus import split_of
from pipelines.quality.policy import load_policy
from pipelines.run.layout import RunLayout

POLICY = load_policy()
# id -> (raw text, cleaned text, keep, reasons)
DOCS = {
    "a:1": ("Menu\nA long good article.", "A long good article.", True, []),
    "a:2": ("A copy of the good article.", "A copy of the good article.", True, []),  # removed by dedup
    "a:3": ("spam spam spam", "spam spam spam", False, ["gopher_dup_line_fraction", "gopher_top_2gram"]),
    "a:4": ("short", "short", False, ["c4_min_sentences"]),
    "a:5": ("short and repeated", "short and repeated", False, ["c4_min_sentences", "gopher_min_words"]),
    "a:6": ("Menu\nText an evaluation file holds.", "Text an  evaluation file\nholds.", True, []),
    "a:7": ("Another kept article.", "Another kept article.", True, []),
}


def _run(root: Path) -> RunLayout:
    run = RunLayout(root)
    for folder in (run.documents, run.clean, run.signals, run.dedup):
        folder.mkdir(parents=True)
    ids = list(DOCS)
    raw, clean, keep, reasons = (list(col) for col in zip(*DOCS.values(), strict=True))
    documents = pa.table({"id": ids, "source": ["a"] * len(ids), "url": [None] * len(ids), "text": raw})
    pq.write_table(documents, run.documents / "00000.parquet")
    pq.write_table(pa.table({"id": ids, "text": clean}), run.clean / "00000.parquet")
    signals = pa.table({"id": ids, "keep": keep, "reasons": pa.array(reasons, pa.list_(pa.string()))})
    pq.write_table(signals, run.signals / "00000.parquet")
    removed = pa.table({"id": ["a:2"], "duplicate_of": ["a:1"], "similarity": [0.9]})
    pq.write_table(removed, run.removed)
    return run


def _ids(ids: list[str] | tuple[str, ...]) -> pa.Array:
    return pa.array(list(ids), pa.string())


def _members(
    run: RunLayout, name: str, heldout: tuple[str, ...] = (), excluded: tuple[str, ...] = ()
) -> dict[str, str]:
    """The split of every document the variant holds."""
    selection = VariantSelection(run, variant(name, POLICY), _ids(heldout), _ids(excluded))
    splits = selection.splits("00000.parquet", 0, _ids(list(DOCS)))
    return {i: s for i, s in zip(DOCS, splits, strict=True) if s}


def test_variants_select_from_the_stored_keep_reasons_and_dedup(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    assert set(_members(run, "raw")) == set(DOCS)
    assert set(_members(run, "policy")) == {"a:1", "a:2", "a:6", "a:7"}
    assert set(_members(run, "policy+dedup")) == {"a:1", "a:6", "a:7"}
    assert set(_members(run, "-dedup")) == set(_members(run, "policy"))
    assert set(_members(run, "-cleaning")) == set(_members(run, "policy+dedup"))
    # a:4 failed only a c4 rule; a:5 also failed a Gopher rule, so it stays out
    assert set(_members(run, "-c4")) == {"a:1", "a:6", "a:7", "a:4"}
    assert set(_members(run, "-gopher_repetition")) == {"a:1", "a:6", "a:7", "a:3"}
    assert set(_members(run, "-c4_min_sentences")) == set(_members(run, "-c4"))


def test_held_out_documents_are_validation_in_every_variant_and_excluded_ones_nowhere(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    for name in ("raw", "policy", "policy+dedup", "-c4"):
        members = _members(run, name, heldout=("a:7",), excluded=("a:7", "a:3", "a:1"))
        assert members["a:7"] == "validation"
        assert "a:1" not in members and "a:3" not in members
        assert {s for i, s in members.items() if i != "a:7"} == {"train"}


def test_text_of_each_variant(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")

    def text_file(name: str, split: str) -> Path:
        selection = VariantSelection(run, variant(name, POLICY), _ids([]), _ids([]))
        return selection.text_file("00000.parquet", split)

    assert text_file("raw", "train") == run.documents / "00000.parquet"
    assert text_file("-cleaning", "train") == run.documents / "00000.parquet"
    assert text_file("policy+dedup", "train") == run.clean / "00000.parquet"
    for name in ("raw", "-cleaning", "policy"):
        assert text_file(name, "validation") == run.clean / "00000.parquet"  # the same held-out text


def test_rule_groups_of_the_default_policy() -> None:
    repetition = rule_group("gopher_repetition", POLICY)
    assert {"gopher_dup_line_fraction", "gopher_top_2gram", "gopher_dup_10gram"} <= repetition
    assert not repetition & rule_group("gopher_quality", POLICY)
    assert "gopher_min_words" in rule_group("gopher_quality", POLICY)
    assert rule_group("gopher", POLICY) == repetition | rule_group("gopher_quality", POLICY)
    assert rule_group("c4", POLICY) == {"c4_lorem_ipsum", "c4_curly_bracket", "c4_min_sentences"}
    assert rule_group("quality_classifier", POLICY) == {"quality_low_score"}
    assert rule_group("language", POLICY) == {"lang_not_allowed", "low_lang_confidence"}
    with pytest.raises(ValueError, match="no rule or group"):
        variant("-nonsense", POLICY)
    with pytest.raises(ValueError, match="unknown variant"):
        variant("filtered", POLICY)
    assert variant("-c4", POLICY).slug == "no-c4"


def test_exclusions_catch_held_out_duplicates_and_copies_of_evaluation_texts(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    heldout = EvalSet("heldout", "test", ids=["a:1"], texts=["A long good article."])
    evals = EvalSet("wiki", "test", ids=["a:4"], texts=["Text an evaluation file holds."])
    excluded, counts = exclusions(run, [heldout, evals])
    assert counts == {"heldout": 1, "duplicate_of_heldout": 1, "same_id_as_eval": 1, "same_text_as_eval": 1}
    assert set(excluded.to_pylist()) == {"a:1", "a:2", "a:4", "a:6"}  # a:6: whitespace differs only


def test_heldout_slice_is_the_final_corpus_validation_split(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    held = heldout_set(run, 0.5, max_bytes=10_000)
    final = {"a:1", "a:6", "a:7"}
    assert set(held.ids) == {i for i in final if split_of(i, 0.5) == "validation"}
    assert held.texts == [DOCS[i][1] for i in held.ids]  # the cleaned text
    assert len(heldout_set(run, 0.5, max_bytes=1).ids) == min(1, len(held.ids))
    with pytest.raises(ValueError, match="no validation split"):
        heldout_set(run, 0.0, 10_000)


def test_eval_files_are_read_with_the_input_readers(tmp_path: Path) -> None:
    good = tmp_path / "wiki.jsonl"
    good.write_text('{"text": "One clean article."}\nnot json\n{"text": "Another."}\n')
    (found,) = read_eval_sets([str(good)])
    assert found.name == "wiki" and found.texts == ["One clean article.", "Another."]
    assert found.quarantined == 1 and [i.rsplit(":", 1)[1] for i in found.ids] == ["1", "3"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    with pytest.raises(ValueError, match="no readable documents"):
        read_eval_sets([str(empty)])
