"""The real benchmark corpus: trafilatura-extracted web pages plus Gutenberg book chunks from ../shared/data.

Built once (about two minutes on two cores) and cached as Parquet (`id`, `kind`, `text`) under
$GRISTMILL_BENCH_CACHE (default: ~/.cache/gristmill/bench). Documents are in a seeded shuffled order, so any
prefix has the corpus's mix of web pages and book chunks.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("GRISTMILL_BENCH_CACHE", Path.home() / ".cache" / "gristmill" / "bench"))
VERSION = 1
SEED = 1234


def _make_sample():
    """scripts/make_sample.py as a module (its extraction and book-chunking code)."""
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["make_sample"] = module  # dataclasses and worker processes look it up there
    spec.loader.exec_module(module)
    return module


def build(path: Path, jobs: int = 2) -> None:
    """Extract every web page, chunk every book, shuffle and write the corpus to `path`."""
    ms = _make_sample()
    html = SHARED / "trafilatura-eval-html" / "html"
    names = sorted(os.listdir(html))
    with ProcessPoolExecutor(jobs) as pool:
        pages = list(pool.map(ms.extract_page, [html / n for n in names], chunksize=8))
    rows = [(f"web/{n}", "web", t) for n, t in zip(names, pages, strict=True) if t.strip()]
    books = SHARED / "gutenberg-books" / "books"
    for book in sorted(books.iterdir()):
        raw = gzip.decompress(book.read_bytes()).decode("utf-8", errors="replace").replace("\r\n", "\n")
        header, body, footer = ms.split_pg(raw)
        parts = [header.strip(), *ms.chunk_paragraphs(body), footer.strip()]
        rows += [(f"books/{book.name}:{i}", "book", p) for i, p in enumerate(x for x in parts if x)]
    random.Random(SEED).shuffle(rows)
    ids, kinds, texts = zip(*rows, strict=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table({"id": ids, "kind": kinds, "text": texts}), tmp, compression="zstd")
    tmp.replace(path)


def corpus_path() -> Path:
    """The cached corpus, building it first if needed."""
    path = CACHE / f"corpus-v{VERSION}.parquet"
    if not path.exists():
        build(path)
    return path


def load(max_bytes: int | None = None) -> list[tuple[str, str]]:
    """(id, text) of the corpus, or of its first documents up to about `max_bytes` of UTF-8 text."""
    table = pq.read_table(corpus_path(), columns=["id", "text"])
    out, size = [], 0
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True):
        if max_bytes is not None and size >= max_bytes:
            break
        out.append((doc_id, text))
        size += len(text.encode("utf-8"))
    return out


if __name__ == "__main__":
    p = corpus_path()
    docs = load()
    print(p, len(docs), "documents", sum(len(t.encode()) for _, t in docs) / 1e6, "MB")


def documents_table(docs: list[tuple[str, str]]) -> pa.Table:
    """(id, text) pairs as a documents/ shard of a run directory (the ingest stage's schema)."""
    from pipelines.stages.ingest import DOCUMENT_SCHEMA

    return pa.table(
        {
            "id": [d for d, _ in docs],
            "source": ["bench"] * len(docs),
            "source_id": [d for d, _ in docs],
            "url": [None] * len(docs),
            "metadata": [None] * len(docs),
            "text": [t for _, t in docs],
        },
        schema=DOCUMENT_SCHEMA,
    )
