"""Stage progress: k of N shards, documents/s, MB/s and ETA, from inside shards running in forked workers."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.exec import progress, runner
from pipelines.exec.step import ShardStep


@pytest.fixture(autouse=True)
def lines_display() -> Iterator[None]:
    yield
    progress.configure("lines", every=10.0)


class CountingStep(ShardStep):
    """Reports half its documents, waits, reports the rest: progress from inside a shard."""

    label = "counting"

    def output(self, index: int) -> Path:
        return Path(self.run_root) / f"{index:05d}.done"

    def process(self, index: int) -> dict[str, int]:
        self.advance(5, 500)
        time.sleep(1.0)
        self.advance(5, 500)
        self.output(index).write_text("done")
        return {"documents": 10, "bytes": 1000}


def test_forked_workers_report_progress_inside_their_shards(tmp_path: Path) -> None:
    seen: list[progress.Snapshot] = []
    (tmp_path / "00000.done").write_text("done")  # finished by an earlier attempt
    with progress.listening(seen.append):
        ran = runner.run_shards("counting", CountingStep(str(tmp_path)), 3, workers=2)
    assert ran == 2
    assert seen[0].done == seen[0].skipped == 1 and seen[0].total == 3
    in_flight = [s for s in seen if s.done == 1 and s.documents > 0]
    assert in_flight, "no progress arrived while the shards ran"
    assert all(s.documents < 20 for s in in_flight)
    final = seen[-1]
    assert final.final and final.done == 3 and final.documents == 20 and final.bytes == 2000
    assert final.eta is None or final.eta == 0


def test_snapshot_rates_eta_and_line() -> None:
    snapshot = progress.Snapshot("signals", total=10, done=4, skipped=2, documents=3000, bytes=6_000_000,
                                 seconds=2.0)  # fmt: skip
    assert snapshot.docs_per_second == 1500 and snapshot.mb_per_second == 3.0
    assert snapshot.eta == pytest.approx(6.0)  # 2 shards in 2 s this attempt, 6 to go
    assert snapshot.line() == "signals: 4 of 10 shards, 3,000 documents, 1,500 docs/s, 3.0 MB/s, ETA 0:06"
    assert progress.Snapshot("x", 4, 2, 2, 0, 0, 1.0).eta is None  # nothing finished this attempt yet


def test_plain_lines_are_logged_periodically(caplog: pytest.LogCaptureFixture) -> None:
    progress.configure("lines", every=1e-9)
    with caplog.at_level(logging.INFO, logger="gristmill"), progress.StageProgress("dedup", 2, 0) as tracker:
        tracker.shard_done(0, {"documents": 7, "bytes": 2_000_000})
        tracker.close()
    assert "dedup: 1 of 2 shards, 7 documents" in caplog.text


def test_terminal_bar_shows_shards_rates_and_eta() -> None:
    progress.configure("bar")
    out = io.StringIO()
    with progress.StageProgress("tokenize", 4, 0, file=out) as tracker:
        tracker.advance(0, 100, 1_000_000)
        tracker.shard_done(0, {"documents": 200, "bytes": 2_000_000})
        tracker.close()
    text = out.getvalue()
    assert "tokenize:" in text and "1/4 shards" in text and "200 documents" in text
    assert "docs/s" in text and "MB/s" in text and "ETA" in text


def test_a_failing_listener_never_stops_a_stage(caplog: pytest.LogCaptureFixture) -> None:
    def broken(snapshot: progress.Snapshot) -> None:
        raise ConnectionError("API down")

    with (
        caplog.at_level(logging.WARNING, logger="gristmill"),
        progress.listening(broken),
        progress.StageProgress("signals", 1, 0) as tracker,
    ):
        tracker.shard_done(0, {"documents": 1})
        assert tracker.close().done == 1
    assert "API down" in caplog.text
