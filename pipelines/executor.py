"""Run the data-parallel part of a stage (one task per shard) on datatrove's executors.

datatrove gives us worker processes, per-task completion markers (a re-run skips finished shards) and
per-task logs; a stage only supplies a picklable callable that processes shard `i`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("gristmill")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _ShardStep:
    """A datatrove pipeline step that runs `task(rank)`; one datatrove task per shard."""

    def __init__(self, task: Callable[[int], object]) -> None:
        self.task = task

    def __call__(self, data: object, rank: int = 0, world_size: int = 1) -> None:
        if not log.handlers and not logging.getLogger().handlers:  # a fresh worker process
            logging.basicConfig(
                level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
            )
            log.setLevel(logging.INFO)
        self.task(rank)


def run_shards(task: Callable[[int], object], n_shards: int, workers: int, logging_dir: Path) -> None:
    """Run `task(i)` for every shard i in [0, n_shards), skipping shards completed by an earlier attempt.

    `task` must be picklable (a module-level function or an instance of a module-level class) and must
    write its outputs atomically, since a shard is marked complete only after it returns.
    """
    if n_shards == 0:
        return
    from datatrove.executor import LocalPipelineExecutor

    workers = min(workers or default_workers(), n_shards)
    executor = LocalPipelineExecutor(
        pipeline=[_ShardStep(task)],
        tasks=n_shards,
        workers=workers,
        logging_dir=str(logging_dir),
        skip_completed=True,
    )
    executor.run()
    missing = [rank for rank in range(n_shards) if not executor.is_rank_completed(rank)]
    if missing:
        raise RuntimeError(
            f"{len(missing)} shard task(s) failed, e.g. {missing[:5]}; logs in {logging_dir}/logs"
        )
