"""Run the data-parallel part of a stage: one task per shard, on local worker processes or on Ray.

A shard task writes one output file atomically; the file's existence is the shard's completion marker,
so a resumed stage runs only the shards that have no output yet. Tasks are picklable objects, so a
cluster executor runs the same tasks: `configure(kind="ray")` (done once per run by the flow from the
config's `executor:` section) sends each shard to a Ray cluster as one `ray.remote` call of `task(i)`.
The stage functions do not change; they keep calling `run_shards`.

Interrupts: `stop_on_signals()` (the CLI calls it) turns SIGINT and SIGTERM into `Interrupted`; the
runner then stops the shards in flight, and a stage that was running is recorded as interrupted.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipelines.exec import progress

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
_stop_signal: int | None = None  # the signal that asked this process to stop
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked this process to stop (`signum` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise `Interrupted` in this process's main thread.

    A raise can be lost (a signal that lands in a fork handler or a finalizer is only printed), so the
    runner checks again while it waits for shards (`check_interrupt`), and blocks both signals while it
    forks its workers.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    global _stop_signal
    _stop_signal = signum
    raise Interrupted(signum)


def check_interrupt() -> None:
    """Raise `Interrupted` if a stop signal arrived in this process (even one whose raise was lost)."""
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)


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
    Progress (shards done of N, documents/s, MB/s, ETA) goes to `pipelines.exec.progress`.
    """
    check_interrupt()
    done = getattr(task, "is_done", None) or (lambda i: task.output(i).exists())
    pending = [i for i in range(n_shards) if not done(i)]
    if len(pending) < n_shards:
        log.info("%s: %d of %d shards already done, resuming", name, n_shards - len(pending), n_shards)
    with progress.StageProgress(name, n_shards, n_shards - len(pending)) as tracker:
        if not pending:
            tracker.close()
            return 0
        start = time.perf_counter()
        if _settings.kind == "ray":
            failures = _run_ray(name, task, pending, workers, tracker)
            where = f"Ray ({workers or 'all'} in flight)"
        else:
            workers = max(1, min(workers or default_workers(), len(pending)))
            failures = _run_local(name, task, pending, workers, tracker)
            where = f"{workers} workers"
        task.finish()  # e.g. an S3 run's wrapper pulls the outputs of shards that ran on other machines
        final = tracker.close()
    if failures:
        raise RuntimeError(f"{name}: {len(failures)} of {len(pending)} shards failed: {failures}")
    log.info("%s: %d shards on %s in %.1fs (%s)", name, len(pending), where, time.perf_counter() - start,
             final.rates())  # fmt: skip
    return len(pending)


def _call(task: ShardTask, index: int) -> object:
    """Run one shard (in a worker process or a Ray worker); return its counts."""
    return task(index)


def _run_local(
    name: str, task: ShardTask, pending: list[int], workers: int, tracker: progress.StageProgress
) -> dict[int, str]:
    failures: dict[int, str] = {}
    if workers == 1:
        for i in pending:
            check_interrupt()
            try:
                tracker.shard_done(i, _call(task, i))
            except Exception as exc:
                failures[i] = _describe(exc)
                tracker.shard_failed(i)
                log.exception("%s: shard %d failed", name, i)
        return failures
    # fork: workers inherit the loaded modules and models instead of importing them again
    context = multiprocessing.get_context("fork")
    messages: Any = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(messages,))
    try:
        # the first submit forks the workers: no stop signal may land in the fork or in a new worker
        # before it chose to ignore SIGINT; one that arrives meanwhile is delivered when unblocked
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            futures = {pool.submit(_call, task, i): i for i in pending}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        waiting = set(futures)
        while waiting:
            check_interrupt()
            done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            _forward(messages, tracker)
            for future in done:
                error = future.exception()
                if error is not None:
                    failures[futures[future]] = _describe(error)
                    tracker.shard_failed(futures[future])
                    log.error("%s: shard %d failed: %s", name, futures[future], _describe(error))
                else:
                    tracker.shard_done(futures[future], future.result())
        pool.shutdown()
    except BaseException:
        # interrupted (a Prefect timeout, Ctrl-C, SIGTERM), also while the pool shuts down: stop the
        # workers instead of waiting for them; temp files of unfinished shards are overwritten on resume
        _terminate(pool)
        raise
    _forward(messages, tracker)
    messages.close()
    return failures


def _worker_init(messages: Any) -> None:
    """In a forked worker: send `gristmill` log records and in-shard progress to the parent, and leave
    interrupts to it (it forked this worker with SIGINT and SIGTERM blocked).

    Log records skip the inherited handlers, which may be Prefect's API log handler, whose queue and
    background thread do not survive a fork (a lock held by the parent's thread at fork time would block
    the worker's first log line). Ctrl-C reaches the whole process group: a worker ignores SIGINT and
    dies on SIGTERM (not the parent's handler), so the parent alone decides, and stops the pool.
    """
    _leave_stops_to_parent()
    logger = logging.getLogger("gristmill")
    logger.handlers = [logging.handlers.QueueHandler(messages)]
    logger.propagate = False
    progress.worker_channel(messages)


def _leave_stops_to_parent() -> None:
    """In a forked child: ignore SIGINT, die on SIGTERM, then take the stop signals blocked at fork."""
    global _stop_signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _stop_signal = None


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in one forked child process, its result pickled back. Ctrl-C, SIGTERM or a timeout
    stop the child instead of waiting for it to finish."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                               initializer=_leave_stops_to_parent)  # fmt: skip
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            future = pool.submit(fn, *args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        while not wait([future], timeout=0.5).done:
            check_interrupt()
        result = future.result()
        pool.shutdown()
    except BaseException:
        _terminate(pool)
        raise
    return result


def _forward(messages: Any, tracker: progress.StageProgress) -> None:
    """Emit the workers' log records in this (the parent's) thread, so they reach the flow run's logs,
    and pass their in-shard progress to the tracker."""
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return
        if isinstance(message, logging.LogRecord):
            log.handle(message)
        else:
            _, shard, documents, n_bytes = message
            tracker.advance(shard, documents, n_bytes)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now; return once they are reaped (at most about 5 s). The pool's manager
    thread reaps a terminated worker too, so it is waited for as well: until it has, a worker that
    already died can still count as alive."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    if manager is not None:
        manager.join(max(0.0, deadline - time.monotonic()))


def _run_ray(
    name: str, task: ShardTask, pending: list[int], workers: int, tracker: progress.StageProgress
) -> dict[int, str]:
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
                    tracker.shard_done(i, ray.get(ref))
                except Exception as exc:
                    cause = getattr(exc, "cause", None) or exc
                    failures[i] = _describe(cause)
                    tracker.shard_failed(i)
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
