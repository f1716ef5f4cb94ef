"""Progress of a stage's shards: k of N, documents/s, MB/s and an ETA.

`exec.runner.run_shards` opens one `StageProgress` per call and tells it when a shard finishes; a step
reports documents and bytes from inside a shard (`ShardStep.advance` -> `report`), from a forked worker
through the runner's message queue. What it shows: a tqdm bar (`configure("bar")`, what the CLI picks on
a terminal), a log line every `every` seconds (`"lines"`, the default: CI, log files, Prefect workers) or
nothing (`"off"`); and every `Snapshot` goes to the listeners (`listening`), e.g. the flow's Prefect
progress artifact and the stage's `shards` entry in run.json.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger("gristmill")

DISPLAYS = ("bar", "lines", "off")
ADVANCE_SECONDS = 0.5  # at most this often does in-shard progress reach the driver and the listeners


@dataclass(frozen=True)
class Snapshot:
    """Where one `run_shards` call stands. Counts are of this attempt; `done` includes shards that
    earlier attempts finished (`skipped`)."""

    stage: str
    total: int
    done: int
    skipped: int
    documents: int
    bytes: int
    seconds: float
    final: bool = False

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def docs_per_second(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    @property
    def mb_per_second(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e6

    @property
    def eta(self) -> float | None:
        """Seconds left at this attempt's pace per finished shard (None before the first one)."""
        finished = self.done - self.skipped
        if finished <= 0:
            return None
        return (self.total - self.done) * self.seconds / finished

    def rates(self) -> str:
        text = f"{self.documents:,} documents, {self.docs_per_second:,.0f} docs/s"
        if self.bytes:
            text += f", {self.mb_per_second:.1f} MB/s"
        return text

    def line(self) -> str:
        eta = "" if self.eta is None or self.final else f", ETA {_clock(self.eta)}"
        return f"{self.stage}: {self.done} of {self.total} shards, {self.rates()}{eta}"


Listener = Callable[[Snapshot], None]
_listeners: list[Listener] = []
_display = "lines"
_every = float(os.environ.get("GRISTMILL_PROGRESS_SECONDS") or 10)
_current: StageProgress | None = None  # in the driver, while run_shards runs
_channel: Any = None  # in a forked worker: the queue to the driver (set by the runner)
_pending: list[int] = [-1, 0, 0]  # in a worker: shard, documents and bytes not yet sent
_last_sent = 0.0


def configure(display: str | None = None, every: float | None = None) -> None:
    """How progress shows in this process: `bar`, `lines` (every `every` seconds) or `off`."""
    global _display, _every
    if display is not None:
        if display not in DISPLAYS:
            raise ValueError(f"progress display must be one of {DISPLAYS}, got {display!r}")
        _display = display
    if every is not None:
        _every = every


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every snapshot of the `run_shards` calls inside the block to `listener` too."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class Throttle:
    """`due(snapshot)`: true for the first and the final snapshot, else at most every `every` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last: float | None = None

    def due(self, snapshot: Snapshot) -> bool:
        now = time.monotonic()
        if snapshot.final or self.last is None or now - self.last >= self.every:
            self.last = now
            return True
        return False


class StageProgress:
    """The driver's view of one `run_shards` call: finished shards and in-shard counts."""

    def __init__(self, stage: str, total: int, skipped: int, file: IO[str] | None = None) -> None:
        self.stage, self.total, self.skipped = stage, total, skipped
        self.finished: dict[int, tuple[int, int]] = {}  # shard -> (documents, bytes) of this attempt
        self.partial: dict[int, tuple[int, int]] = {}  # shards in flight
        self.start = time.perf_counter()
        self.last_advance = 0.0
        self.views: list[Listener] = [*_views(file), *_listeners]
        self._emit(self.snapshot())

    def __enter__(self) -> StageProgress:
        global _current
        _current = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _current
        _current = None
        if exc[0] is not None:  # stopped by an error or an interrupt: where it stood
            self.close()
        for view in self.views:
            close = getattr(view, "close", None)
            if close is not None:
                close()

    def advance(self, shard: int, documents: int, n_bytes: int) -> None:
        """Documents and bytes of a shard in flight, since its last report."""
        if shard in self.finished:
            return
        docs, size = self.partial.get(shard, (0, 0))
        self.partial[shard] = (docs + documents, size + n_bytes)
        now = time.perf_counter()
        if now - self.last_advance >= ADVANCE_SECONDS:
            self.last_advance = now
            self._emit(self.snapshot())

    def shard_done(self, shard: int, counts: object = None) -> None:
        """A shard finished; its returned counts (if any) replace what it reported on the way."""
        reported = self.partial.pop(shard, (0, 0))
        if isinstance(counts, dict) and "documents" in counts:
            reported = (int(counts["documents"]), int(counts.get("bytes", 0)))
        self.finished[shard] = reported
        self._emit(self.snapshot())

    def shard_failed(self, shard: int) -> None:
        """A shard failed: what it reported no longer counts."""
        self.partial.pop(shard, None)

    def snapshot(self, final: bool = False) -> Snapshot:
        counted = [*self.finished.values(), *self.partial.values()]
        return Snapshot(
            stage=self.stage,
            total=self.total,
            done=self.skipped + len(self.finished),
            skipped=self.skipped,
            documents=sum(c[0] for c in counted),
            bytes=sum(c[1] for c in counted),
            seconds=time.perf_counter() - self.start,
            final=final,
        )

    def close(self) -> Snapshot:
        """Send the final snapshot and return it."""
        final = self.snapshot(final=True)
        self._emit(final)
        return final

    def _emit(self, snapshot: Snapshot) -> None:
        for view in list(self.views):
            try:
                view(snapshot)
            except Exception as exc:  # a listener (an API, a file) must never stop a stage
                log.warning("progress: %s failed (%s: %s); not called again", view, type(exc).__name__, exc)
                self.views.remove(view)


def report(shard: int, documents: int, n_bytes: int) -> None:
    """From inside shard `shard`: `documents` and `n_bytes` processed since the last call."""
    global _last_sent
    if _channel is None:
        if _current is not None:
            _current.advance(shard, documents, n_bytes)
        return  # a Ray worker: its shard's counts reach the driver when the shard finishes
    if _pending[0] != shard:
        _flush()
        _pending[0] = shard
    _pending[1] += documents
    _pending[2] += n_bytes
    now = time.monotonic()
    if now - _last_sent >= ADVANCE_SECONDS:
        _last_sent = now
        _flush()


def _flush() -> None:
    if _channel is not None and _pending[0] >= 0 and (_pending[1] or _pending[2]):
        _channel.put(("progress", _pending[0], _pending[1], _pending[2]))
    _pending[1] = _pending[2] = 0


def worker_channel(channel: Any) -> None:
    """In a forked worker: send in-shard progress to the driver through `channel`."""
    global _channel, _current
    _channel, _current = channel, None
    _pending[:] = [-1, 0, 0]
    _listeners.clear()


def _views(file: IO[str] | None) -> list[Listener]:
    if _display == "bar":
        return [_Bar(file or sys.stderr)]
    if _display == "lines":
        return [_Lines(_every)]
    return []


class _Lines:
    """A log line every `every` seconds while a stage runs (the runner logs the final one)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = time.monotonic()

    def __call__(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if not snapshot.final and self.every > 0 and now - self.last >= self.every:
            self.last = now
            log.info("%s", snapshot.line())


class _Bar:
    """A tqdm bar over the shards, with documents/s, MB/s and the ETA after it."""

    def __init__(self, file: IO[str]) -> None:
        from tqdm import tqdm

        self.bar: Any = None
        self.make = lambda s: tqdm(
            total=s.total,
            initial=s.done,
            desc=s.stage,
            unit="shard",
            file=file,
            dynamic_ncols=True,
            leave=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} shards{postfix}",  # tqdm adds ", "
        )

    def __call__(self, snapshot: Snapshot) -> None:
        if self.bar is None:
            self.bar = self.make(snapshot)
        self.bar.n = snapshot.done
        eta = "" if snapshot.eta is None or snapshot.final else f", ETA {_clock(snapshot.eta)}"
        self.bar.set_postfix_str(snapshot.rates() + eta, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
