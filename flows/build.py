"""One corpus build over a run directory, with or without Prefect.

The Prefect flow (`flows.build_corpus`) and the in-process build (`build_in_process`, what `gristmill run`
uses without PREFECT_API_URL) share what is here: checking the run before anything is written
(`pipelines.preflight`), opening and recording it in run.json, which errors are worth a retry, and the
run's final status (done, failed or interrupted).

The in-process build runs the stages of `pipelines.stages.STAGES` in order in this process, as the flow's
tasks would: a stage recorded as done is skipped, and each has the retries and timeout of the config's
`stages:` section. No Prefect server starts, and Ctrl-C or SIGTERM reach only this process and its
workers.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.config import Config
from pipelines.errors import is_user_error
from pipelines.exec import runner
from pipelines.preflight import check_run
from pipelines.run import RunDir
from pipelines.run.record import now
from pipelines.stages import STAGES, run_stage

log = logging.getLogger("gristmill")


class StageTimeout(TimeoutError):
    """A stage ran past `stages.<stage>.timeout_seconds` (retried like any error that is not the user's)."""


def run_root(output: str, run_id: str) -> str:
    """The run directory; a local one as an absolute path, so Ray workers (other cwd) find it too."""
    root = f"{output.rstrip('/')}/{run_id}"
    return root if "://" in root else str(Path(root).absolute())


def retryable(exc: BaseException) -> bool:
    """Whether a retry could succeed: any error but the user's (bad input, output, config, policy)."""
    return isinstance(exc, Exception) and not is_user_error(exc)


def open_run(config: Config, run_id: str) -> RunDir:
    """Check the run, then create and record it (a resume keeps the stages' records)."""
    root = run_root(config.output, run_id)
    check_run(config, root)
    run = RunDir(root).pull().create()
    run.start(run_id, config.model_dump(mode="json"), config.inputs)
    run.record.update(status="running", finished_at=None)
    runner.configure(config.executor.kind, config.executor.address)
    return run


@contextmanager
def recording(run: RunDir) -> Iterator[None]:
    """Record the run's end in run.json: done, failed (an error) or interrupted (Ctrl-C, SIGTERM)."""
    try:
        yield
    except Exception:
        run.record.update(status="failed", finished_at=now())
        raise
    except BaseException:
        run.record.update(status="interrupted", finished_at=None)
        raise
    run.record.update(status="done", finished_at=now())


def report_of(run: RunDir) -> dict[str, Any]:
    return json.loads((run.report / "report.json").read_text())


def build_in_process(config: Config, run_id: str) -> dict[str, Any]:
    """Every stage of the run in this process; returns the report."""
    run = open_run(config, run_id)
    log.info("run %s in %s (executor: %s, in process)", run_id, run.root, config.executor.kind)
    with recording(run):
        for stage in STAGES:
            _run_with_retries(run, stage.name, config)
    return report_of(run)


def _run_with_retries(run: RunDir, name: str, config: Config) -> None:
    settings = getattr(config.stages, name)
    for attempt in range(settings.retries + 1):
        try:
            with _time_limit(settings.timeout_seconds, name):
                run_stage(run, name, config, skip_done=True)
            return
        except Exception as exc:
            if not retryable(exc) or attempt == settings.retries:
                raise
            log.warning("%s: attempt %d of %d failed (%s: %s); resuming in %g s", name, attempt + 1,
                        settings.retries + 1, type(exc).__name__, exc,
                        settings.retry_delay_seconds)  # fmt: skip
            time.sleep(settings.retry_delay_seconds)


@contextmanager
def _time_limit(seconds: float | None, stage: str) -> Iterator[None]:
    """Raise StageTimeout in the block after `seconds` (SIGALRM; only in the main thread)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StageTimeout(f"{stage}: timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
