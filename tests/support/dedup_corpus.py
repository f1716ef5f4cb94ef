"""Real documents, planted near-duplicates and small dedup runs, shared by the dedup tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zstandard
from scipy.sparse import csr_matrix
from stage_helpers import run_stages

from pipelines.config import DedupConfig
from pipelines.dedup import minhash
from pipelines.run import RunDir

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def sample_texts(name: str) -> list[str]:
    """The `text` of every record of a bundled sample file (e.g. web.jsonl.zst)."""
    raw = zstandard.ZstdDecompressor().decompress((SAMPLE / name).read_bytes(), max_output_size=1 << 30)
    return [json.loads(line)["text"] for line in raw.splitlines()]


def real_documents(words_per_doc: int = 500) -> list[str]:
    """Real web pages and Gutenberg book chunks (cut into about `words_per_doc` words), >= 50 words each."""
    docs = sample_texts("web.jsonl.zst")
    for book in sample_texts("books.jsonl.zst"):
        tokens = book.split(" ")
        docs += [" ".join(tokens[i : i + words_per_doc]) for i in range(0, len(tokens), words_per_doc)]
    return [d for d in docs if len(d.split()) >= 50]


def edit(text: str, rate: float, rng: random.Random) -> str:
    """Substitute (half), insert or delete (a quarter each) about `rate` of the words, at least one."""
    words = text.split(" ")
    for _ in range(max(1, round(len(words) * rate))):
        i = rng.randrange(len(words))
        kind = rng.random()
        if kind < 0.5:
            words[i] = f"edit{rng.randrange(10**6)}"
        elif kind < 0.75:
            words.insert(i, f"extra{rng.randrange(10**6)}")
        elif len(words) > 1:
            del words[i]
    return " ".join(words)


def shingle_set(text: str, size: int) -> set[tuple[str, ...]]:
    """Word shingles of the normalized text (one of all the words when there are fewer than `size`)."""
    words = minhash.words(text)
    if 0 < len(words) < size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def exact_jaccard_pairs(texts: list[str], size: int, floor: float) -> dict[tuple[int, int], float]:
    """Exact shingle Jaccard of every pair of documents with similarity >= floor (a sparse matrix
    product counts the shingles that every two documents share)."""
    rows, columns, vocabulary = [], [], {}
    for doc, text in enumerate(texts):
        for shingle in shingle_set(text, size):
            rows.append(doc)
            columns.append(vocabulary.setdefault(shingle, len(vocabulary)))
    matrix = csr_matrix((np.ones(len(rows), np.int32), (rows, columns)), shape=(len(texts), len(vocabulary)))
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    shared = (matrix @ matrix.T).tocoo()
    a, b, common = shared.row, shared.col, shared.data
    jaccard = common / (sizes[a] + sizes[b] - common)
    chosen = (a < b) & (jaccard >= floor)
    return {(int(x), int(y)): float(j) for x, y, j in zip(a[chosen], b[chosen], jaccard[chosen], strict=True)}


def write_inputs(folder: Path, texts: list[str], files: int = 1) -> list[str]:
    """Split `texts` over `files` JSONL files; return the document ids ingest will give them, in order."""
    folder.mkdir(parents=True)
    per_file = -(-len(texts) // files) if texts else 1
    ids = []
    for f in range(files):
        part = texts[f * per_file : (f + 1) * per_file]
        (folder / f"part{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        ids += [f"{folder.name}/part{f}.jsonl:{line + 1}" for line in range(len(part))]
    return ids


def dedup_run(
    root: Path, texts: list[str], config: DedupConfig | None = None, workers: int = 1, files: int = 1
) -> tuple[RunDir, list[str]]:
    """Ingest `texts` (split over `files` files) into the run directory `root` and deduplicate them."""
    ids = write_inputs(root.parent / f"{root.name}-inputs" / "docs", texts, files)
    run = RunDir(root).create()
    inputs = [str(root.parent / f"{root.name}-inputs" / "docs")]
    run_stages(run, "ingest", "dedup", inputs=inputs, dedup=config or DedupConfig(), workers=workers)
    return run, ids


def removed(run: RunDir) -> dict[str, tuple[str, float]]:
    """{removed id: (duplicate_of, similarity)}."""
    rows = pq.read_table(run.dedup / "removed.parquet").to_pylist()
    return {r["id"]: (r["duplicate_of"], r["similarity"]) for r in rows}
