"""A training run's logs: metrics.jsonl, the per-step data trace, CUDA memory and profiler windows.

For a local output the logs are files appended in the output directory. For an ``s3://`` output
they are appended in a local staging directory, and each :meth:`RunLogs.sync` (every checkpoint)
uploads only the lines added since the previous one, as a part ``<log>.parts/NNNNNN.jsonl``; when the
run ends the whole file is uploaded once and its parts deleted. :func:`read_jsonl` reads a log either
way (the whole file, then any parts, each line once), so the upload traffic of a run grows with its
length, not with its square.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training import storage
from training.checkpoint import CheckpointStore
from training.trace import TRACE_DIR, TraceWriter

METRICS = "metrics.jsonl"
PROFILE_DIR = "profile"


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, local or on S3, with the parts uploaded after it."""
    uri = storage.normalize(uri)
    try:
        lines = storage.read_bytes(uri).decode().splitlines()
    except storage.NotFound:
        lines = []
    for name in sorted(storage.list_files(f"{uri}.parts")):
        lines += storage.read_bytes(f"{uri}.parts/{name}").decode().splitlines()
    return [json.loads(line) for line in dict.fromkeys(line for line in lines if line.strip())]


def load_metrics(output: str) -> list[dict[str, Any]]:
    """Every record of a training output's metrics.jsonl (local or ``s3://``)."""
    return read_jsonl(f"{storage.normalize(output)}/{METRICS}")


class JsonlLog:
    """A local JSON-lines file mirrored to ``uri`` by part uploads (nothing to upload when None)."""

    def __init__(self, path: Path, uri: str | None) -> None:
        self.path, self.uri = path, uri
        self._synced = path.stat().st_size if path.is_file() else 0
        self._parts = 0

    def sync(self) -> None:
        """Upload the lines written since the last sync as the next part."""
        if self.uri is None or not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._synced)
            data = fh.read()
        if data:
            self._parts += 1
            storage.write_bytes(f"{self.uri}.parts/{self._parts:06d}.jsonl", data)
            self._synced += len(data)

    def finish(self) -> None:
        """Upload the whole file and delete its parts."""
        if self.uri is None or not self.path.is_file():
            return
        storage.upload_file(self.path, self.uri)
        storage.delete_tree(f"{self.uri}.parts")
        self._synced, self._parts = self.path.stat().st_size, 0


class RunLogs:
    """metrics.jsonl (rank 0) and this rank's trace, in the output directory or, for an S3 output, in
    a local mirror synced by part uploads. Records after ``start_step`` left by an abandoned run are
    dropped."""

    def __init__(
        self, store: CheckpointStore, rank: int, world_size: int, start_step: int, trace: bool
    ) -> None:
        self.store, self.rank = store, rank
        self.root = store.staging / "logs" if store.remote else Path(store.output)
        self.metrics_path = self.root / METRICS
        remote = store.uri(METRICS) if store.remote else None
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            self._restart_metrics(start_step, remote)
            self._drop_abandoned_traces(start_step)
        if dist.is_initialized():
            dist.barrier()
        self.metrics = JsonlLog(self.metrics_path, remote)
        self.trace = TraceWriter(self.root if trace else None, start_step, rank, world_size)
        trace_uri = store.uri(self.trace.relative_path) if store.remote and self.trace.relative_path else None
        self.trace_log = JsonlLog(self.trace.path, trace_uri) if self.trace.path is not None else None

    def _restart_metrics(self, start_step: int, remote: str | None) -> None:
        records = read_jsonl(remote or str(self.metrics_path))
        kept = [r for r in records if r["step"] <= start_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if remote is not None:  # one whole upload per invocation, then parts
            JsonlLog(self.metrics_path, remote).finish()

    def _drop_abandoned_traces(self, start_step: int) -> None:
        trace_root = f"{self.store.output}/{TRACE_DIR}"
        for name in storage.list_dirs(trace_root):
            if name.startswith("from-") and int(name.removeprefix("from-")) >= start_step:
                storage.delete_tree(f"{trace_root}/{name}")
                if self.store.remote:
                    storage.delete_tree(self.root / TRACE_DIR / name)

    def metric(self, record: dict[str, Any]) -> None:
        """Print a record and append it to metrics.jsonl (rank 0 only)."""
        if self.rank != 0:
            return
        parts = [f"{record['type']} step {record['step']}"]
        for key, value in record.items():
            if key not in ("type", "step") and not isinstance(value, dict | list):
                parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        print(" | ".join(parts), flush=True)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def upload(self, path: Path) -> None:
        """Copy a finished file under the staging root (a profile) to the S3 output."""
        if self.store.remote:
            storage.upload_file(path, self.store.uri(path.relative_to(self.root).as_posix()))

    def sync(self) -> None:
        """Flush; for an S3 output upload the lines logged since the last sync."""
        self.trace.flush()
        if self.rank == 0:
            self.metrics.sync()
        if self.trace_log is not None:
            self.trace_log.sync()

    def close(self) -> None:
        """Flush and, for an S3 output, upload the whole logs once."""
        self.trace.close()
        if self.rank == 0:
            self.metrics.finish()
        if self.trace_log is not None:
            self.trace_log.finish()


def cuda_memory(device: torch.device) -> dict[str, float]:
    """Peak allocated and reserved GiB of the CUDA caching allocator since the last call (no sync)."""
    if device.type != "cuda":
        return {}
    stats = {
        "cuda_max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "cuda_max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }
    torch.cuda.reset_peak_memory_stats(device)
    return stats


class ProfilerWindow:
    """A ``torch.profiler`` window over the steps after ``start`` completed ones (``steps`` of them),
    written as a Chrome trace per rank to ``root/profile/``; off when ``start`` is None."""

    def __init__(self, start: int | None, steps: int, device: torch.device, root: Path, rank: int) -> None:
        self.start, self.steps, self.device, self.rank = start, steps, device, rank
        self.dir = root / PROFILE_DIR
        self._profiler: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        """Called with the number of completed steps before each step."""
        if step == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, profile_memory=True)
            self._profiler.__enter__()

    def after_step(self, done: int) -> Path | None:
        """Called after each step; returns the trace file when the window closes."""
        if self._profiler is None or self.start is None or done < self.start + self.steps:
            return None
        return self.close(done)

    def close(self, done: int) -> Path | None:
        """End the window early (the run stopped inside it) or on time; the trace file, if any."""
        profiler, self._profiler = self._profiler, None
        if profiler is None or self.start is None:
            return None
        profiler.__exit__(None, None, None)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"steps-{self.start + 1:06d}-{done:06d}-rank-{self.rank:05d}.json"
        profiler.export_chrome_trace(str(path))
        if self.rank == 0:
            sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            print(f"profile of steps {self.start + 1}-{done} (rank 0, {path.name}):", flush=True)
            print(profiler.key_averages().table(sort_by=sort, row_limit=15), flush=True)
        return path
