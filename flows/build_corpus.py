"""The `build_corpus` Prefect flow: one task per stage, over one run directory.

`gristmill run` runs it when PREFECT_API_URL names a Prefect server (deployments always do); without one,
the CLI builds in process instead (`flows.build.build_in_process`: the same stages, retries and timeouts,
no temporary Prefect server). A stage that run.json records as done is skipped, so running the flow again
with the same run id resumes; a stage that did not finish (killed, timed out, failed, interrupted)
resumes from its finished shards. Each stage's task has the retries and timeout of the config's `stages:`
section; a retry resumes the same way, and errors in what the user gave (`pipelines.errors.UserError`)
are never retried. Each stage publishes a progress artifact (shards done of N) while it runs.

Run ids: `gristmill run` passes one (--run-id, `run_id:` in the config, or one made from the time). A flow
run of a deployment gets none (`gristmill deploy` leaves it out on purpose), and its id comes from the
flow run's scheduled start time: `<deployment>-YYYYmmdd-HHMMSS` (UTC), so every scheduled run writes its
own run directory, and a retry of the same flow run (same scheduled time) resumes it.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.build import open_run, recording, report_of, retryable
from flows.config import Config
from pipelines.exec import progress
from pipelines.run import RunDir
from pipelines.run.layout import STAGE_OUTPUTS, check_run_id
from pipelines.stages import STAGES, Stage, run_stage


def _publish_stage(run: RunDir, stage: str, summary: dict[str, Any]) -> None:
    """A Markdown artifact per stage: its summary counts and where its outputs are."""
    record = run.record.load()
    seconds = record.get("stages", {}).get(stage, {}).get("seconds")
    lines = [f"### {stage} — run {record.get('run_id')}", ""]
    if seconds is not None:
        lines.append(f"{seconds:.1f} s (this attempt's record in run.json)\n")
    lines += ["| field | value |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {key} | `{_short(value)}` |")
    lines += ["", "outputs:", *[f"- `{_location(run, rel)}`" for rel in STAGE_OUTPUTS[stage]]]
    create_markdown_artifact(
        "\n".join(lines),
        key=f"{artifact_key(str(record.get('run_id')))}-{stage}",
        description=f"gristmill {stage} summary and outputs",
    )


def _location(run: RunDir, rel: str) -> str:
    """Where an output is for the user: its s3:// URI for a run on S3, else its local path."""
    return run.display(run.root / rel)


def _short(value: Any) -> str:
    text = str(value)
    return (text if len(text) <= 200 else text[:197] + "...").replace("|", "\\|")


def _stage_task(stage: Stage) -> Any:
    """The Prefect task of one stage: `run_stage` (skipping a stage recorded as done), then artifacts."""

    @task(name=stage.name, retry_condition_fn=_retry_condition)
    def run_task(run_root: str, config: dict[str, Any]) -> dict[str, Any]:
        run = RunDir(run_root)
        key = f"{artifact_key(str(run.record.load().get('run_id')))}-{stage.name}-progress"
        with progress.listening(ProgressArtifact(key, stage.name)):
            summary = run_stage(run, stage.name, Config.model_validate(config), skip_done=True)
        if stage.name == "report":
            _publish_report(run)
        else:
            _publish_stage(run, stage.name, summary)
        return summary

    return run_task


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed stage task unless the error is the user's (it would fail the same way again)."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(error, BaseException) or retryable(error)


class ProgressArtifact:
    """A Prefect progress artifact per stage: the share of its shards done, updated every few seconds."""

    def __init__(self, key: str, stage: str, every: float = 2.0) -> None:
        self.key, self.stage = key, stage
        self.throttle = progress.Throttle(every)
        self.artifact_id: Any = None

    def __call__(self, snapshot: progress.Snapshot) -> None:
        if not self.throttle.due(snapshot):
            return
        percent = round(100 * snapshot.fraction, 1)
        description = f"{self.stage}: {snapshot.line()}"
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(percent, key=self.key, description=description)
        else:
            update_progress_artifact(self.artifact_id, percent, description=description)


STAGE_TASKS = {stage.name: _stage_task(stage) for stage in STAGES}


def _publish_report(run: RunDir) -> None:
    """The report, a funnel table and the output locations as artifacts."""
    report = json.loads((run.report / "report.json").read_text())
    key = artifact_key(str(report["run_id"]))
    create_markdown_artifact(
        (run.report / "report.md").read_text(),
        key=f"{key}-report",
        description=f"gristmill filter report of run {report['run_id']}",
    )
    create_table_artifact(
        [
            {k: step.get(k) for k in ("stage", "documents_in", "documents_out", "tokens_in", "tokens_out")}
            for step in report["funnel"]
        ],
        key=f"{key}-funnel",
        description=f"documents and tokens in and out of each stage, run {report['run_id']}",
    )
    _publish_outputs(run, str(report["run_id"]))


def _publish_outputs(run: RunDir, run_id: str) -> None:
    """Where the run's outputs are: a Markdown table of every stage, and links to the report and manifest."""
    key = artifact_key(run_id)
    record = run.record.load()
    lines = [
        f"### Outputs of run {run_id}",
        "",
        f"run directory: `{run.uri}`",
        "",
        "| stage | status | seconds | outputs |",
        "|---|---|---|---|",
    ]
    for stage, rels in STAGE_OUTPUTS.items():
        info = record.get("stages", {}).get(stage, {})
        where = "<br>".join(f"`{_location(run, rel)}`" for rel in rels)
        lines.append(f"| {stage} | {info.get('status', '-')} | {info.get('seconds', '-')} | {where} |")
    create_markdown_artifact(
        "\n".join(lines), key=f"{key}-outputs", description=f"where the outputs of run {run_id} are"
    )
    for name, rel in (("report-html", "report/report.html"), ("manifest", "tokens/_manifest.json")):
        path, where = run.root / rel, _location(run, rel)
        create_link_artifact(
            link=path.as_uri() if run.remote is None and path.is_absolute() else where,
            link_text=where,
            key=f"{key}-{name}",
            description=f"{rel} of run {run_id}",
        )


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"gristmill-{run_id}".lower()).strip("-")


def resolve_run_id(config: dict[str, Any], run_id: str | None) -> str:
    """The run id: the parameter, else the config's, else `<deployment or run>-<scheduled start, UTC>`."""
    if run_id:
        return check_run_id(run_id)
    if config.get("run_id"):
        return check_run_id(str(config["run_id"]))
    from prefect.runtime import deployment
    from prefect.runtime import flow_run as runtime_flow_run

    scheduled = runtime_flow_run.scheduled_start_time
    moment = scheduled.astimezone(UTC) if scheduled is not None else datetime.now(UTC)
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", deployment.name or "run")
    return f"{prefix}-{moment:%Y%m%d-%H%M%S}"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run as runtime_flow_run

    params = runtime_flow_run.parameters
    return f"build-corpus-{resolve_run_id(params.get('config') or {}, params.get('run_id'))}"


@flow(name="build_corpus", flow_run_name=_flow_run_name)
def build_corpus(config: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Raw text -> signals -> policy -> near-dedup -> BPE tokenizer -> token shards -> report."""
    cfg = Config.model_validate(config)
    run_id = resolve_run_id(config, run_id)
    logging.getLogger("gristmill").setLevel(logging.INFO)
    run = open_run(cfg, run_id)
    get_run_logger().info("run %s in %s (executor: %s)", run_id, run.root, cfg.executor.kind)
    settings = cfg.model_dump(mode="json")
    with recording(run):
        for stage in STAGES:
            retry = getattr(cfg.stages, stage.name)
            STAGE_TASKS[stage.name].with_options(
                retries=retry.retries,
                retry_delay_seconds=retry.retry_delay_seconds,
                timeout_seconds=retry.timeout_seconds,
            )(str(run.root), settings)
    return report_of(run)
