"""The files of a run directory that two builds of the same corpus must write byte for byte alike."""

from __future__ import annotations

from pathlib import Path

# What a build writes, minus what holds timings or absolute paths (run.json, report/*, dedup/summary.json,
# _inputs.json).
COMPARED = (
    "documents/*.parquet",
    "quarantine/*.jsonl",
    "clean/*.parquet",
    "signals/*.parquet",
    "_policy.yaml",
    "dedup/signatures/*.parquet",
    "dedup/bands/*.parquet",
    "dedup/removed.parquet",
    "dedup/clusters.parquet",
    "tokenizer/tokenizer.json",
    "tokens/*.parquet",
    "tokens/_manifest.json",
)


def run_outputs(root: Path, extra: tuple[str, ...] = ()) -> dict[str, bytes]:
    """{path relative to the run: bytes} of every compared file (and `extra` patterns) under `root`."""
    found = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for pattern in (*COMPARED, *extra)
        for p in root.glob(pattern)
    }
    assert "tokens/_manifest.json" in found and "dedup/removed.parquet" in found, sorted(found)
    return found
