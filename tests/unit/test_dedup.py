"""Near-dedup: datasketch-identical signatures, exact duplicates, survivors, determinism, cross-run index."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHashLSH
from dedup_corpus import dedup_run, edit, real_documents, removed, sample_texts, write_inputs
from pydantic import ValidationError
from references import as_datasketch, datasketch_minhash
from stage_helpers import run_stages

from pipelines.config import DedupConfig
from pipelines.dedup import minhash
from pipelines.dedup.index import DedupIndex
from pipelines.run import RunDir

TRICKY = [
    "",
    "!!! ... ---",
    "Hello",
    "Straße İstanbul ΟΔΟΣ Ǆemal ẞ KELVIN-Sign",
    "under_score snake_case a1b2 ½ ² ٣ 三",
    "日本語のテキスト、漢字。 abc DEF",
    "x" * 10 + "\u00e9 déjà-vu naïve façade",
    "emoji 🙂 between words 🙂🙂 end",
    "a b c d",
]


def test_signatures_are_datasketch_minhashes() -> None:
    """The vectorized signatures equal datasketch's own MinHash (affine32) over the same shingles."""
    texts = sample_texts("web.jsonl.zst")[:50] + sample_texts("udhr.jsonl.zst")[:40:2] + TRICKY
    for num_perm, seed, size in ((128, 1, 5), (64, 7, 3), (32, 2, 9)):
        fast = minhash.signatures(pa.array(texts), num_perm, seed, size, batch_bytes=40_000)
        for i, text in enumerate(texts):
            reference = datasketch_minhash(text, num_perm, seed, size)
            assert np.array_equal(fast.minhash[i], reference.hashvalues), (i, text[:80])
            assert fast.n_words[i] == len(minhash.words(text)), (i, text[:80])
    lean = as_datasketch(fast.minhash[0], seed=2)
    assert lean.jaccard(datasketch_minhash(texts[0], 32, 2, 9)) == 1.0


def test_a_batch_with_fewer_words_than_a_shingle() -> None:
    """A batch (a shard) of one document of 2-4 words: one shingle of all its words, as datasketch."""
    for text in ("before the newlines", "a b", "one two three four"):
        fast = minhash.signatures(pa.array([text]), 128, 1, 5)
        assert np.array_equal(fast.minhash[0], datasketch_minhash(text, 128, 1, 5).hashvalues), text


def test_normalization_tables_cover_unicode() -> None:
    """No alphanumeric code point, and no lowercase mapping, lies above the tables' limits."""
    assert not any(chr(c).isalnum() for c in range(minhash.ALNUM_LIMIT, 0x110000))
    assert all(chr(c).lower() == chr(c) for c in range(minhash.LOWER_LIMIT, 0x110000))
    expected = ["hello", "world", "snake", "case", "3", "14", "ǆ"]
    assert minhash.words("Hello, WORLD! snake_case 3.14 Ǆ") == expected


def test_lsh_bands_and_rows_are_datasketchs() -> None:
    for threshold in (0.7, 0.8, 0.9):
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        assert DedupConfig(threshold=threshold).lsh() == (lsh.b, lsh.r)
    assert DedupConfig(bands=16, rows=8).lsh() == (16, 8)
    with pytest.raises(ValidationError):
        DedupConfig(bands=16)
    with pytest.raises(ValidationError):
        DedupConfig(bands=20, rows=8)
    with pytest.raises(ValidationError):
        DedupConfig(threshhold=0.5)


def _ascii_upper(text: str) -> str:
    return "".join(c.upper() if c.isascii() else c for c in text)


def test_exact_short_and_empty_documents(tmp_path: Path) -> None:
    base = real_documents()[:6]
    texts = [
        *base,
        "  " + _ascii_upper(base[2]).replace(" ", "  ") + " !!! ",  # 7: equal to 3 after normalization
        base[4],  # 8: byte-identical to 5
        "Short text here.",  # 9
        "short TEXT, here!",  # 10: exact duplicate of 9
        "Short text there.",  # 11: another short text: Jaccard 0, kept
        "?!?!",  # 12: no words: never a duplicate
        "... !!!",  # 13: no words either
    ]
    run, ids = dedup_run(tmp_path / "run", texts)
    out = removed(run)
    assert out == {ids[6]: (ids[2], 1.0), ids[7]: (ids[4], 1.0), ids[9]: (ids[8], 1.0)}
    summary = json.loads((run.dedup / "summary.json").read_text())
    assert summary["removed_exact"] == 3 and summary["removed_near"] == 0 and summary["empty"] == 2
    clusters = pq.read_table(run.dedup / "clusters.parquet").to_pylist()
    assert [(c["survivor"], c["size"], c["exact"]) for c in clusters] == [(ids[i], 2, 1) for i in (2, 4, 8)]


def _near_duplicate_corpus(n: int = 150) -> list[str]:
    rng = random.Random(3)
    originals = real_documents()[:n]
    rates = [0.002, 0.01, 0.03] * n
    variants = [edit(originals[i], rates[i], rng) for i in range(0, n, 3)]
    return originals + variants + [originals[5], _ascii_upper(originals[40])]


def test_same_result_whatever_the_workers_and_memory_bound(tmp_path: Path) -> None:
    """1 worker, everything in memory == 2 workers, band keys grouped in several key ranges."""
    texts = _near_duplicate_corpus()
    one, _ = dedup_run(tmp_path / "one", texts, DedupConfig(), workers=1, files=4)
    two, _ = dedup_run(tmp_path / "two", texts, DedupConfig(max_rows_in_memory=1_000), workers=2, files=4)
    for name in ("removed.parquet", "clusters.parquet"):
        assert pq.read_table(one.dedup / name).equals(pq.read_table(two.dedup / name)), name
    assert len(removed(one)) >= 40


def _write_signals(run: RunDir, keep: list[bool], quality: list[float | None]) -> None:
    """A signals shard as the signals stage writes it (id, keep, quality_score)."""
    ids = pq.read_table(run.documents / "00000.parquet", columns=["id"]).column("id")
    table = pa.table({"id": ids, "keep": keep, "quality_score": pa.array(quality, pa.float64())})
    pq.write_table(table, run.signals / "00000.parquet")


def test_survivor_has_the_highest_quality_then_comes_first(tmp_path: Path) -> None:
    rng = random.Random(5)
    a, b = real_documents()[10:12]
    texts = [a, edit(a, 0.005, rng), edit(a, 0.005, rng), b, b, edit(b, 0.005, rng), a]
    ids = write_inputs(tmp_path / "docs", texts)
    run = RunDir(tmp_path / "run").create()
    run_stages(run, "ingest", inputs=[str(tmp_path / "docs")], workers=1)
    # the third copy of `a` scores highest; `b`'s copies have no score, the last one is dropped by the policy
    _write_signals(run, [True] * 6 + [False], [0.2, 0.1, 0.9, None, None, None, 1.0])
    run_stages(run, "dedup", dedup=DedupConfig(), workers=1)
    out = removed(run)
    expected = {ids[0]: ids[2], ids[1]: ids[2], ids[4]: ids[3], ids[5]: ids[3]}
    assert {k: v[0] for k, v in out.items()} == expected
    assert out[ids[4]][1] == 1.0 and 0.8 <= out[ids[0]][1] < 1.0


def test_cross_run_index(tmp_path: Path) -> None:
    """Run B drops near-duplicates of run A's survivors, then adds its own; re-running B changes nothing."""
    rng = random.Random(11)
    docs = real_documents()[20:100]
    index = str(tmp_path / "index")
    config = DedupConfig(index=index)
    run_a, ids_a = dedup_run(tmp_path / "runA", [*docs[:40], docs[0]], config)
    assert removed(run_a) == {ids_a[40]: (ids_a[0], 1.0)}
    texts_b = [edit(docs[1], 0.005, rng), docs[2], *docs[40:60], edit(docs[45], 0.005, rng)]
    run_b, ids_b = dedup_run(tmp_path / "runB", texts_b, config)
    out = removed(run_b)
    assert out[ids_b[1]] == (f"runA/{ids_a[2]}", 1.0)
    assert out[ids_b[0]][0] == f"runA/{ids_a[1]}" and out[ids_b[0]][1] >= 0.8
    assert out[ids_b[22]][0] == ids_b[7] and len(out) == 3
    summary = json.loads((run_b.dedup / "summary.json").read_text())
    assert summary["removed_matching_earlier_runs"] == 2
    assert summary["index"] == {"path": index, "earlier_runs": ["runA"], "earlier_documents": 40, "added": 20}
    run_stages(run_b, "dedup", dedup=config, workers=1)  # again: its own part in the index is no reason
    assert removed(run_b) == out
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [(p["run_id"], p["documents"]) for p in manifest["parts"]] == [("runA", 40), ("runB", 20)]
    run_c, ids_c = dedup_run(tmp_path / "runC", [docs[50], docs[39], docs[70]], config)
    assert removed(run_c) == {ids_c[0]: (f"runB/{ids_b[12]}", 1.0), ids_c[1]: (f"runA/{ids_a[39]}", 1.0)}


def test_crash_mid_append_leaves_a_usable_index(tmp_path: Path) -> None:
    docs = real_documents()[100:130]
    config = DedupConfig(index=str(tmp_path / "index"))
    dedup_run(tmp_path / "runA", docs[:20], config)
    index = DedupIndex(config.index, config.signature_params())
    before = (tmp_path / "index" / "manifest.json").read_bytes()
    chunk = pq.read_table(next((tmp_path / "index" / "parts").glob("*/docs-00000.parquet")))
    with pytest.raises(RuntimeError), index.appending("runX") as part:
        part.add(chunk, np.zeros((chunk.num_rows, config.lsh()[0]), np.int64))
        raise RuntimeError("worker lost mid-append")
    assert (tmp_path / "index" / "manifest.json").read_bytes() == before
    assert {c.run_id for c in index.chunks()} == {"runA"}
    run_b, ids_b = dedup_run(tmp_path / "runB", [docs[3], *docs[20:30]], config)  # reads the index
    assert list(removed(run_b)) == [ids_b[0]]
    parts = json.loads((tmp_path / "index" / "manifest.json").read_text())["parts"]
    assert [(p["part"], p["documents"]) for p in parts] == [("00000-runA", 20), ("00001-runB", 10)]
    with pytest.raises(ValueError, match="not comparable"):
        DedupIndex(config.index, DedupConfig(num_perm=64).signature_params()).chunks()
