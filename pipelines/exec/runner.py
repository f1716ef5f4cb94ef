"""Run the data-parallel part of a stage: one task per shard, on local worker processes or on Ray.

A shard task writes one output file atomically; the file's existence is the shard's completion marker,
so a resumed stage runs only the shards that have no output yet. Tasks are picklable objects, so a
cluster executor runs the same tasks: `configure(kind="ray")` (done once per run by the flow from the
config's `executor:` section) sends each shard to a Ray cluster as one `ray.remote` call of `task(i)`.
The stage functions do not change; they keep calling `run_shards`.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("gristmill")


class ShardTask(Protocol):
    """What a stage hands to the runner: a `pipelines.exec.step.ShardStep`, or a wrapper of one
    (`pipelines.run.mirror.ShardUpload`)."""

    def output(self, index: int) -> Path:
        """The file that shard `index` writes last (its completion marker)."""
        ...

    def __call__(self, index: int) -> object:
        """Process shard `index`, writing `output(index)` atomically."""
        ...

    def finish(self) -> None:
        """Called in the driver once the shards have run (also when some failed)."""
        ...


@dataclass(frozen=True)
class ExecutorSettings:
    """Where `run_shards` runs shards: `local` (forked processes) or `ray` (at `address`, if given)."""

    kind: str = "local"
    address: str | None = None


_settings = ExecutorSettings()


def configure(kind: str = "local", address: str | None = None) -> ExecutorSettings:
    """Choose the executor of every later `run_shards` call in this process (returns the previous one)."""
    global _settings
    if kind not in ("local", "ray"):
        raise ValueError(f"unknown executor kind {kind!r} (local or ray)")
    previous, _settings = _settings, ExecutorSettings(kind, address)
    return previous


def settings() -> ExecutorSettings:
    return _settings


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_shards(name: str, task: ShardTask, n_shards: int, workers: int = 0) -> int:
    """Run `task(i)` for every shard without output, on up to `workers` processes (0: every core);
    return how many shards ran. This is the one place that skips finished shards.

    A failing shard does not stop the others; the stage fails at the end naming every failed shard.
    With the `ray` executor, every pending shard is one Ray task (`workers` > 0 caps those in flight).
    """
    pending = [i for i in range(n_shards) if not task.output(i).exists()]
    if len(pending) < n_shards:
        log.info("%s: %d of %d shards already done, resuming", name, n_shards - len(pending), n_shards)
    if not pending:
        return 0
    start = time.perf_counter()
    if _settings.kind == "ray":
        failures = _run_ray(name, task, pending, workers)
        where = f"Ray ({workers or 'all'} in flight)"
    else:
        workers = max(1, min(workers or default_workers(), len(pending)))
        failures = _run_local(name, task, pending, workers)
        where = f"{workers} workers"
    task.finish()  # e.g. an S3 run's wrapper pulls the outputs of shards that ran on other machines
    if failures:
        raise RuntimeError(f"{name}: {len(failures)} of {len(pending)} shards failed: {failures}")
    log.info("%s: %d shards on %s in %.1fs", name, len(pending), where, time.perf_counter() - start)
    return len(pending)


def _call(task: ShardTask, index: int) -> None:
    """Run one shard (in a worker process or a Ray worker)."""
    task(index)


def _run_local(name: str, task: ShardTask, pending: list[int], workers: int) -> dict[int, str]:
    failures: dict[int, str] = {}
    if workers == 1:
        for i in pending:
            try:
                _call(task, i)
            except Exception as exc:
                failures[i] = _describe(exc)
                log.exception("%s: shard %d failed", name, i)
        return failures
    # fork: workers inherit the loaded modules and models instead of importing them again
    context = multiprocessing.get_context("fork")
    records: Any = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_logging, initargs=(records,))
    try:
        futures = {pool.submit(_call, task, i): i for i in pending}
        waiting = set(futures)
        while waiting:
            done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            _forward(records)
            for future in done:
                error = future.exception()
                if error is not None:
                    failures[futures[future]] = _describe(error)
                    log.error("%s: shard %d failed: %s", name, futures[future], _describe(error))
    except BaseException:
        # interrupted (a Prefect timeout, Ctrl-C): stop the shards in flight instead of waiting for them;
        # their temp files are overwritten when the stage resumes
        _terminate(pool)
        raise
    pool.shutdown()
    _forward(records)
    records.close()
    return failures


def _worker_logging(records: Any) -> None:
    """In a forked worker: send `gristmill` log records to the parent instead of through the inherited
    handlers. Those may be Prefect's API log handler, whose queue and background thread do not survive a
    fork (a lock held by the parent's thread at fork time would block the worker's first log line)."""
    logger = logging.getLogger("gristmill")
    logger.handlers = [logging.handlers.QueueHandler(records)]
    logger.propagate = False


def _forward(records: Any) -> None:
    """Emit the workers' log records in this (the parent's) thread, so they reach the flow run's logs."""
    while True:
        try:
            record = records.get_nowait()
        except queue.Empty:
            return
        log.handle(record)


def _terminate(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(5)


def _run_ray(name: str, task: ShardTask, pending: list[int], workers: int) -> dict[int, str]:
    """One Ray task per shard, calling the same picklable `task(i)` a local worker would."""
    ray = _ray()
    remote = ray.remote(num_cpus=1)(_call)
    task_ref = ray.put(task)  # shipped to the object store once, not once per shard
    limit = workers or len(pending)
    todo, running, failures = list(pending), {}, {}
    try:
        while todo or running:
            while todo and len(running) < limit:
                i = todo.pop(0)
                running[remote.remote(task_ref, i)] = i
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i = running.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:
                    cause = getattr(exc, "cause", None) or exc
                    failures[i] = _describe(cause)
                    log.error("%s: shard %d failed on Ray: %s", name, i, failures[i])
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return failures


def _ray() -> Any:
    """The `ray` module, connected to the configured cluster (once per process)."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "executor.kind is ray but Ray is not installed: pip install 'gristmill[ray]'"
        ) from exc
    if not ray.is_initialized():
        address = _settings.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        log.info(
            "Ray: connected to %s (%s CPUs)",
            address or "a new local cluster",
            ray.cluster_resources().get("CPU"),
        )
    return ray


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
