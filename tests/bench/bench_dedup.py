"""MinHash dedup speed and memory: gristmill's dedup stage against datatrove's four-stage MinHash pipeline.

Corpus: the real benchmark corpus of tests/bench/real_corpus.py (trafilatura-extracted web pages and
Gutenberg book chunks), book chunks cut at paragraphs into pieces of at most 10,000 characters (8,831
documents, 67.6 MB), written as 8 Parquet shards; the half-size corpus is its first half (4 shards).
Both tools get the same documents, word 5-gram shingles and the same LSH (bands x rows from gristmill's
threshold 0.8 with 128 permutations: datatrove computes bands * rows = 117 hash values, gristmill 128).
Every measurement runs in its own child process on one core (workers = 1, tasks run in sequence), so
peak memory (VmHWM) is that step's alone. `baseline` is the peak of a child that only imports gristmill's
stages: what is above it is the dedup stage's working memory.

    .venv/bin/python -m pytest -q -s tests/bench/bench_dedup.py     (or make bench)
    .venv/bin/python tests/bench/bench_dedup.py [--skip-datatrove]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import real_corpus  # tests/bench/real_corpus.py, shared with the other benchmarks

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # child

from child import run_child  # noqa: E402

SHARDS = 8
MAX_CHARS = 10_000
VERSION = 1


def _pieces(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """A text cut at paragraph breaks into pieces of at most about max_chars characters."""
    out, current = [], ""
    for paragraph in text.split("\n\n"):
        if current and len(current) + len(paragraph) > max_chars:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    return [*out, current] if current else out


def build_corpus(cache: Path) -> tuple[Path, Path]:
    """(full, half) folders of Parquet shards (id, text), built once from the shared real corpus."""
    folder = cache / f"dedup-v{VERSION}-corpus-v{real_corpus.VERSION}"
    full, half = folder / "full", folder / "half"
    if (full / "_done").exists() and (half / "_done").exists():
        return full, half
    ids, texts = [], []
    for doc_id, text in real_corpus.load():
        pieces = _pieces(text) if doc_id.startswith("books/") else [text]
        ids += [f"{doc_id}#{i}" for i in range(len(pieces))]
        texts += pieces
    per_shard = -(-len(texts) // SHARDS)
    for folder, shards in ((full, SHARDS), (half, SHARDS // 2)):
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(shards):
            rows = slice(s * per_shard, (s + 1) * per_shard)
            table = pa.table({"id": ids[rows], "text": texts[rows]})
            pq.write_table(table, folder / f"shard-{s:02d}.parquet", compression="zstd")
        (folder / "_done").write_text("")
    return full, half


def corpus_size(folder: Path) -> tuple[int, float]:
    """(documents, MB of UTF-8 text)."""
    table = pq.read_table(folder, columns=["text"])
    return table.num_rows, pc.sum(pc.binary_length(table.column("text"))).as_py() / 1e6


# --- the measured steps, each in a child process ------------------------------------------------------


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_baseline(corpus: Path, work: Path) -> dict[str, Any]:
    """The interpreter with gristmill's stages imported and the dedup tables built: nothing processed."""
    from pipelines.dedup import minhash

    minhash.warm()
    return {"seconds": {}, "cpu_seconds": time.process_time(), "peak_mb": _peak_mb()}


def child_ingest(corpus: Path, work: Path) -> dict[str, Any]:
    from stage_helpers import run_stages

    from pipelines.run import RunDir

    run = RunDir(work / "run").create()
    start, cpu = time.perf_counter(), time.process_time()
    run_stages(run, "ingest", inputs=[str(corpus)], workers=1)
    seconds = {"ingest": time.perf_counter() - start}
    return {"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "peak_mb": _peak_mb()}


def child_gristmill(corpus: Path, work: Path) -> dict[str, Any]:
    from stage_helpers import run_stages

    from pipelines.config import DedupConfig
    from pipelines.run import RunDir

    start, cpu = time.perf_counter(), time.process_time()
    summary = run_stages(RunDir(work / "run"), "dedup", dedup=DedupConfig(), workers=1)
    total = time.perf_counter() - start
    return {
        "seconds": {**summary["seconds"], "total": total},
        "cpu_seconds": time.process_time() - cpu,
        "removed": summary["removed"],
        "peak_mb": _peak_mb(),
    }


def child_datatrove(corpus: Path, work: Path) -> dict[str, Any]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    from pipelines.config import DedupConfig

    bands, rows = DedupConfig().lsh()
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    logs = work / "logs"

    def reader() -> ParquetReader:
        return ParquetReader(str(corpus), glob_pattern="*.parquet", text_key="text", id_key="id")

    steps = {
        "signatures": ([reader(), MinhashDedupSignature(str(work / "sigs"), config=config)], 1),
        "buckets": ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], bands),
        "cluster": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
        "filter": ([reader(), MinhashDedupFilter(str(work / "remove")), JsonlWriter(str(work / "out"))], 1),
    }
    seconds, cpu = {}, time.process_time()
    for name, (pipeline, tasks) in steps.items():
        start = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(logs / name)).run()
        seconds[name] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    removed = sum(p.stat().st_size for p in (work / "remove").glob("*.remove")) // 4
    cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "removed": removed, "peak_mb": _peak_mb()}


CHILDREN = {
    "baseline": child_baseline,
    "ingest": child_ingest,
    "gristmill": child_gristmill,
    "datatrove": child_datatrove,
}


def measure(step: str, corpus: Path, work: Path) -> dict[str, Any]:
    """Run one step in a fresh Python process; its timings, counts and peak RSS."""
    nltk = REPO.parent / "shared" / "data" / "nltk-data"
    return run_child(__file__, step, str(corpus), str(work), env={"NLTK_DATA": str(nltk)})


def run_benchmark(with_datatrove: bool = True) -> dict[str, Any]:
    """Measure both tools on the full corpus and gristmill on the half one; print and return the results."""
    cache = Path(os.environ.get("GRISTMILL_BENCH_CACHE", Path.home() / ".cache" / "gristmill" / "bench"))
    full, half = build_corpus(cache)
    results: dict[str, Any] = {}
    baseline = measure("baseline", full, Path(tempfile.gettempdir()))["peak_mb"]
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        for label, corpus in (("half", half), ("full", full)):
            docs, mb = corpus_size(corpus)
            work = Path(tmp) / label
            ingest = measure("ingest", corpus, work)
            ours = measure("gristmill", corpus, work)
            results[label] = {
                "documents": docs,
                "mb": mb,
                "ingest": ingest,
                "gristmill": ours,
                "baseline_mb": baseline,
            }
            if with_datatrove and label == "full":
                results[label]["datatrove"] = measure("datatrove", corpus, Path(tmp) / "datatrove")
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    cores, load = os.cpu_count(), ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nMinHash dedup on one core ({cores} cores on the machine, shared; load average now {load})")
    for label, r in results.items():
        docs, mb, ours, ingest = r["documents"], r["mb"], r["gristmill"], r["ingest"]
        total = ours["seconds"]["total"]
        print(f"\n{label}: {docs:,} documents, {mb:.1f} MB")
        print(f"  gristmill dedup stage  {_line(ours, docs, mb)}")
        above = ours["peak_mb"] - r["baseline_mb"]
        print(
            f"    peak RSS {ours['peak_mb']:.0f} MB = {r['baseline_mb']:.0f} MB interpreter and modules + "
            f"{above:.0f} MB working memory ({above * 1e3 / docs:.1f} kB per document)"
        )
        print(f"    removed {ours['removed']} documents")
        print(f"  gristmill ingest       {_line(ingest, docs, mb)}; peak RSS {ingest['peak_mb']:.0f} MB")
        if "datatrove" in r:
            dt = r["datatrove"]
            with_ingest = total + ingest["seconds"]["ingest"]
            print(f"  datatrove 4 stages     {_line(dt, docs, mb)}")
            print(f"    peak RSS {dt['peak_mb']:.0f} MB; removed {dt['removed']}")
            print(
                f"  speed-up (wall): {dt['seconds']['total'] / total:.1f}x dedup stage (target >= 20x), "
                f"{dt['seconds']['total'] / with_ingest:.1f}x ingest + dedup; "
                f"(CPU): {dt['cpu_seconds'] / ours['cpu_seconds']:.1f}x dedup stage"
            )


def _line(result: dict[str, Any], docs: int, mb: float) -> str:
    seconds = result["seconds"]
    total = seconds.get("total", sum(seconds.values()))
    steps = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items() if k != "total")
    return (
        f"{total:7.2f} s wall, {result['cpu_seconds']:7.2f} s CPU  ({steps}); "
        f"{docs / total:,.0f} docs/s, {mb / total:.1f} MB/s"
    )


def test_dedup_speed_and_memory() -> None:
    results = run_benchmark(with_datatrove=os.environ.get("GRISTMILL_BENCH_SKIP_DATATROVE") != "1")
    full, half = results["full"], results["half"]
    assert full["mb"] >= 50
    # bounded memory: twice the documents, about the same peak (so the memory per document halves)
    assert full["gristmill"]["peak_mb"] < 1.2 * half["gristmill"]["peak_mb"]
    if "datatrove" in full:
        assert full["datatrove"]["seconds"]["total"] / full["gristmill"]["seconds"]["total"] >= 20


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--child", nargs=3, metavar=("STEP", "CORPUS", "WORK"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-datatrove", action="store_true", help="measure gristmill only")
    args = parser.parse_args()
    if args.child:
        step, corpus, work = args.child
        print(json.dumps(CHILDREN[step](Path(corpus), Path(work))))
        return
    run_benchmark(with_datatrove=not args.skip_datatrove)


if __name__ == "__main__":
    main()
