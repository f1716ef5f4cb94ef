"""Each stage of a corpus build as one function over a run directory, for any orchestrator to call.

These are what the Prefect tasks and the stage commands (`gristmill filter`, ...) run. The
data-parallel part of a stage goes through `pipelines.executor`; a stage already recorded as done in
run.json is skipped, and a stage interrupted mid-way resumes from its completed shards.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import dedup, filtering, ingest, minhash, report, tokenizer_train
from pipelines.executor import run_shards
from pipelines.rundir import RunDir
from pipelines.shards import TokenizeConfig, write_token_shards

log = logging.getLogger("gristmill")


def _start_fresh_unless_resuming(run: RunDir, stage: str, *patterns: str) -> None:
    """Delete a stage's earlier outputs, unless an earlier attempt of it was interrupted (then resume)."""
    if run.stage_status(stage) in ("running", "failed"):
        return
    for pattern in patterns:
        for path in run.root.glob(pattern):
            path.unlink()


def run_ingest(run: RunDir, inputs: list[str], workers: int = 0) -> dict[str, Any]:
    """Read every input file into documents/ and quarantine/."""
    _start_fresh_unless_resuming(
        run, "ingest", "documents/*.parquet", "documents/_inputs.json", "quarantine/*.jsonl"
    )
    with run.stage("ingest") as summary:
        files = ingest.plan_inputs(run, inputs)
        run_shards("ingest", run.synced(ingest.IngestShard(str(run.root))), len(files), workers)
        quarantine = ingest.quarantine_counts(run)
        summary.update(
            files=len(files),
            documents=sum(pq.read_metadata(p).num_rows for p in ingest.document_files(run)),
            quarantined=sum(quarantine.values()),
            quarantine_reasons=dict(quarantine),
        )
        log.info(
            "ingest: %d files -> %d documents, %d quarantined",
            summary["files"],
            summary["documents"],
            summary["quarantined"],
        )
    return summary


def run_signals(
    run: RunDir,
    policy_path: str | None = None,
    langid_model: str | None = None,
    workers: int = 0,
    quality_model: str | None = None,
    cleaning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean and score every document (clean/, signals/) and apply the policy.

    `quality_model` and `cleaning` default to the `signals:` section of the config recorded in run.json
    (null quality model: the bundled one).
    """
    recorded = run.load().get("config", {}).get("signals", {})
    quality_model = quality_model or recorded.get("quality_model")
    cleaning = cleaning if cleaning is not None else recorded.get("cleaning")
    _start_fresh_unless_resuming(run, "signals", "signals/*.parquet", "clean/*.parquet")
    with run.stage("signals") as summary:
        filtering.save_policy(run, policy_path)
        n = len(ingest.document_files(run))
        filtering.warm_up(langid_model, quality_model)  # forked workers inherit models and expressions
        task = filtering.SignalsShard(str(run.root), policy_path, langid_model, quality_model, cleaning)
        run_shards("signals", run.synced(task), n, workers)
        keep = filtering.read_signals(run, ["keep"]).column("keep")
        summary.update(documents=len(keep), kept=int(pc.sum(keep).as_py() or 0))
        summary["dropped"] = summary["documents"] - summary["kept"]
        log.info(
            "signals: %d documents, %d kept, %d dropped",
            summary["documents"],
            summary["kept"],
            summary["dropped"],
        )
    return summary


def run_dedup(run: RunDir, config: dedup.DedupConfig, workers: int = 0) -> dict[str, Any]:
    """Near-dedup the kept documents: signatures per shard in parallel, then clustering in one process."""
    _start_fresh_unless_resuming(
        run,
        "dedup",
        "dedup/signatures/*.parquet",
        "dedup/bands/*.parquet",
        "dedup/removed.parquet",
        "dedup/clusters.parquet",
        "dedup/summary.json",
    )
    with run.stage("dedup") as summary:
        n = len(ingest.document_files(run))
        minhash.warm()  # lookup tables built once, inherited by the forked workers
        start = time.perf_counter()
        run_shards("dedup signatures", run.synced(dedup.SignatureShard(str(run.root), config)), n, workers)
        signature_seconds = time.perf_counter() - start
        result = dedup.cluster(run, config)
        summary.update(dedup.summary_counts(result))
        summary["seconds"] = {"signatures": round(signature_seconds, 3), **summary["seconds"]}
    return summary


def run_tokenizer_training(
    run: RunDir,
    vocab_size: int,
    min_frequency: int,
    special_tokens: list[str],
    sample_chars: int,
    seed: int,
    sample_documents: int = 0,
    heldout_chars: int = 10_000_000,
    validation_fraction: float | None = None,
) -> dict[str, Any]:
    """Train the BPE tokenizer on a seeded sample of the final corpus's train split and measure bytes
    per token on held-out kept text (the validation split; `pipelines.tokenizer_train`).

    `validation_fraction` defaults to the `tokenize:` section of the config recorded in run.json.
    """
    if validation_fraction is None:
        recorded = run.load().get("config", {}).get("tokenize", {})
        validation_fraction = recorded.get("validation_fraction", TokenizeConfig().validation_fraction)
    sample = tokenizer_train.Sample(
        sample_chars, sample_documents, heldout_chars, float(validation_fraction), seed
    )
    with run.stage("tokenizer") as summary:
        meta = tokenizer_train.train_in_child(
            str(run.root), vocab_size, min_frequency, special_tokens, sample
        )
        heldout = meta["heldout"]
        summary.update(
            vocab_size=meta["vocab_size"],
            sha256=meta["sha256"],
            documents=meta["trained_on_documents"],
            characters=meta["trained_on_characters"],
            bytes_per_token=meta["bytes_per_token"],
            heldout_documents=heldout["documents"],
        )
        log.info(
            "tokenizer: vocab %d trained on %d documents (%d characters); %s bytes per token on %d "
            "held-out documents (%s)",
            meta["vocab_size"],
            meta["trained_on_documents"],
            meta["trained_on_characters"],
            meta["bytes_per_token"],
            heldout["documents"],
            heldout["source"],
        )
    return summary


def run_tokenize(
    run: RunDir, config: TokenizeConfig, lineage: dict[str, Any], workers: int = 0
) -> dict[str, Any]:
    """Write token shards in parallel and the manifest last; an interrupted attempt resumes from the
    shards it finished."""
    resume = run.stage_status("tokenize") in ("running", "failed")
    with run.stage("tokenize") as summary:
        start = time.perf_counter()
        manifest = write_token_shards(run, config, lineage, workers, resume=resume)
        seconds = max(time.perf_counter() - start, 1e-9)
        summary.update(
            documents=manifest["totals"]["documents"],
            tokens=manifest["totals"]["tokens"],
            shards=sum(len(s["shards"]) for s in manifest["splits"].values()),
            bytes=manifest["totals"]["bytes"],
            tokens_per_second=round(manifest["totals"]["tokens"] / seconds),
        )
    return summary


def run_report(run: RunDir, workers: int = 0) -> dict[str, Any]:
    """Write report/ (JSON, Markdown, HTML) and return the report."""
    with run.stage("report") as summary:
        built = report.write_report(run, workers)
        summary.update(path=str(run.report / "report.html"))
    return built
