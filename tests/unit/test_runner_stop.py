"""A stop signal ends a stage's child processes at once instead of waiting for them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.exec import runner
from pipelines.exec.step import ShardStep


@pytest.fixture
def stop_signals() -> Iterator[None]:
    """`runner.stop_on_signals()` for one test, then this process's own handlers again."""
    previous = {signum: signal.getsignal(signum) for signum in runner.STOP_SIGNALS}
    runner.stop_on_signals()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        runner._stop_signal = None


def _signal_self(signum: int, after: float) -> None:
    threading.Timer(after, os.kill, (os.getpid(), signum)).start()


def test_sigterm_stops_a_child_process_instead_of_waiting(stop_signals: None) -> None:
    _signal_self(signal.SIGTERM, 0.5)
    start = time.monotonic()
    with pytest.raises(runner.Interrupted) as stopped:
        runner.in_child(time.sleep, 60)
    assert stopped.value.signum == signal.SIGTERM
    assert time.monotonic() - start < 10
    assert multiprocessing.active_children() == []


class Sleepy(ShardStep):
    def output(self, index: int) -> Path:
        return Path(self.run_root) / f"{index}.done"

    def process(self, index: int) -> dict[str, int]:
        time.sleep(60)
        return {"documents": 0}


def test_ctrl_c_stops_the_shards_in_flight(stop_signals: None, tmp_path: Path) -> None:
    _signal_self(signal.SIGINT, 1.0)
    start = time.monotonic()
    with pytest.raises(runner.Interrupted) as stopped:
        runner.run_shards("sleepy", Sleepy(str(tmp_path)), 4, workers=2)
    assert stopped.value.signum == signal.SIGINT
    assert time.monotonic() - start < 10
    assert multiprocessing.active_children() == []
    assert list(tmp_path.iterdir()) == []  # no shard finished, none left half-written
    with pytest.raises(runner.Interrupted):  # a stop stays a stop: the next stage does not start
        runner.check_interrupt()
