"""The stages of a corpus build, in order, and the one way to run a stage over a run directory.

Every stage is a module with `run(run_dir, config, resume) -> summary`. The Prefect flow
(`flows.build_corpus`) and the stage commands (`gristmill filter`, ...) both go through `run_stage`,
which owns resuming: a stage recorded as done is skipped (when asked), a stage whose last attempt did not
finish (running, failed or interrupted in run.json) resumes from its finished shards, and any other start
begins afresh by deleting the stage's earlier files. While a stage runs, its record in run.json holds
`shards: {done, total}` (what `gristmill status` shows). To add a stage: a module with `run`, and one entry in
STAGES (its output folders go in `pipelines.run.layout`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.config import RunConfig
from pipelines.exec import progress, runner
from pipelines.run import RunDir
from pipelines.run.layout import STAGE_FOLDERS
from pipelines.stages import dedup, ingest, report, signals, token_shards, tokenizer_training

log = logging.getLogger("gristmill")


@dataclass(frozen=True)
class Stage:
    name: str  # in run.json, logs, the flow's task and `stages.<name>` of the config
    run: Callable[[RunDir, RunConfig, bool], dict[str, Any]]
    fresh_start: bool = True  # delete the stage's files before a run that is not a resume
    skip_when_done: bool = True  # with skip_done, a stage recorded as done is not run again
    reads: tuple[str, ...] = ()  # what its driver plans with (`mirror.matches` patterns), pulled first


SHARDS = "_shards.json"
CORPUS = (SHARDS, "clean/*", "signals/*", "dedup/removed.parquet")  # the final corpus (corpus.FinalCorpus)
STAGES = (
    Stage("ingest", ingest.run, reads=("_inputs.json", "_splits.json", SHARDS, "documents/_parts/*.json")),
    Stage("signals", signals.run, reads=(SHARDS, "signals/*")),
    Stage("dedup", dedup.run, reads=(SHARDS, "dedup/signatures/*", "dedup/bands/*")),
    Stage("tokenizer", tokenizer_training.run, reads=CORPUS),
    Stage("tokenize", token_shards.run, reads=(*CORPUS, "tokenizer/*", "tokens/*")),
    # the report always reflects the run as it is now; it keeps what-if pages and its token-count cache
    # (it pulls what it reads itself, `pipelines.report.READS`, so that `gristmill report` does too)
    Stage("report", report.run, fresh_start=False, skip_when_done=False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
RESUMED = ("running", "failed", "interrupted")  # statuses of an attempt that did not finish
SHARDS_RECORD_SECONDS = 5.0  # how often a running stage's shard counts are written to run.json


def restart(run: RunDir) -> None:
    """Discard every result of a run (`gristmill run --force-restart`): each stage's files and record, the
    inputs it recorded and their fingerprints, so that every stage starts afresh (on other inputs too)."""
    for stage in STAGES:
        for path in run.stage_files(stage.name):
            path.unlink()
    run.record.update(stages={}, input_files=None, inputs=None)
    log.info("%s: earlier results discarded (--force-restart)", run.root.name)


def run_stage(run: RunDir, name: str, config: RunConfig, skip_done: bool = False) -> dict[str, Any]:
    """Run one stage and record it in run.json; return its summary."""
    stage = BY_NAME[name]
    runner.check_interrupt()
    status = run.record.stage_status(name)
    if skip_done and stage.skip_when_done and status == "done":
        if name == "ingest":  # every later result stands on the inputs as the ingest read them
            ingest.check_inputs_unchanged(run, config)
        log.info("%s: already done in an earlier attempt, skipping", name)
        return run.record.stage_summary(name)
    resume = status in RESUMED
    if stage.fresh_start and not resume:
        for path in run.stage_files(name):
            path.unlink()
        if run.remote is not None:  # also what the mirror never fetched
            for folder in STAGE_FOLDERS[name]:
                run.remote.delete_prefix(folder)
    with run.stage(name) as summary, progress.listening(_shard_counts(run, name)):
        run.fetch(stage.reads)
        summary.update(stage.run(run, config, resume))
    return summary


def _shard_counts(run: RunDir, name: str) -> progress.Listener:
    """A progress listener that keeps `shards: {done, total}` of stage `name` in run.json."""
    throttle = progress.Throttle(SHARDS_RECORD_SECONDS)

    def record(snapshot: progress.Snapshot) -> None:
        if throttle.due(snapshot) or snapshot.done == snapshot.total:
            run.record.set_stage(name, {"shards": {"done": snapshot.done, "total": snapshot.total}})

    return record
