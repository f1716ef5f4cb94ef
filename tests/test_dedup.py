"""Near-dedup on real text with planted duplicates of known similarity."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import stages
from pipelines.dedup import DedupConfig, normalize, shingles
from pipelines.rundir import RunDir

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def _chunks(n: int, words: int = 400) -> list[str]:
    tokens = SHAKESPEARE.read_text().split()
    return [" ".join(tokens[i * words : (i + 1) * words]) for i in range(n)]


def _edit(text: str, fraction: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = f"zz{rng.randrange(10**6)}"
    return " ".join(words)


def _jaccard(a: str, b: str) -> float:
    sa, sb = shingles(normalize(a), 5), shingles(normalize(b), 5)
    return len(sa & sb) / len(sa | sb)


def _run(
    tmp_path: Path, texts: list[str], workers: int = 1, files: int = 1
) -> tuple[RunDir, dict[str, tuple[str, float]]]:
    """Ingest `texts` split over `files` JSONL files, dedup them, return {removed id: (kept id, sim)}."""
    folder = tmp_path / f"in{workers}" / "docs"
    folder.mkdir(parents=True)
    per_file = -(-len(texts) // files)
    for f in range(files):
        part = texts[f * per_file : (f + 1) * per_file]
        (folder / f"part{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    run = RunDir(tmp_path / f"run{workers}").create()
    stages.run_ingest(run, [str(folder)], workers)
    stages.run_dedup(run, DedupConfig(), workers)
    removed = pq.read_table(run.dedup / "removed.parquet").to_pylist()
    return run, {r["id"]: (r["duplicate_of"], r["similarity"]) for r in removed}


def test_planted_duplicates_are_found_and_distinct_documents_kept(tmp_path: Path) -> None:
    originals = _chunks(30)
    near = _edit(originals[3], 0.01, seed=1)  # ~0.95 Jaccard on 5-gram shingles
    far = _edit(originals[7], 0.25, seed=2)  # well below 0.8
    exact = "  " + originals[11].upper() + " !!! "  # identical after normalization
    assert _jaccard(originals[3], near) > 0.9 and _jaccard(originals[7], far) < 0.5
    texts = [*originals, near, far, exact]
    _, removed = _run(tmp_path, texts)
    # ids are "<source>:<line>", lines are 1-based
    assert removed[f"docs/part0.jsonl:{len(originals) + 1}"][0] == "docs/part0.jsonl:4"
    assert removed[f"docs/part0.jsonl:{len(originals) + 3}"] == ("docs/part0.jsonl:12", 1.0)
    assert f"docs/part0.jsonl:{len(originals) + 2}" not in removed
    assert len(removed) == 2


def test_same_clusters_whatever_the_number_of_workers(tmp_path: Path) -> None:
    originals = _chunks(12)
    texts = [*originals, _edit(originals[0], 0.01, 3), originals[5]]
    _, one = _run(tmp_path, texts, workers=1, files=3)
    _, two = _run(tmp_path, texts, workers=2, files=3)
    assert one == two and len(one) == 2
