"""The fastText quality classifier: the bundled model, and `gristmill quality train`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from shared_data import SHARED_DATA

from pipelines.quality import classifier as quality
from pipelines.quality.signals import SignalComputer

REPO = Path(__file__).resolve().parents[2]
SHARED = SHARED_DATA
GRISTMILL = Path(sys.executable).parent / "gristmill"


def _sample(name: str) -> list[dict]:
    with zstandard.ZstdDecompressor().stream_reader((REPO / "data" / "sample" / name).open("rb")) as f:
        raw = f.read()
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_bundled_model_scores_books_above_spam() -> None:
    # data/sample is left out of the bundled model's training data, so this is unseen text
    books = [r["text"] for r in _sample("books.jsonl.zst") if "Project Gutenberg" not in r["text"][:3000]]
    spam = [r["text"] for r in _sample("spam.jsonl.zst") if r["label"] == "spam"]
    book_scores = np.array([quality.score(t) for t in books])
    spam_scores = np.array([quality.score(t) for t in spam])
    assert len(books) > 50 and len(spam) > 100
    assert np.percentile(book_scores, 10) > np.percentile(spam_scores, 90)
    assert np.median(book_scores) > 0.9 and np.median(spam_scores) < 0.1
    assert all(0.0 <= s <= 1.0 for s in (*book_scores, *spam_scores))


def test_train_command_writes_a_model_the_signals_use(tmp_path: Path) -> None:
    wiki = (SHARED / "wikitext-2-valid" / "valid.txt").read_text().split("\n \n")
    positive = [p.strip() for p in wiki if len(p.strip()) > 300][:150]
    sms = (SHARED / "sms-spam-collection" / "SMSSpamCollection").read_text().splitlines()
    negative = [line.split("\t", 1)[1] for line in sms if line.startswith("spam\t")][:150]
    for name, texts in (("pos.jsonl", positive), ("neg.jsonl", negative)):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = tmp_path / "model.ftz"
    result = subprocess.run(
        [str(GRISTMILL), "quality", "train", "--positive", str(tmp_path / "pos.jsonl"), "--negative",
         str(tmp_path / "neg.jsonl"), "--output", str(model), "--epoch", "5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "positive (hq): precision" in result.stdout and "recall" in result.stdout
    precision = float(result.stdout.split("positive (hq): precision ")[1].split()[0])
    assert precision > 0.8
    assert model.exists() and model.stat().st_size < 2_000_000
    computer = SignalComputer(quality_model=str(model))
    encyclopedic = computer.compute(positive[-1] + "\n" + positive[-2])[0]["quality_score"]
    spam = computer.compute(negative[-1] + "\n" + negative[-2] + "\n" + negative[-3])[0]["quality_score"]
    assert encyclopedic > spam


def test_train_refuses_empty_classes(tmp_path: Path) -> None:
    (tmp_path / "pos.jsonl").write_text(json.dumps({"text": "a real sentence that is long enough"}) + "\n")
    (tmp_path / "neg.jsonl").write_text("")
    with pytest.raises(ValueError, match="need positive and negative examples"):
        quality.train([str(tmp_path / "pos.jsonl")], [str(tmp_path / "neg.jsonl")], tmp_path / "m.ftz")


def test_examples_cut_at_paragraphs() -> None:
    text = "First paragraph here.\n\n" + "word " * 400 + "\n\nLast one."
    pieces = list(quality.examples(text, max_chars=1000))
    assert all(len(p) <= 1000 for p in pieces)
    assert pieces[0].startswith("First paragraph here.") and pieces[-1].endswith("Last one.")
    assert quality.normalize("Hello, World!") == "hello , world !"
