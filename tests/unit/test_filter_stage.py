"""The signals stage over a run directory: clean/ and signals/ line up, later stages read the cleaned text,
settings come from the run's config, and a re-run resumes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from stage_helpers import run_stages

from pipelines.corpus import FinalCorpus, read_signals, text_path
from pipelines.quality.signals import SIGNALS
from pipelines.quality.words import has_no_space_script
from pipelines.run import RunDir

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def test_stage_writes_aligned_clean_text_and_signals(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    inputs = [str(SAMPLE / "web.jsonl.zst"), str(SAMPLE / "spam.jsonl.zst")]
    signals = {"cleaning": {"min_words_per_line": 4}}
    summary = run_stages(run, "ingest", "signals", inputs=inputs, signals=signals, workers=2)
    assert summary["documents"] == 653 and 0 < summary["kept"] < 653
    for shard in sorted(run.documents.glob("0*.parquet")):
        documents = pq.read_table(shard, columns=["id", "text"])
        cleaned = pq.read_table(run.clean / shard.name)
        signals = pq.read_table(run.signals / shard.name)
        assert documents.column("id") == cleaned.column("id") == signals.column("id")
        assert set(SIGNALS) | {"id", "source_id", "metadata", "keep", "reasons"} == set(signals.column_names)
        assert text_path(run, shard.name) == run.clean / shard.name
        lengths = signals.column("clean_chars").to_pylist()
        assert lengths == [len(t) for t in cleaned.column("text").to_pylist()]
        raw = documents.column("text").to_pylist()
        assert any(len(c) < len(r) for c, r in zip(cleaned.column("text").to_pylist(), raw, strict=True))
    # the cleaning settings came from the config: no kept line has fewer than 4 words (in scripts without
    # spaces, characters count as words)
    lines = [line for t in pq.read_table(run.clean).column("text").to_pylist() for line in t.splitlines()]
    assert any(len(line.split()) == 4 for line in lines)
    assert all(len(line.split()) >= 4 for line in lines if not has_no_space_script(line))
    # later stages read the cleaned text of the kept documents
    kept = read_signals(run, ["id", "keep"])
    kept_ids = {
        i for i, k in zip(kept.column("id").to_pylist(), kept.column("keep").to_pylist(), strict=True) if k
    }
    cleaned_by_id = dict(
        zip(*(pq.read_table(run.clean).column(c).to_pylist() for c in ("id", "text")), strict=True)
    )
    texts = {
        i: t
        for table in FinalCorpus(run).batches()
        for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True)
    }
    assert set(texts) == kept_ids and all(texts[i] == cleaned_by_id[i] for i in texts)


def test_resumed_stage_skips_finished_shards(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    inputs = [str(SAMPLE / "spam.jsonl.zst"), str(SAMPLE / "udhr.jsonl.zst")]
    run_stages(run, "ingest", "signals", inputs=inputs, workers=1)
    done = run.signals / "00000.parquet"
    other = run.signals / "00001.parquet"
    before = done.stat().st_mtime_ns
    other.unlink()  # as if the run died while shard 1 was being scored
    run.record.set_stage("signals", {"status": "running"})
    run_stages(run, "signals", workers=1)
    assert done.stat().st_mtime_ns == before and other.exists()
    assert pq.read_metadata(other).num_rows == pq.read_metadata(run.documents / "00001.parquet").num_rows
