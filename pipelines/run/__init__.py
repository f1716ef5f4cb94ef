"""The run directory: its layout, its record (run.json) and, for an `s3://` run, its local mirror.

A run directory is a local folder or an `s3://bucket/prefix` URI. Stages always read and write local
files: an S3 run works in its mirror (`pipelines.run.mirror`), which `pull()` brings up to date and every
stage pushes back (per shard, then per stage).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.io import s3
from pipelines.run.files import local_path
from pipelines.run.layout import STAGE_COMMIT_FILES, RunLayout
from pipelines.run.mirror import RemoteRun, ShardUpload
from pipelines.run.record import RunRecord, now


class RunDir(RunLayout):
    """One run directory: its paths (RunLayout), `record` (run.json) and `remote` (None when local).

    `root` is always a local folder: the run itself, or an S3 run's mirror. `uri` is what the user named.
    Making a RunDir of a URI reads nothing remote; `pull()` (opening the run) lists it and brings run.json
    up to date; `fetch(patterns)` pulls the files a stage's driver plans with; shard tasks fetch what
    they read themselves (`mirror.ShardUpload`); `pull_all()` pulls everything. A mirror folder remembers
    its remote, so `RunDir(str(run.root))` (what stages hand to worker processes) is backed by S3 again.
    """

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.remote: RemoteRun | None
        if s3.is_s3(text):
            self.remote = RemoteRun(text)
            super().__init__(self.remote.root)
        else:
            super().__init__(local_path(text))
            self.remote = RemoteRun.of_mirror(self.root)
        self.uri = str(self.remote.uri) if self.remote else str(self.root)
        push = None if self.remote is None else (lambda path: self.remote.push_files([path]))  # type: ignore[union-attr]
        self.record = RunRecord(self.run_json, push)

    def pull(self) -> RunDir:
        """Open an S3 run: list it and bring run.json up to date (nothing to do for a local run)."""
        if self.remote is not None:
            self.remote.open()
        return self

    def fetch(self, patterns: tuple[str, ...] | list[str]) -> RunDir:
        """Pull the files of an S3 run matching `patterns` (`mirror.matches`: `folder/*`, `folder/**` or a
        path), new or changed ones only."""
        if self.remote is not None:
            self.remote.pull_matching(patterns)
        return self

    def pull_all(self) -> RunDir:
        """Bring the whole mirror of an S3 run up to date."""
        if self.remote is not None:
            self.remote.pull()
        return self

    def create(self) -> RunDir:
        super().create()
        return self

    def display(self, path: Path) -> str:
        """Where a file of this run lives for the user: its S3 URI for an S3 run, else the path."""
        if self.remote is None:
            return str(path)
        return str(self.remote.uri.join(path.relative_to(self.root).as_posix()))

    def start(self, run_id: str, config: dict[str, Any], inputs: list[Any]) -> None:
        """Record the run in run.json with the URIs of its inputs (an S3 run also records its URI and
        endpoint)."""
        extra = {} if self.remote is None else {"storage": {"uri": self.uri, "endpoint": s3.endpoint()}}
        uris = [i if isinstance(i, str) else getattr(i, "uri", None) or i["uri"] for i in inputs]
        self.record.start(run_id, config, uris, **extra)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record running/done/failed/interrupted with its summary counts in run.json.

        An error is `failed`; Ctrl-C, SIGTERM and other exits that are not errors (Prefect's termination
        signal) are `interrupted`. Both resume from the finished shards on the next start.

        On an S3 run the stage starts by pushing what changed locally since the last sync (the deletions
        of a stage that starts afresh) and deleting its remote commit files (no manifest ever lists
        shards being rewritten); it is recorded done only after `sync()` uploaded its outputs.
        """
        if self.remote is not None:
            self.remote.sync()
            for rel in STAGE_COMMIT_FILES.get(name, ()):
                self.remote.delete_remote(rel)
        self.record.set_stage(name, {"status": "running", "started_at": now()})
        summary: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield summary
            self.sync()
        except BaseException as exc:
            seconds = round(time.perf_counter() - start, 3)
            if isinstance(exc, Exception):
                error = f"{type(exc).__name__}: {exc}"
                self.record.set_stage(name, {"status": "failed", "error": error, "seconds": seconds})
            else:
                stopped = {"status": "interrupted", "seconds": seconds, "interrupted_at": now()}
                self.record.set_stage(name, stopped)
            raise
        seconds = round(time.perf_counter() - start, 3)
        self.record.set_stage(
            name, {"status": "done", "finished_at": now(), "seconds": seconds, "summary": summary}
        )

    def delete_folder(self, folder: Path) -> None:
        """Delete a folder of the run, and on S3 every object under it (also those other machines wrote)."""
        shutil.rmtree(folder, ignore_errors=True)
        if self.remote is not None:
            self.remote.delete_prefix(self.remote.rel(folder))

    def sync(self) -> None:
        """Push everything new or changed to S3 (nothing to do for a local run)."""
        if self.remote is not None:
            self.remote.sync()

    def synced(self, task: Any) -> Any:
        """A stage's shard task: as is for a local run; for an S3 run, one that uploads each shard's
        files as soon as the shard is done (after pushing what the stage wrote so far, so a shard on
        another machine finds everything it reads)."""
        if self.remote is None:
            return task
        self.remote.sync()
        return ShardUpload(task, str(self.root), str(self.remote.uri))
