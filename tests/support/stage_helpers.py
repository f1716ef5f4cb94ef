"""Run stages of a corpus build in-process, the way the flow and the stage commands do."""

from __future__ import annotations

from typing import Any

from pipelines.config import RunConfig
from pipelines.run import RunDir
from pipelines.stages import run_stage


def run_stages(run: RunDir, *names: str, workers: int = 0, **sections: Any) -> dict[str, Any]:
    """Run the named stages with a config of `sections` (e.g. inputs=[...], signals={"policy": p});
    return the last stage's summary."""
    config = RunConfig.model_validate({**sections, "executor": {"workers": workers}})
    summary: dict[str, Any] = {}
    for name in names:
        summary = run_stage(run, name, config)
    return summary


def build(run: RunDir, config: RunConfig, *names: str) -> None:
    """Run the named stages (default: all, in order) with `config`."""
    from pipelines.stages import STAGES

    for name in names or [stage.name for stage in STAGES]:
        run_stage(run, name, config)
