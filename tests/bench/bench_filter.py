"""Quality filtering speed and memory: gristmill's signals stage against datatrove's stock quality chain.

Corpus: the real benchmark corpus of tests/bench/real_corpus.py (every trafilatura-extracted page of
trafilatura's evaluation set plus every Gutenberg book cut into ~30 KB chunks; about 68 MB, 3,256
documents, in a seeded shuffled order), written as one documents/ shard.

- datatrove: GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=
  False) -> FineWebQualityFilter, chained through their `run` generators on Documents streamed from the
  shard. At about 0.05 MB/s it runs on the first DATATROVE_MB (default 20 MB) of the corpus only: rates
  are per MB, so the ratio is still fair (set GRISTMILL_BENCH_DATATROVE_MB to change it). Target: the
  signals stage at least 30x datatrove's chain per core on the same MB.
- gristmill: the signals stage on one worker (language ID, every Gopher/C4/FineWeb signal, the quality
  score, C4 cleaning written to clean/, policy-datatrove.yaml applied, Parquet written), on the same first
  DATATROVE_MB and on the whole corpus: peak memory at the two sizes shows it stays flat.
- split: a bare `re.findall(r"\\w+")` word split and `str.split("\\n")` line split of the same text, the
  ceiling for anything that looks at every word.

Each measurement runs in its own child process (one core), so its peak memory (VmHWM) is its own.
The machine is shared, so run it more than once; CPU seconds are printed next to wall seconds.

    .venv/bin/python -m pytest -q -s tests/bench/bench_filter.py     (or make bench)
    .venv/bin/python tests/bench/bench_filter.py [--datatrove-mb 10] [--skip-datatrove]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "support")]  # tests/bench: child; tests/support: references

from child import run_child  # noqa: E402

DATATROVE_MB = float(os.environ.get("GRISTMILL_BENCH_DATATROVE_MB", "20"))
TARGET = 30.0  # signals stage vs datatrove's chain, MB/s per core on the same documents
BATCH = 256


def _write_shard(run_root: Path, max_bytes: float | None) -> dict[str, Any]:
    """documents/00000.parquet of a fresh run directory: the corpus, or its first `max_bytes` of text."""
    sys.path.insert(0, str(HERE))
    import real_corpus

    docs = real_corpus.load(None if max_bytes is None else int(max_bytes))
    (run_root / "documents").mkdir(parents=True, exist_ok=True)
    table = real_corpus.documents_table(docs)
    pq.write_table(table, run_root / "documents" / "00000.parquet", row_group_size=BATCH)
    return {"docs": len(docs), "mb": sum(len(t.encode()) for _, t in docs) / 1e6}


def _texts(run_root: Path):
    shard = pq.ParquetFile(run_root / "documents" / "00000.parquet")
    for batch in shard.iter_batches(batch_size=BATCH, columns=["id", "text"]):
        yield from zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True)


def _measure(step: Any) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    result = step()
    result.update(
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
        peak_mb=_peak_mb(),
    )
    return result


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's, kept over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_gristmill(run_root: Path) -> dict[str, Any]:
    from references import POLICY
    from stage_helpers import run_stages

    from pipelines.run import RunDir

    run = RunDir(run_root)

    def step() -> dict[str, Any]:
        run_stages(run, "signals", signals={"policy": str(POLICY)}, workers=1)
        return {}

    return _measure(step)


def child_datatrove(run_root: Path) -> dict[str, Any]:
    from datatrove.data import Document
    from references import quality_chain

    chain = quality_chain()

    def step() -> dict[str, Any]:
        pipe: Any = (Document(text=text, id=doc_id) for doc_id, text in _texts(run_root))
        for f in chain:
            pipe = f.run(pipe)
        return {"kept": [doc.id for doc in pipe]}

    return _measure(step)


def child_split(run_root: Path) -> dict[str, Any]:
    words = re.compile(r"\w+")

    def step() -> dict[str, Any]:
        n = 0
        for _, text in _texts(run_root):
            n += len(words.findall(text)) + len(text.split("\n"))
        return {"pieces": n}

    return _measure(step)


CHILDREN = {"gristmill": child_gristmill, "datatrove": child_datatrove, "split": child_split}


def _spawn(step: str, run_root: Path) -> dict[str, Any]:
    return run_child(__file__, step, str(run_root))


def _line(name: str, result: dict[str, Any], size: dict[str, Any]) -> str:
    wall, cpu, peak = result["seconds"], result["cpu_seconds"], result["peak_mb"]
    return (
        f"  {name:<28} {size['mb']:6.1f} MB {size['docs']:6,} docs  {wall:8.1f} s wall {cpu:8.1f} s CPU"
        f"  {size['docs'] / wall:8.1f} docs/s  {size['mb'] / wall:7.2f} MB/s  peak {peak:5.0f} MB"
    )


def run_benchmark(datatrove_mb: float = DATATROVE_MB, with_datatrove: bool = True) -> dict[str, Any]:
    """Run every measurement, print the table and return the numbers."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        small, full = Path(tmp) / "small", Path(tmp) / "full"
        sizes = {"small": _write_shard(small, datatrove_mb * 1e6), "full": _write_shard(full, None)}
        results["sizes"] = sizes
        results["split"] = _spawn("split", full)
        results["gristmill_small"] = _spawn("gristmill", small)
        results["gristmill_full"] = _spawn("gristmill", full)
        if with_datatrove:
            results["datatrove_small"] = _spawn("datatrove", small)
            ours = pq.read_table(small / "signals", columns=["id", "keep"])
            kept = set(results["datatrove_small"].pop("kept"))
            same = sum(
                (doc_id in kept) == keep
                for doc_id, keep in zip(
                    ours.column("id").to_pylist(), ours.column("keep").to_pylist(), strict=True
                )
            )
            results["agreement"] = same / ours.num_rows
    print(f"\nquality filtering benchmark (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(_line("bare regex word+line split", results["split"], sizes["full"]))
    print(_line("gristmill signals stage", results["gristmill_small"], sizes["small"]))
    print(_line("gristmill signals stage", results["gristmill_full"], sizes["full"]))
    rate_full = sizes["full"]["mb"] / results["gristmill_full"]["seconds"]
    rate_split = sizes["full"]["mb"] / results["split"]["seconds"]
    if with_datatrove:
        print(_line("datatrove quality chain", results["datatrove_small"], sizes["small"]))
        rate_dt = sizes["small"]["mb"] / results["datatrove_small"]["seconds"]
        rate_small = sizes["small"]["mb"] / results["gristmill_small"]["seconds"]
        cpu_ratio = results["datatrove_small"]["cpu_seconds"] / results["gristmill_small"]["cpu_seconds"]
        results["ratio"] = rate_small / rate_dt
        print(
            f"  speed-up over datatrove per core (MB/s, same {sizes['small']['mb']:.0f} MB): "
            f"{results['ratio']:.1f}x wall, {cpu_ratio:.1f}x CPU (target >= {TARGET:.0f}x); "
            f"whole corpus vs datatrove: {rate_full / rate_dt:.1f}x"
        )
        results["cpu_ratio"] = cpu_ratio
        print(f"  keep/drop agreement with datatrove on those documents: {results['agreement']:.2%}")
    print(f"  gristmill runs at 1/{rate_split / rate_full:.1f} of the bare split's speed")
    print(
        f"  peak memory: {results['gristmill_small']['peak_mb']:.0f} MB at {sizes['small']['mb']:.0f} MB of "
        f"input, {results['gristmill_full']['peak_mb']:.0f} MB at {sizes['full']['mb']:.0f} MB"
    )
    return results


def test_filter_speed_and_memory() -> None:
    results = run_benchmark(with_datatrove=os.environ.get("GRISTMILL_BENCH_SKIP_DATATROVE") != "1")
    sizes = results["sizes"]
    assert sizes["full"]["mb"] >= 50
    # memory stays flat: 6-7x the input, about the same peak
    assert results["gristmill_full"]["peak_mb"] < 1.5 * results["gristmill_small"]["peak_mb"]
    if "ratio" in results:
        assert results["agreement"] >= 0.98
        assert results["cpu_ratio"] >= TARGET


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--child", nargs=2, metavar=("STEP", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--datatrove-mb", type=float, default=DATATROVE_MB, help="MB of text datatrove runs on"
    )
    parser.add_argument("--skip-datatrove", action="store_true", help="measure gristmill and the split only")
    args = parser.parse_args()
    if args.child:
        step, run_root = args.child
        print(json.dumps(CHILDREN[step](Path(run_root))))
        return
    run_benchmark(args.datatrove_mb, with_datatrove=not args.skip_datatrove)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
