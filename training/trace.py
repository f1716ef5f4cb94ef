"""Per-step data trace: the windows, shards, row groups and documents behind every optimizer step.

Each rank appends one JSON line per step to ``<output>/trace/from-NNNNNN/rank-RRRRR.jsonl``, where
``NNNNNN`` is the step the run started or resumed from::

    {"step": 7, "rank": 0, "world_size": 2,
     "windows": [[0, 812], [0, 13]],
     "sources": [[["train-00000.parquet", 3, 17, 18]], [["train-00001.parquet", 0, 2, 2]]]}

``step`` counts completed optimizer steps, as in metrics.jsonl (step 7 is the 7th update).
``windows`` holds one [source, window] pair per sequence of this rank (``source`` is the position of
the manifest in ``--data``), and ``sources`` per sequence the [shard path relative to its manifest,
row group, first row, last row] pieces it was cut from (rows of the shard, inclusive). A resumed
run writes a new ``from-N`` directory, whose records supersede older directories from step N+1 on.
For an S3 output a rank's file may be followed by parts uploaded at checkpoints
(``rank-RRRRR.jsonl.parts/``, training/logs.py); every record is read once.

``python -m training.trace OUTPUT --step N`` prints the documents (ids included) of a step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from training import storage

TRACE_DIR = "trace"


class TraceWriter:
    """Appends this rank's per-step records (a no-op when ``root`` is None)."""

    def __init__(self, root: Path | None, start_step: int, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.path = None
        self._fh = None
        if root is not None:
            self.path = root / TRACE_DIR / f"from-{start_step:06d}" / f"rank-{rank:05d}.jsonl"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w")

    @property
    def relative_path(self) -> str | None:
        return None if self.path is None else "/".join(self.path.parts[-3:])

    def write(self, step: int, windows: list[list[int]], sources: list[list[list[Any]]]) -> None:
        if self._fh is None:
            return
        record = {
            "step": step,
            "rank": self.rank,
            "world_size": self.world_size,
            "windows": windows,
            "sources": sources,
        }
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def load_trace(output: str) -> dict[int, list[dict[str, Any]]]:
    """Every step's records (one per rank, ordered by rank), later ``from-N`` runs superseding."""
    root = f"{storage.normalize(output)}/{TRACE_DIR}"
    by_run: dict[int, list[str]] = {}
    for name in storage.list_files(root):
        run, _, file = name.partition("/")
        if run.startswith("from-") and file.endswith(".jsonl"):
            by_run.setdefault(int(run.removeprefix("from-")), []).append(name)
    steps: dict[int, dict[int, dict[str, Any]]] = {}
    for start in sorted(by_run):
        fresh: dict[int, dict[int, dict[str, Any]]] = {}
        for name in by_run[start]:  # a rank's whole file and the parts uploaded after it
            for line in storage.read_bytes(f"{root}/{name}").decode().splitlines():
                if line.strip():
                    record = json.loads(line)
                    fresh.setdefault(record["step"], {})[record["rank"]] = record
        for step in [s for s in steps if s > start]:
            del steps[step]
        steps.update(fresh)
    return {s: [records[r] for r in sorted(records)] for s, records in sorted(steps.items())}


def _document_ids(manifest_uri: str, shard: str, row_group: int, first: int, last: int) -> list[str]:
    """Ids of rows ``first..last`` of ``shard``, read from its ``id`` column."""
    from training.shards import _chunk_range, _column, _RangedFile, read_footer

    uri = storage.join(storage.parent(manifest_uri), shard)
    size = storage.size(uri)
    md = read_footer(uri, size)
    start, length = _chunk_range(_column(md, row_group, "id"))
    source = _RangedFile(uri, size, {start: storage.read_range(uri, start, length)})
    ids = pq.ParquetFile(source, metadata=md).read_row_group(row_group, columns=["id"]).column(0).to_pylist()
    offset = sum(md.row_group(r).num_rows for r in range(row_group))
    return ids[first - offset : last - offset + 1]


def step_documents(output: str, step: int) -> list[dict[str, Any]]:
    """Per sequence of ``step`` (all ranks): its window and the shards, rows and document ids it read."""
    from training.checkpoint import resolve

    trace = load_trace(output)
    if step not in trace:
        raise KeyError(f"no trace of step {step} under {output}")
    store, name = resolve(output)
    manifests = [d["manifest"] for d in store.read_json(name, "config.json")["data"]["sources"]]
    out = []
    for record in trace[step]:
        for (source, window), pieces in zip(record["windows"], record["sources"], strict=True):
            docs = [
                {
                    "shard": shard,
                    "row_group": rg,
                    "rows": [first, last],
                    "ids": _document_ids(manifests[source], shard, rg, first, last),
                }
                for shard, rg, first, last in pieces
            ]
            out.append(
                {"rank": record["rank"], "manifest": manifests[source], "window": window, "pieces": docs}
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.trace", description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="training output directory (local or s3://)")
    p.add_argument("--step", type=int, required=True, help="optimizer step, as in metrics.jsonl")
    args = p.parse_args(argv)
    try:
        for row in step_documents(args.output, args.step):
            print(json.dumps(row))
    except (KeyError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
