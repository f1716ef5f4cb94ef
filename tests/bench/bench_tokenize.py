"""Tokenization speed: gristmill's tokenize stage against raw `Tokenizer.encode_batch` and datatrove.

Corpus: the real benchmark corpus of tests/bench/real_corpus.py (trafilatura-extracted web pages plus
Gutenberg book chunks, about 68 MB of UTF-8 text, 3,256 documents), laid out as a run directory: four
documents/ shards (as from four input files), signals/ keeping every document, no dedup removals.
Tokenizer: a 32,768-token byte-level BPE (`tokenizer.train_bpe`) trained on a seeded ~20 MB sample of the
corpus, cached under $GRISTMILL_BENCH_CACHE.

- raw: `Tokenizer.encode_batch`, and `encode_batch_fast` (no character offsets), over the documents
  1,000 per call (tokenizers' Rayon pool on every core), counting `len(encoding.ids)`: the ceiling for
  anything built on tokenizers. The target (ours >= 0.9x) is against the faster of the two.
- gristmill: `pipelines.shards.write_token_shards`, the function `gristmill tokenize` runs (plan, parallel
  shard tasks through `pipelines.executor.run_shards`, Parquet with zstd, sha256 and manifest.json), with
  the default settings (so this corpus makes one train and one validation shard), and again with 2 M-token
  shards (many shard tasks).
- datatrove: `DocumentTokenizer` (ParquetReader on documents/, one task per shard, shuffle_documents=False
  so it too only tokenizes and writes) under `LocalPipelineExecutor(workers=1)`: one process whose
  encode_batch uses every core. At its speed the whole corpus takes a minute; set
  GRISTMILL_BENCH_DATATROVE_MB to run it on a prefix (rates are per token, so ratios stay fair).

Each measurement runs in its own child process (a fresh Rayon pool). The machine may be shared: the load
average is printed, and CPU seconds next to wall seconds.

    .venv/bin/python -m pytest -q -s tests/bench/bench_tokenize.py
    .venv/bin/python tests/bench/bench_tokenize.py [--skip-datatrove]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # real_corpus, child

from child import run_child  # noqa: E402

CACHE = Path(os.environ.get("GRISTMILL_BENCH_CACHE", Path.home() / ".cache" / "gristmill" / "bench"))
VOCAB = 32_768
N_SHARDS = 4
DATATROVE_MB = float(os.environ.get("GRISTMILL_BENCH_DATATROVE_MB", "0"))  # 0: whole corpus
TARGET = 0.9  # ours / raw encode_batch
RAW_BATCH = 1_000


def _corpus(max_bytes: float | None = None) -> list[tuple[str, str]]:
    import real_corpus

    return real_corpus.load(int(max_bytes) if max_bytes else None)


def tokenizer_path() -> Path:
    """The cached 32k tokenizer, trained on a seeded ~30% sample of the corpus."""
    import random

    from tokenizer import save, train_bpe

    folder = CACHE / f"tokenizer-{VOCAB}-corpus-v1"
    if not (folder / "tokenizer.json").exists():
        rng = random.Random(0)
        sample = [text for _, text in _corpus() if rng.random() < 0.3]
        save(train_bpe(sample, vocab_size=VOCAB), folder)
    return folder / "tokenizer.json"


def write_run(root: Path, max_bytes: float | None = None) -> dict[str, Any]:
    """A run directory as the stages leave it before `tokenize`: documents/, signals/, tokenizer/."""
    import real_corpus

    from pipelines.run import RunDir
    from tokenizer import TRANSFORMERS_FILES

    docs = _corpus(max_bytes)
    run = RunDir(root).create()
    bounds = [round(k * len(docs) / N_SHARDS) for k in range(N_SHARDS + 1)]
    for k in range(N_SHARDS):
        part = docs[bounds[k] : bounds[k + 1]]
        table = real_corpus.documents_table(part)
        pq.write_table(table, run.documents / f"{k:05d}.parquet", row_group_size=1000, compression="zstd")
        keep = pa.table({"id": table.column("id"), "keep": pa.array([True] * len(part))})
        pq.write_table(keep, run.signals / f"{k:05d}.parquet")
    source = tokenizer_path()
    for name in ("tokenizer.json", *TRANSFORMERS_FILES):
        (run.tokenizer / name).write_bytes((source.parent / name).read_bytes())
    return {"documents": len(docs), "mb": sum(len(t.encode()) for _, t in docs) / 1e6}


def _measure(step: Any) -> dict[str, Any]:
    start, cpu = time.perf_counter(), os.times()
    result = step()
    end = os.times()
    cpu_seconds = sum(end[:4]) - sum(cpu[:4])  # this process and its waited-for children
    result.update(seconds=time.perf_counter() - start, cpu_seconds=cpu_seconds)
    return result


def child_raw(root: Path, variant: str) -> dict[str, Any]:
    """encode_batch ("batch") or encode_batch_fast ("fast": no character offsets, same ids) over
    RAW_BATCH-document calls. (One call over every document is slower still: it holds every Encoding of
    the corpus, token strings and offsets included, at once.)"""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    texts = [
        t
        for p in sorted((root / "documents").glob("*.parquet"))
        for t in pq.read_table(p).column("text").to_pylist()
    ]
    encode = tokenizer.encode_batch_fast if variant == "fast" else tokenizer.encode_batch

    def step() -> dict[str, Any]:
        tokens = 0
        for i in range(0, len(texts), RAW_BATCH):
            tokens += sum(len(e.ids) for e in encode(texts[i : i + RAW_BATCH], add_special_tokens=False))
        return {"tokens": tokens}

    return _measure(step)


def child_gristmill(root: Path, shard_tokens: str) -> dict[str, Any]:
    from pipelines.stages.tokenize import write_token_shards

    from pipelines.config import TokenShardsConfig as TokenizeConfig
    from pipelines.run import RunDir

    run = RunDir(root)
    config = TokenizeConfig(**({"shard_target_tokens": int(shard_tokens)} if int(shard_tokens) else {}))

    def step() -> dict[str, Any]:
        manifest = write_token_shards(run, config, {"run_id": "bench"})
        return {
            "tokens": manifest["totals"]["tokens"],
            "shards": sum(len(s["shards"]) for s in manifest["splits"].values()),
        }

    return _measure(step)


def child_datatrove(root: Path) -> dict[str, Any]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    out = root / "datatrove"

    def step() -> dict[str, Any]:
        pipeline = [
            ParquetReader(str(root / "documents"), glob_pattern="*.parquet", text_key="text", id_key="id"),
            DocumentTokenizer(
                str(out / "tokens"),
                tokenizer_name_or_path=str(root / "tokenizer" / "tokenizer.json"),
                shuffle_documents=False,
                save_final_metadata=False,
            ),
        ]
        LocalPipelineExecutor(pipeline, tasks=N_SHARDS, workers=1, logging_dir=str(out / "logs")).run()
        tokens = sum(p.stat().st_size for p in (out / "tokens").glob("*.ds")) // 2
        return {"tokens": tokens}

    return _measure(step)


CHILDREN = {"raw": child_raw, "gristmill": child_gristmill, "datatrove": child_datatrove}


def _spawn(step: str, *args: str) -> dict[str, Any]:
    return run_child(__file__, step, *args)


def _line(name: str, r: dict[str, Any], raw: dict[str, Any] | None = None) -> str:
    rate = r["tokens"] / r["seconds"]
    ratio = f"  {rate / (raw['tokens'] / raw['seconds']):5.2f}x raw" if raw else ""
    return (
        f"  {name:<42} {r['tokens']:>11,} tokens {r['seconds']:7.1f} s wall {r['cpu_seconds']:7.1f} s CPU"
        f"  {rate / 1e6:6.3f} M tokens/s{ratio}"
    )


def run_benchmark(with_datatrove: bool = True, repeats: int = 2) -> dict[str, Any]:
    """Run every measurement (raw and gristmill `repeats` times, interleaved; best kept), print, return."""
    tokenizer_path()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        full = Path(tmp) / "full"
        results["size"] = write_run(full)
        steps = {
            "raw_batch": ("raw", str(full), "batch"),
            "raw_fast": ("raw", str(full), "fast"),
            "gristmill": ("gristmill", str(full), "0"),
            "gristmill_small": ("gristmill", str(full), "2000000"),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in steps}
        for _ in range(repeats):
            for name, args in steps.items():
                runs[name].append(_spawn(*args))
        for name, measured in runs.items():
            results[name] = min(measured, key=lambda r: r["seconds"])
            results[f"{name}_all"] = [round(r["tokens"] / r["seconds"]) for r in measured]
        if with_datatrove:
            dt_root = full
            if DATATROVE_MB:
                dt_root = Path(tmp) / "prefix"
                results["datatrove_size"] = write_run(dt_root, DATATROVE_MB * 1e6)
            results["datatrove"] = _spawn("datatrove", str(dt_root))
    results["load_after"] = os.getloadavg()
    # the reference is the faster of the two raw figures
    raw = max(results["raw_batch"], results["raw_fast"], key=lambda r: r["tokens"] / r["seconds"])
    results["raw"] = raw
    size = results["size"]
    print(
        f"\ntokenization benchmark: {size['mb']:.1f} MB, {size['documents']:,} documents, vocab {VOCAB:,}, "
        f"{os.cpu_count()} CPUs, load average {results['load_before'][0]:.2f} before / "
        f"{results['load_after'][0]:.2f} after (best of {repeats}; ratios to the faster raw figure)"
    )
    print(_line(f"raw encode_batch ({RAW_BATCH:,} docs/call)", results["raw_batch"], raw))
    print(_line(f"raw encode_batch_fast ({RAW_BATCH:,} docs/call)", results["raw_fast"], raw))
    shards = results["gristmill"]["shards"]
    print(_line(f"gristmill tokenize (default, {shards} shards)", results["gristmill"], raw))
    shards = results["gristmill_small"]["shards"]
    print(_line(f"gristmill tokenize (2M-token, {shards} shards)", results["gristmill_small"], raw))
    if with_datatrove:
        label = f"datatrove DocumentTokenizer{' (prefix)' if DATATROVE_MB else ''}"
        print(_line(label, results["datatrove"], raw))
    print("  every run, tokens/s: " + ", ".join(f"{name} {results[name + '_all']}" for name in steps))
    results["ratio"] = (results["gristmill"]["tokens"] / results["gristmill"]["seconds"]) / (
        raw["tokens"] / raw["seconds"]
    )
    return results


def test_tokenize_speed() -> None:
    results = run_benchmark(with_datatrove=os.environ.get("GRISTMILL_BENCH_SKIP_DATATROVE") != "1")
    assert results["size"]["mb"] >= 50
    assert results["gristmill"]["tokens"] == results["raw"]["tokens"]
    assert results["ratio"] >= TARGET, f"tokenize stage at {results['ratio']:.2f}x raw encode_batch"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--skip-datatrove", action="store_true", help="measure raw and gristmill only")
    parser.add_argument("--repeats", type=int, default=2, help="runs of raw and gristmill (best kept)")
    args = parser.parse_args()
    if args.child:
        step, *rest = args.child
        print(json.dumps(CHILDREN[step](*[Path(rest[0]), *rest[1:]])))
        return
    run_benchmark(with_datatrove=not args.skip_datatrove, repeats=args.repeats)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
