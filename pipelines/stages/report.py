"""The report stage: report/ (HTML, Markdown, JSON) from what the earlier stages stored."""

from __future__ import annotations

from typing import Any

from pipelines.config import RunConfig
from pipelines.report import write_report
from pipelines.run import RunDir


def run(run: RunDir, config: RunConfig, resume: bool) -> dict[str, Any]:
    write_report(run, config.executor.workers)
    return {"path": str(run.report / "report.html")}
