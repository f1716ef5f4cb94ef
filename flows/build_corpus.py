"""The `build_corpus` Prefect flow: one task per stage, over one run directory.

Without PREFECT_API_URL, Prefect runs it in ephemeral mode (a temporary local API, no server to set up).
A stage that run.json records as done is skipped, so running the flow again with the same run id resumes.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import RunConfig
from pipelines import stages
from pipelines.dedup import DedupConfig
from pipelines.policy import policy_sha256
from pipelines.rundir import RunDir, now
from pipelines.shards import TokenizeConfig, config_sha256


def _skip_if_done(run: RunDir, stage: str) -> bool:
    if run.stage_status(stage) == "done":
        get_run_logger().info("%s: already done in an earlier attempt, skipping", stage)
        return True
    return False


@task(name="ingest")
def ingest_task(run_root: str, inputs: list[str], workers: int) -> dict[str, Any]:
    run = RunDir(run_root)
    if _skip_if_done(run, "ingest"):
        return run.load()["stages"]["ingest"]["summary"]
    return stages.run_ingest(run, inputs, workers)


@task(name="signals")
def signals_task(run_root: str, policy: str | None, langid_model: str | None, workers: int) -> dict[str, Any]:
    run = RunDir(run_root)
    if _skip_if_done(run, "signals"):
        return run.load()["stages"]["signals"]["summary"]
    return stages.run_signals(run, policy, langid_model, workers)


@task(name="dedup")
def dedup_task(run_root: str, config: dict[str, Any], workers: int) -> dict[str, Any]:
    run = RunDir(run_root)
    if _skip_if_done(run, "dedup"):
        return run.load()["stages"]["dedup"]["summary"]
    return stages.run_dedup(run, DedupConfig(**config), workers)


@task(name="tokenizer")
def tokenizer_task(run_root: str, config: dict[str, Any]) -> dict[str, Any]:
    run = RunDir(run_root)
    if _skip_if_done(run, "tokenizer"):
        return run.load()["stages"]["tokenizer"]["summary"]
    return stages.run_tokenizer_training(run, **config)


@task(name="tokenize")
def tokenize_task(run_root: str, config: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    run = RunDir(run_root)
    if _skip_if_done(run, "tokenize"):
        return run.load()["stages"]["tokenize"]["summary"]
    return stages.run_tokenize(run, TokenizeConfig(**config), lineage)


@task(name="report")
def report_task(run_root: str, workers: int) -> dict[str, Any]:
    """Write report/ and publish the Markdown report and a summary table as Prefect artifacts."""
    run = RunDir(run_root)
    report = stages.run_report(run, workers)
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
    return report


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"gristmill-{run_id}".lower()).strip("-")


@flow(name="build_corpus", flow_run_name="build-corpus-{run_id}")
def build_corpus(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Raw text -> signals -> policy -> near-dedup -> BPE tokenizer -> token shards -> report."""
    cfg = RunConfig.model_validate(config)
    run = RunDir(f"{cfg.output.rstrip('/')}/{run_id}").create()
    run.start(run_id, cfg.model_dump(mode="json"), cfg.inputs)
    workers = cfg.executor.workers
    ingest_task(str(run.root), cfg.inputs, workers)
    signals_task(str(run.root), cfg.signals.policy, cfg.signals.langid_model, workers)
    dedup_task(str(run.root), cfg.dedup.model_dump(), workers)
    tokenizer_task(str(run.root), cfg.tokenizer.model_dump())
    lineage = {
        "run_id": run_id,
        "config_sha256": config_sha256(cfg.model_dump(mode="json")),
        "policy_sha256": policy_sha256(cfg.signals.policy),
        "inputs": cfg.inputs,
    }
    tokenize_task(str(run.root), cfg.tokenize.model_dump(), lineage)
    report = report_task(str(run.root), workers)
    run.update(status="done", finished_at=now())
    return report
