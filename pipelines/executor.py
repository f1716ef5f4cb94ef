"""Run the data-parallel part of a stage: one task per shard, on local worker processes.

A shard task writes one output file atomically; the file's existence is the shard's completion marker,
so a resumed stage runs only the shards that have no output yet. Tasks are picklable objects, which is
also what datatrove's Slurm and Ray executors take, so a cluster executor can run the same tasks.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol

log = logging.getLogger("gristmill")


class ShardTask(Protocol):
    """What a stage hands to the executor."""

    def output(self, index: int) -> Path:
        """The file that shard `index` writes last (its completion marker)."""
        ...

    def __call__(self, index: int) -> object:
        """Process shard `index`, writing `output(index)` atomically."""
        ...


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_shards(name: str, task: ShardTask, n_shards: int, workers: int = 0) -> None:
    """Run `task(i)` for every shard without output, on up to `workers` processes (0: every core).

    A failing shard does not stop the others; the stage fails at the end naming every failed shard.
    """
    pending = [i for i in range(n_shards) if not task.output(i).exists()]
    if len(pending) < n_shards:
        log.info("%s: %d of %d shards already done, resuming", name, n_shards - len(pending), n_shards)
    workers = max(1, min(workers or default_workers(), len(pending)))
    start = time.perf_counter()
    failures: dict[int, str] = {}
    if workers == 1:
        for i in pending:
            try:
                task(i)
            except Exception as exc:
                failures[i] = _describe(exc)
                log.exception("%s: shard %d failed", name, i)
    else:
        # fork: workers inherit the loaded modules and models instead of importing them again
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(task, i): i for i in pending}
            for future in as_completed(futures):
                error = future.exception()
                if error is not None:
                    failures[futures[future]] = _describe(error)
                    log.error("%s: shard %d failed: %s", name, futures[future], _describe(error))
    if failures:
        raise RuntimeError(f"{name}: {len(failures)} of {len(pending)} shards failed: {failures}")
    log.info("%s: %d shards on %d workers in %.1fs", name, len(pending), workers, time.perf_counter() - start)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
