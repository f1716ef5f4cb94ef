"""Data-quality ablation benchmark: does the default policy plus dedup give a better model than raw text,
at the same number of training tokens?

Builds a mixed-quality corpus from ../shared/data, runs `gristmill run` on it, then `gristmill ablate`
with variants raw, policy, policy+dedup and -fineweb, and prints the table (docs/ablation.md).

The corpus (written once to $GRISTMILL_BENCH_CACHE/quality-v2/, about a minute):

- web.jsonl: the 1,033 trafilatura evaluation pages rendered to text with all their boilerplate
  (inscriptis: menus, cookie banners, footers, one block per line, as a crawl's WET text has them);
- spam.jsonl: every SMS Spam Collection message and YouTube comment (ham and spam), one per document;
- books.jsonl: BOOKS seeded Gutenberg books cut into ~30 KB chunks, licence header and footer as
  chunks of their own;
- wiki.jsonl: WIKI_IN_CORPUS WikiText-2 validation articles (tokenization undone); the other articles
  are wiki-eval.jsonl, the --eval set, in no variant;
- the Common Crawl and Dolma WARC/WET files as they are (spam pages, researchers' home pages).

Run with ``python tests/bench/bench_quality.py`` (or ``make bench``). Settings (environment):
GRISTMILL_BENCH_ABLATION_TOKENS (training tokens per variant and seed, default 524,288),
GRISTMILL_BENCH_ABLATION_VARIANTS, GRISTMILL_BENCH_ABLATION_PRESET (default small),
GRISTMILL_BENCH_ABLATION_RUN (reuse this run directory instead of building one).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path[:0] = [str(TESTS / "support"), str(TESTS / "bench"), str(REPO)]

from real_corpus import CACHE, _make_sample  # noqa: E402
from shared_data import SHARED_DATA  # noqa: E402

from pipelines.run.layout import RunLayout  # noqa: E402

VERSION = 2  # 2: WikiText articles without blank lines, headings as plain lines
SEED = 1234
BOOKS = 20
WIKI_IN_CORPUS = 40
WIKI_FIXES = ((" @,@ ", ","), (" @.@ ", "."), (" @-@ ", "-"), ("<unk>", ""), (" ,", ","), (" .", "."))
WIKI_HEADING = re.compile(r"^ = [^=].* = $", re.MULTILINE)
WIKI_SECTION = re.compile(r"^(?:= )+(.*?)(?: =)+$")
WARCS = (
    "resiliparse-test-warc/warcfile.warc.gz",
    "dolma-test-fixtures/warc/sample-0000.warc.gz",
    "dolma-test-fixtures/warc/sample-0001.warc.gz",
    "commoncrawl-whirlwind/whirlwind.warc.wet.gz",
)
TOKENS = int(os.environ.get("GRISTMILL_BENCH_ABLATION_TOKENS", 524_288))
VARIANTS = os.environ.get("GRISTMILL_BENCH_ABLATION_VARIANTS", "raw,policy,policy+dedup,-fineweb")
PRESET = os.environ.get("GRISTMILL_BENCH_ABLATION_PRESET", "small")
GRISTMILL = Path(sys.executable).parent / "gristmill"


# ------------------------------------------------------------------------------------------ corpus


def page_text(path: Path) -> str:
    """All the text of a gzipped HTML page, boilerplate included, one block per line."""
    from inscriptis import get_text
    from trafilatura.utils import decode_file

    text = get_text(decode_file(gzip.decompress(path.read_bytes())))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def wiki_articles() -> list[str]:
    """WikiText-2 validation articles as plain text: tokenization undone, section headings
    (`= = History = =`) as lines of their own, no blank lines (WikiText's lines of one space would
    otherwise be counted as duplicated lines by the Gopher repetition rules)."""
    text = (SHARED_DATA / "wikitext-2-valid" / "valid.txt").read_text(encoding="utf-8")
    for old, new in WIKI_FIXES:
        text = text.replace(old, new)
    articles = []
    for article in WIKI_HEADING.split(text):
        lines = [WIKI_SECTION.sub(r"\1", line.strip()) for line in article.splitlines()]
        article = "\n".join(line for line in lines if line)
        if len(article) >= 200:
            articles.append(article)
    return articles


def spam_messages() -> list[str]:
    ms = _make_sample()
    sms = ms.read_sms(SHARED_DATA / "sms-spam-collection" / "SMSSpamCollection")
    youtube = ms.read_youtube(SHARED_DATA / "youtube-spam-collection")
    return [text for _, text in sms + youtube if text.strip()]


def book_chunks() -> list[str]:
    ms = _make_sample()
    books = sorted((SHARED_DATA / "gutenberg-books" / "books").iterdir())
    chunks = []
    for book in sorted(random.Random(SEED).sample(books, BOOKS)):
        raw = gzip.decompress(book.read_bytes()).decode("utf-8", errors="replace").replace("\r\n", "\n")
        header, body, footer = ms.split_pg(raw)
        chunks += [p for p in (header.strip(), *ms.chunk_paragraphs(body), footer.strip()) if p]
    return chunks


def _write(path: Path, texts: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    tmp.replace(path)


def corpus(jobs: int = 2) -> tuple[list[Path], Path]:
    """The input files of the benchmark corpus and the evaluation file (built once, then cached)."""
    folder = CACHE / f"quality-v{VERSION}"
    inputs = [folder / "corpus" / f"{name}.jsonl" for name in ("web", "spam", "books", "wiki")]
    eval_file = folder / "wiki-eval.jsonl"
    if not all(p.exists() for p in [*inputs, eval_file]):
        (folder / "corpus").mkdir(parents=True, exist_ok=True)
        html = SHARED_DATA / "trafilatura-eval-html" / "html"
        with ProcessPoolExecutor(jobs) as pool:
            pages = list(pool.map(page_text, sorted(html.iterdir()), chunksize=8))
        articles = wiki_articles()
        random.Random(SEED).shuffle(articles)
        _write(inputs[0], [p for p in pages if p])
        _write(inputs[1], spam_messages())
        _write(inputs[2], book_chunks())
        _write(inputs[3], articles[:WIKI_IN_CORPUS])
        _write(eval_file, articles[WIKI_IN_CORPUS:])
    return [*inputs, *(SHARED_DATA / w for w in WARCS)], eval_file


# ------------------------------------------------------------------------------------------- runs


def _gristmill(*args: str) -> tuple[str, float]:
    start = time.perf_counter()
    out = subprocess.run([str(GRISTMILL), *args], capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"gristmill {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out.stdout, time.perf_counter() - start


def run_benchmark(work: Path) -> dict[str, Any]:
    """Build the run (unless GRISTMILL_BENCH_ABLATION_RUN names one), ablate it, return the results."""
    inputs, eval_file = corpus()
    run = Path(os.environ.get("GRISTMILL_BENCH_ABLATION_RUN") or work / "runs" / "quality")
    build_seconds = 0.0
    if not RunLayout(run).manifest.exists():
        args = [
            "run", "--input", *map(str, inputs), "--output", str(run.parent), "--run-id", run.name,
            "--set", "tokenizer.vocab_size=8192", "--set", "tokenize.validation_fraction=0.05",
        ]  # fmt: skip
        _, build_seconds = _gristmill(*args)
    args = [
        "ablate", str(run), f"--variants={VARIANTS}", "--tokens", str(TOKENS), "--preset", PRESET,
        "--seq-len", "256", "--batch-size", "16", "--eval", str(eval_file), "--heldout-bytes", "300000",
    ]  # fmt: skip
    table, seconds = _gristmill(*args)
    results = json.loads((run / "ablation" / "results.json").read_text())
    return {"results": results, "table": table, "build_seconds": build_seconds, "ablate_seconds": seconds}


def report(outcome: dict[str, Any]) -> list[str]:
    results = outcome["results"]
    s = results["settings"]
    lines = [
        f"corpus build (`gristmill run`): {outcome['build_seconds']:.0f} s; ablation (`gristmill ablate`, "
        f"{len(results['variants'])} variants x {len(s['seeds'])} seeds): {outcome['ablate_seconds']:.0f} s",
        f"model: preset {s['preset']}, {s['parameters']:,} parameters; {s['training_tokens']:,} training "
        f"tokens per variant and seed ({s['steps']} steps of {s['batch_size']} x {s['seq_len']})",
        outcome["table"].rstrip(),
    ]
    by_name = {v["name"]: v for v in results["variants"]}
    if "raw" in by_name and "policy+dedup" in by_name:
        for name in [e["name"] for e in results["eval_sets"]]:
            e = by_name["policy+dedup"]["eval"][name]
            lines.append(
                f"policy+dedup vs raw on {name}: {e['delta_vs_baseline']:+.4f} bits/byte, seed spread "
                f"{e['delta_spread']:.4f}: {e['verdict']}"
            )
    return lines


def test_quality_ablation() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_benchmark(Path(tmp))
    print("\n" + "\n".join(report(outcome)))
    assert outcome["results"]["equal_training_tokens"] and not outcome["results"]["failed"]


if __name__ == "__main__":
    test_quality_ablation()
