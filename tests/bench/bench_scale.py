"""Corpus scale: the whole `gristmill run` (every stage, the default policy) on N and 4N MB of real text.

Input, per size: one uncompressed JSONL file (`id`, `kind`, `text`) made from the real benchmark corpus
(tests/bench/real_corpus.py: trafilatura-extracted web pages and Gutenberg book chunks, 68 MB, seeded
shuffled order): its documents in order, then again as copies with light seeded word-level edits (one
word in 20 replaced, so no copy is a near-duplicate at dedup's 0.8 threshold), up to the size.

Each size runs `gristmill run FILE --workers 2` in its own child process (the CLI in process, so the CPU
time of each stage is read from getrusage at the stage changes run.json records; forked workers count
once they are reaped at the end of their stage's shards). Printed per size: wall and CPU seconds,
CPU/wall, peak RSS (the largest process of the build), and per stage CPU/wall and shard concurrency (the
seconds shards ran, summed, per wall second of the stage: how many workers were busy, whatever else
the machine runs); then the 4N/N ratios. Targets: 4x input -> at most 4.4x wall time; peak RSS at 4N
within 1.2x of N; ingest and signals near 2 CPU seconds per wall second on the one 4N MB file (on an
otherwise idle machine: their concurrency near 2 on any).

    .venv/bin/python -m pytest -q -s tests/bench/bench_scale.py     (or make bench)
    .venv/bin/python tests/bench/bench_scale.py [--mb 25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "support")]

from child import run_child  # noqa: E402

MB = 1_000_000
DEFAULT_MB = float(os.environ.get("GRISTMILL_BENCH_SCALE_MB", "25"))
EDIT_RATE = 0.05
WORKERS = 2
FILLERS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
]


def write_input(path: Path, megabytes: float) -> dict[str, Any]:
    """The benchmark JSONL of about `megabytes` MB of text (see the module docstring)."""
    import real_corpus

    docs = real_corpus.load()
    target, size, n = megabytes * MB, 0, 0
    with path.open("w") as out:
        copy = 0
        while size < target:
            for doc_id, text in docs:
                if size >= target:
                    break
                if copy:
                    rng = random.Random(f"{copy}:{doc_id}")
                    words = text.split(" ")
                    for i in rng.sample(range(len(words)), max(1, int(len(words) * EDIT_RATE))):
                        words[i] = rng.choice(FILLERS)
                    text = " ".join(words)
                kind = "book" if doc_id.startswith("books/") else "web"
                out.write(json.dumps({"id": f"{doc_id}#{copy}", "kind": kind, "text": text}) + "\n")
                size += len(text.encode())
                n += 1
            copy += 1
    return {"mb": size / MB, "documents": n, "file_mb": path.stat().st_size / MB}


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_mb() -> float:
    """The largest process of this build: this one (VmHWM) or a reaped worker (children's ru_maxrss)."""
    own = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


_SHARDS: dict[str, Any] = {}  # the runner's own per-shard call and the log of shard times


def _timed_call(task: Any, index: int) -> Any:
    """The runner's per-shard call, its start and end time appended to the shard log (module level, so
    the worker pool can pickle it)."""
    start = time.time()
    counts = _SHARDS["call"](task, index)
    with _SHARDS["log"].open("a") as f:
        f.write(json.dumps([start, time.time()]) + "\n")
    return counts


def _time_shards(log_path: Path) -> None:
    """Make the runner time every shard (forked workers inherit the wrapped call)."""
    from pipelines.exec import runner

    _SHARDS.update(call=runner._call, log=log_path)
    runner._call = _timed_call


def child_run(input_path: Path, out: Path) -> dict[str, Any]:
    """`gristmill run` in this process, with a thread noting CPU time when each stage starts and ends."""
    from flows.cli import main

    shard_log = out.parent / "shards.jsonl"
    _time_shards(shard_log)

    run_json = out / "scale" / "run.json"
    marks: dict[str, dict[str, float]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                stages = json.loads(run_json.read_text()).get("stages", {})
            except (OSError, ValueError):
                stages = {}
            now, cpu = time.perf_counter(), _cpu()
            for name, info in stages.items():
                mark = marks.setdefault(name, {})
                if "start" not in mark:
                    mark.update(start=now, start_cpu=cpu, start_time=time.time())
                if info.get("status") == "done" and "end" not in mark:
                    mark.update(end=now, end_cpu=cpu, end_time=time.time())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    start, cpu = time.perf_counter(), _cpu()
    watcher.start()
    code = main(["run", "--input", str(input_path), "--output", str(out), "--run-id", "scale",
                 "--workers", str(WORKERS)])  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - start, _cpu() - cpu
    time.sleep(0.2)
    done.set()
    watcher.join()
    record = json.loads(run_json.read_text())
    shards = [json.loads(line) for line in shard_log.read_text().splitlines()] if shard_log.exists() else []
    stages = {}
    for name, m in marks.items():
        if "end" not in m:
            continue
        busy = sum(b - a for a, b in shards if m["start_time"] <= a and b <= m["end_time"])
        stages[name] = {
            "seconds": m["end"] - m["start"],
            "cpu_seconds": m["end_cpu"] - m["start_cpu"],
            "concurrency": busy / max(m["end_time"] - m["start_time"], 1e-9),
        }
    return {
        "exit": code,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": _peak_mb(),
        "stages": stages,
        "recorded_seconds": {name: info.get("seconds") for name, info in record["stages"].items()},
        "ingest": record["stages"]["ingest"]["summary"],
    }


def run_benchmark(megabytes: float = DEFAULT_MB) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for label, size in (("N", megabytes), ("4N", 4 * megabytes)):
            work = Path(tmp) / label
            work.mkdir()
            corpus = write_input(work / "corpus.jsonl", size)
            result = run_child(__file__, "run", str(work / "corpus.jsonl"), str(work / "runs"))
            results[label] = {**corpus, **result}
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    cores, load = os.cpu_count(), ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ngristmill run, {WORKERS} workers, one JSONL file per size ({cores} CPUs; load average {load})")
    for label, r in results.items():
        ingest = r["ingest"]
        print(
            f"  {label:>2}: {r['mb']:6.1f} MB of text, {r['documents']:,} documents"
            f" ({ingest['splits']} splits, {ingest['shards']} shards):"
            f" {r['seconds']:7.1f} s wall, {r['cpu_seconds']:7.1f} s CPU"
            f" ({r['cpu_seconds'] / r['seconds']:.2f} CPU/wall), peak RSS {r['peak_mb']:.0f} MB"
        )
        for name, s in r["stages"].items():
            print(f"      {name:<10} {s['seconds']:7.1f} s wall {s['cpu_seconds']:7.1f} s CPU"
                  f"  {s['cpu_seconds'] / max(s['seconds'], 1e-9):.2f} CPU/wall"
                  f"  {s['concurrency']:.2f} shards at once")  # fmt: skip
    n, big = results["N"], results["4N"]
    print(
        f"  4N / N: input {big['mb'] / n['mb']:.2f}x,"
        f" wall {big['seconds'] / n['seconds']:.2f}x (target <= 4.4x),"
        f" CPU {big['cpu_seconds'] / n['cpu_seconds']:.2f}x, peak RSS {big['peak_mb'] / n['peak_mb']:.2f}x"
        " (target <= 1.2x)"
    )


def test_scale() -> None:
    results = run_benchmark()
    n, big = results["N"], results["4N"]
    assert n["exit"] == big["exit"] == 0
    assert big["seconds"] / n["seconds"] <= 4.4 * big["mb"] / n["mb"] / 4
    assert big["peak_mb"] <= 1.2 * n["peak_mb"]
    for stage in ("ingest", "signals"):
        assert big["stages"][stage]["concurrency"] >= 1.6, stage


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--child", nargs=3, metavar=("STEP", "INPUT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--mb", type=float, default=DEFAULT_MB, help="N: MB of text of the smaller run")
    args = parser.parse_args()
    if args.child:
        _, input_path, out = args.child
        print(json.dumps(child_run(Path(input_path), Path(out))))
        return
    run_benchmark(args.mb)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
