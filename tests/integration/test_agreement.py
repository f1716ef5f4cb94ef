"""Keep/drop agreement with datatrove's stock quality chain on the bundled sample.

datatrove runs its stock chain (tests/references.py); gristmill runs its signals stage with the
policy that holds the same thresholds (pipelines/resources/policy-datatrove.yaml). docs/filtering.md explains
the documents on which they differ.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
from references import POLICY, quality_chain
from stage_helpers import run_stages

from pipelines.run import RunDir

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
MIN_AGREEMENT = 0.98


def _datatrove_keeps(texts: list[str]) -> list[bool]:
    """Whether datatrove's chain keeps each text (run in a worker process)."""
    from datatrove.data import Document

    chain = quality_chain()
    keeps = []
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        keeps.append(all(f.filter(doc) is True for f in chain))  # stops at the first filter that drops
    return keeps


def test_keep_drop_agrees_with_datatrove(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    inputs = sorted(str(p) for p in SAMPLE.glob("*.jsonl.zst"))
    run_stages(run, "ingest", "signals", inputs=inputs, signals={"policy": str(POLICY)}, workers=2)
    documents = pq.read_table(run.documents, columns=["id", "text"])
    ours = pq.read_table(run.signals, columns=["id", "keep", "reasons"])
    assert ours.column("id").to_pylist() == documents.column("id").to_pylist()
    texts = documents.column("text").to_pylist()
    halves = [texts[0::2], texts[1::2]]
    with ProcessPoolExecutor(2) as pool:
        even, odd = pool.map(_datatrove_keeps, halves)
    theirs = [None] * len(texts)
    theirs[0::2], theirs[1::2] = even, odd
    keep = ours.column("keep").to_pylist()
    differ = [
        (doc_id, their, reasons)
        for doc_id, mine, their, reasons in zip(
            ours.column("id").to_pylist(), keep, theirs, ours.column("reasons").to_pylist(), strict=True
        )
        if mine != their
    ]
    agreement = 1 - len(differ) / len(texts)
    print(f"\nagreement with datatrove: {agreement:.2%} of {len(texts)} documents")
    for doc_id, their, reasons in differ:
        print(f"  {doc_id}: datatrove {'keeps' if their else 'drops'}, gristmill reasons {reasons}")
    assert sum(theirs) > 50 and len(texts) - sum(theirs) > 50, "the sample must have both keeps and drops"
    assert agreement >= MIN_AGREEMENT, differ
