"""Rebuild the bundled quality classifier, pipelines/resources/quality.ftz, from ../shared/data.

Positive ("hq"): Project Gutenberg books (licence header and footer stripped; at most BOOK_EXAMPLES
paragraph-aligned pieces per book, drawn with a fixed seed) and WikiText-2 validation articles (its
tokenization undone: " @,@ " -> ",", "<unk>" dropped). Negative ("lq"): the spam messages of the SMS Spam
Collection and of the YouTube Spam Collection, and the boilerplate strings ("without") that
trafilatura's evaluation set lists for each page, one document per page. Books and messages that are in
data/sample are left out, so tests can score the sample as unseen text.

The training sets are written as JSONL next to the model's build folder and trained with the same
command a user runs: `gristmill quality train --positive ... --negative ... --output ...`.

Usage (from the repository root; `make quality-model` runs it)::

    .venv/bin/python scripts/build_quality_model.py [--shared ../shared/data] [--output MODEL]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import re
import sys
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from make_sample import split_pg  # noqa: E402  (the sample's own PG header/footer splitter)

from flows.cli import main as gristmill  # noqa: E402
from pipelines.quality.classifier import examples  # noqa: E402

SEED = 1234
BOOK_EXAMPLES = 40
WIKI_HEADING = re.compile(r"^ = [^=].* = $", re.MULTILINE)
WIKI_FIXES = ((" @,@ ", ","), (" @.@ ", "."), (" @-@ ", "-"), ("<unk>", ""), (" ,", ","), (" .", "."))


def sample_texts() -> set[str]:
    """Texts and source files of data/sample (left out of training)."""
    out: set[str] = set()
    for name in ("books.jsonl.zst", "spam.jsonl.zst"):
        raw = zstandard.ZstdDecompressor().decompress((REPO / "data" / "sample" / name).read_bytes())
        for line in raw.decode().splitlines():
            record = json.loads(line)
            out.add(record["text"].strip())
            if "source_file" in record:
                out.add(record["source_file"])
    return out


def book_documents(shared: Path, held_out: set[str], rng: random.Random) -> list[str]:
    docs = []
    for path in sorted((shared / "gutenberg-books" / "books").glob("*.txt.gz")):
        if f"books/{path.name}" in held_out:
            continue
        raw = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace").replace("\r\n", "\n")
        pieces = [p for p in examples(split_pg(raw)[1]) if len(p) >= 200]
        docs += rng.sample(pieces, min(BOOK_EXAMPLES, len(pieces)))
    return docs


def wiki_documents(shared: Path) -> list[str]:
    text = (shared / "wikitext-2-valid" / "valid.txt").read_text(encoding="utf-8")
    for old, new in WIKI_FIXES:
        text = text.replace(old, new)
    articles = WIKI_HEADING.split(text)
    return [a.strip() for a in articles if len(a.strip()) >= 200]


def spam_documents(shared: Path, held_out: set[str]) -> list[str]:
    docs = []
    for line in (
        (shared / "sms-spam-collection" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    ):
        label, _, text = line.partition("\t")
        if label == "spam":
            docs.append(text)
    for path in sorted((shared / "youtube-spam-collection").glob("Youtube*.csv")):
        content = path.read_text(encoding="utf-8").lstrip("\r\n")
        docs += [
            r["CONTENT"]
            for r in csv.DictReader(io.StringIO(content, newline=""))
            if r["CLASS"].strip() == "1"
        ]
    return [d for d in docs if d.strip() not in held_out]


def boilerplate_documents(shared: Path) -> list[str]:
    with gzip.open(shared / "trafilatura-eval-html" / "evaldata.json.gz", "rt", encoding="utf-8") as f:
        pages = json.load(f)
    return ["\n".join(entry["without"]) for _, entry in sorted(pages.items()) if entry.get("without")]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", default=str(REPO / "pipelines" / "resources" / "quality.ftz"))
    parser.add_argument("--work", type=Path, default=REPO / "build" / "quality", help="training sets go here")
    args = parser.parse_args(argv)
    held_out = sample_texts()
    rng = random.Random(SEED)
    positive = book_documents(args.shared, held_out, rng) + wiki_documents(args.shared)
    negative = spam_documents(args.shared, held_out) + boilerplate_documents(args.shared)
    write_jsonl(args.work / "positive.jsonl", positive)
    write_jsonl(args.work / "negative.jsonl", negative)
    print(f"positive documents: {len(positive)}, negative documents: {len(negative)}")
    return gristmill(
        [
            "quality",
            "train",
            "--positive",
            str(args.work / "positive.jsonl"),
            "--negative",
            str(args.work / "negative.jsonl"),
            "--output",
            args.output,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
