"""The per-shard unit of work of a stage: a picklable step that the runner calls once per shard.

A step writes its shard's files atomically, its completion marker (`output(i)`) last, so a shard whose
marker exists is done: `pipelines.exec.runner` skips it on a resume. `__call__` times `process` and logs
one line per shard with its counts and rates; inside `process`, `advance` reports progress within the
shard (shown by the stage's progress bar or lines, `pipelines.exec.progress`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipelines.exec import progress
from pipelines.run.layout import RunLayout

log = logging.getLogger("gristmill")


class ShardStep:
    """Base of every stage's shard task. Subclasses set `label` and implement `output` and `process`.

    `run_root` is the local run folder (an S3 run's mirror). The layout and the shard list are built once
    per process, not pickled; `process(i)` returns counts: `documents`, optionally `bytes` (for the
    MB/s figure) and any other named counts, which the shard's log line shows.
    """

    label = "shard"

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root
        self._layout: RunLayout | None = None
        self._shards: list[str] | None = None
        self._index = -1  # the shard being processed

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_layout": None}  # the driver's shard list travels with the step

    @property
    def run(self) -> RunLayout:
        if self._layout is None or str(self._layout.root) != self.run_root:
            self._layout, self._shards = RunLayout(Path(self.run_root)), None
        return self._layout

    def shard(self, index: int) -> str:
        """The file name of shard `index` (`NNNNN.parquet`), from a listing made once per process."""
        if self._shards is None:
            self._shards = self.run.shards()
        return self._shards[index]

    def output(self, index: int) -> Path:
        """The file shard `index` writes last: its completion marker."""
        raise NotImplementedError

    # What an S3 run fetches for a shard (`pipelines.run.mirror.ShardUpload`): `plan_files()` first, then
    # `reads(i)`, paths relative to the run (`a|b`: a if it exists, else b). A step without `reads`
    # (None) gets its node's mirror brought up to date instead. `driver_reads`: the patterns of the
    # outputs the stage's driver reads after the shards (None: the shard folders).
    reads: Any = None
    driver_reads: tuple[str, ...] | None = None

    def plan_files(self) -> list[str]:
        """Files every shard of the step reads (plans, the tokenizer), fetched before `reads(i)`."""
        return []

    def text_reads(self, index: int) -> list[str]:
        """The shard's text as later stages read it (clean/, else documents/) and its signals."""
        name = self.shard(index)
        return [f"clean/{name}|documents/{name}", f"signals/{name}"]

    def process(self, index: int) -> dict[str, int]:
        """Write shard `index`'s files; return its counts."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once in the driver after the shards ran (also when some failed)."""

    def advance(self, documents: int, n_bytes: int = 0) -> None:
        """From inside `process`: `documents` (and `n_bytes` of text) done since the last call."""
        progress.report(self._index, documents, n_bytes)

    def __call__(self, index: int) -> dict[str, int]:
        start = time.perf_counter()
        self._index = index
        counts = self.process(index)
        seconds = max(time.perf_counter() - start, 1e-9)
        documents = counts.get("documents", 0)
        extra = "".join(f", {v:,} {k}" for k, v in counts.items() if k not in ("documents", "bytes"))
        rate = f"{documents / seconds:,.0f} docs/s"
        if "bytes" in counts:
            rate += f", {counts['bytes'] / seconds / 1e6:.1f} MB/s"
        if "tokens" in counts:
            rate += f", {counts['tokens'] / seconds:,.0f} tokens/s"
        log.info("%s %s: %s documents%s in %.1fs (%s)", self.label, self.output(index).name, f"{documents:,}",
                 extra, seconds, rate)  # fmt: skip
        return counts
