"""`gristmill ablate RUN`: train the same model on corpus variants of one finished run and compare them
on held-out text (docs/ablation.md).

1. Variants (`pipelines.ablation`): each variant's documents, less the evaluation text, tokenized with
   the run's tokenizer into ablation/variants/<variant>/ (train split: the variant; validation split:
   the held-out slice, the same in every variant). Evaluation texts go to ablation/eval/<set>.parquet.
2. Training: every variant x seed through the torchrun launcher of `gristmill train`, with the same
   model, seed, schedule and number of optimizer steps, so each sees exactly `steps x batch x seq_len`
   training tokens (a smaller variant repeats: its epochs are recorded). The validation loss on the
   held-out slice, logged along the way, is the loss-against-tokens curve (ablation/metrics/).
3. Evaluation: the last checkpoint of each pair on every evaluation set (`training.evaluate`): loss,
   perplexity and bits per byte; means and spreads over seeds, deltas against `raw`.

Results: ablation/results.json, and the report's ablation section. A pair that finished under the same
settings is reused when the command runs again; a pair that fails is recorded and the others go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.launch import train_command
from pipelines.ablation import (
    DEFAULT_VARIANTS,
    EvalSet,
    Variant,
    exclusions,
    heldout_set,
    read_eval_sets,
    stored_policy,
    variant,
    write_variant,
)
from pipelines.config import RunConfig
from pipelines.run import RunDir
from pipelines.run.files import sha256_file, write_json
from pipelines.stages.token_shards import MANIFEST_NAME, lineage
from training.config import TrainConfig

log = logging.getLogger("gristmill")

FORMAT, FORMAT_VERSION = "gristmill.ablation", 1
BASELINE = "raw"


@dataclass(frozen=True)
class AblationConfig:
    """What `gristmill ablate` trains and evaluates; `train` holds the model and schedule (its data,
    output, max_steps, seed and eval settings are set per pair)."""

    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    tokens: int = 2_000_000
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    eval: list[str] = field(default_factory=list)
    heldout_bytes: int = 500_000
    curve_points: int = 5
    curve_tokens: int = 32_768
    keep_models: bool = False
    workers: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(preset="small", seq_len=256, nproc=1))

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_len

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))


class AblationError(RuntimeError):
    """A pair of variant and seed failed to train or evaluate."""


def ablate(run_uri: str, config: AblationConfig) -> dict[str, Any]:
    """Build the variants of a finished run, train and evaluate every variant x seed, write
    ablation/results.json and the report. Returns the results."""
    run = RunDir(run_uri).pull_all()
    if not run.manifest.exists() or not run.tokenizer_json.exists():
        missing = run.manifest.relative_to(run.root)
        raise ValueError(f"{run_uri}: not a finished run (no {missing}): run `gristmill run` first")
    stored = run.record.load().get("config") or {}
    recorded = RunConfig.model_validate({k: v for k, v in stored.items() if k in RunConfig.model_fields})
    policy = stored_policy(run)
    if len(set(config.variants)) != len(config.variants):
        raise ValueError(f"--variants names a variant twice: {','.join(config.variants)}")
    variants = [variant(name, policy) for name in config.variants]
    root = run.ablation
    heldout = heldout_set(run, recorded.tokenize.validation_fraction, config.heldout_bytes)
    eval_sets = [heldout, *read_eval_sets(config.eval)]
    excluded, excluded_counts = exclusions(run, eval_sets)
    for eval_set in eval_sets:
        eval_set.write(root / "eval" / f"{eval_set.name}.parquet")
    log.info("ablate: %d evaluation sets; %d documents held out of every variant (%s)", len(eval_sets),
             len(excluded), ", ".join(f"{k} {v:,}" for k, v in excluded_counts.items()))  # fmt: skip
    source_lineage = lineage(run, recorded)
    manifests = {}
    for v in variants:
        folder = root / "variants" / v.slug
        manifests[v.name] = write_variant(
            run, v, heldout, excluded, recorded.tokenize, source_lineage, folder, config.workers
        )
        log.info("ablate: variant %s: %s train tokens in %s documents", v.name,
                 f"{manifests[v.name]['splits']['train']['tokens']:,}",
                 f"{manifests[v.name]['splits']['train']['documents']:,}")  # fmt: skip
    pairs: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        pairs[v.name] = [_pair(run, v, seed, manifests[v.name], eval_sets, config) for seed in config.seeds]
    if not config.keep_models:
        shutil.rmtree(root / "models", ignore_errors=True)
    results = summarize(run, config, variants, manifests, pairs, eval_sets, excluded_counts)
    write_json(run.ablation_results, results)
    from pipelines.report import write_report

    write_report(run, config.workers)
    run.sync()
    return results


# ------------------------------------------------------------------------------------------ a pair


def _pair(
    run: RunDir,
    v: Variant,
    seed: int,
    manifest: dict[str, Any],
    eval_sets: list[EvalSet],
    config: AblationConfig,
) -> dict[str, Any]:
    """Train and evaluate one variant with one seed (or reuse the result of an earlier identical one)."""
    name = f"{v.slug}.seed-{seed}"
    done = run.ablation / "runs" / f"{name}.json"
    train = _train_config(run, v, seed, manifest, config)
    key = _pair_key(train, manifest, eval_sets)
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        log.info("ablate: %s: reusing the finished result", name)
        return json.loads(done.read_text())
    if not manifest["splits"]["train"]["documents"]:
        return {"seed": seed, "error": "no training documents in this variant"}
    output = Path(train.output or "")
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    start = time.perf_counter()
    log.info("ablate: %s: training %d steps", name, train.max_steps)
    try:
        _launch(train, run.ablation / "logs" / f"{name}.log")
        metrics = run.ablation / "metrics" / f"{name}.jsonl"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output / "metrics.jsonl", metrics)
        result = {"seed": seed, "key": key, **_evaluate(output, eval_sets, train)}
    except AblationError as exc:
        log.error("ablate: %s failed: %s", name, exc)
        return {"seed": seed, "error": str(exc)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(done, result)
    if not config.keep_models:
        shutil.rmtree(output)
    return result


def _train_config(
    run: RunDir, v: Variant, seed: int, manifest: dict[str, Any], config: AblationConfig
) -> TrainConfig:
    """The training settings of one pair: the same for every variant but the data and the seed."""
    base = config.train
    validation = manifest["splits"]["validation"]
    heldout_windows = (validation["tokens"] + validation["documents"]) // (base.seq_len + 1)
    curve_windows = max(1, config.curve_tokens // (base.seq_len + 1))
    eval_batches = max(1, math.ceil(min(heldout_windows, curve_windows) / base.batch_size))
    return dataclasses.replace(
        base,
        data=[str(run.ablation / "variants" / v.slug / MANIFEST_NAME)],
        data_weights=None,
        output=str(run.ablation / "models" / v.slug / f"seed-{seed}"),
        max_steps=config.steps,
        stop_at=None,
        seed=seed,
        eval_every=max(1, config.steps // max(1, config.curve_points)),
        eval_batches=eval_batches,
        save_every=0,
        keep_last=1,
        trace=False,
    )


def _pair_key(train: TrainConfig, manifest: dict[str, Any], eval_sets: list[EvalSet]) -> str:
    """What a pair's result depends on: its training settings, its data and the evaluation texts."""
    shards = {name: [s["sha256"] for s in split["shards"]] for name, split in manifest["splits"].items()}
    texts = hashlib.sha256("\0".join(t for s in eval_sets for t in (s.name, *s.texts)).encode()).hexdigest()
    payload = {"train": dataclasses.asdict(train), "shards": shards, "eval": texts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _launch(train: TrainConfig, log_path: Path) -> None:
    """Run training under torchrun; its output goes to `log_path` (the tail is in the error)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        code = subprocess.call(train_command(train), stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-15:]
        raise AblationError(f"training exited with status {code}; {log_path}:\n" + "\n".join(tail))


def _evaluate(output: Path, eval_sets: list[EvalSet], train: TrainConfig) -> dict[str, Any]:
    """Training tokens, windows and losses of a trained pair, and its metrics on every evaluation set."""
    import torch

    from training.evaluate import evaluate_texts
    from training.generate import load_checkpoint

    step_dir = output / (output / "latest").read_text().strip()
    state = json.loads((step_dir / "train_state.json").read_text())
    source = json.loads((step_dir / "config.json").read_text())["data"]["sources"][0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_checkpoint(step_dir, device)
    autocast = torch.bfloat16 if train.dtype == "bf16" else None
    model, tokenizer = loaded.model, loaded.tokenizer
    evals = {
        s.name: evaluate_texts(model, tokenizer, s.texts, train.seq_len, device, train.batch_size,
                               loaded.eot_id, autocast)
        for s in eval_sets
    }  # fmt: skip
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line]
    train_losses = [r["loss"] for r in records if r["type"] == "train"]
    tokens_per_step = train.batch_size * train.seq_len
    curve = [[r["step"] * tokens_per_step, r["val_loss"]] for r in records if r["type"] == "val"]
    expected = train.max_steps * tokens_per_step
    if state["tokens_seen"] != expected:
        raise AblationError(f"trained on {state['tokens_seen']:,} tokens, expected {expected:,}")
    return {
        "tokens_seen": state["tokens_seen"],
        "train_windows": source["train_windows"],
        "epochs": train.max_steps * train.batch_size / max(1, source["train_windows"]),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "curve": curve,
        "eval": evals,
    }


# -------------------------------------------------------------------------------------- results


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _spread(values: list[float]) -> float | None:
    return max(values) - min(values) if values else None


def verdict(delta: float | None, spread: float | None) -> str:
    """How a variant compares with the baseline: better or worse when the difference of the means is
    larger than the seed spread of either, else within the seed spread."""
    if delta is None or spread is None:
        return "–"
    if abs(delta) <= spread:
        return "within seed spread"
    return "better" if delta < 0 else "worse"


def summarize(
    run: RunDir,
    config: AblationConfig,
    variants: list[Variant],
    manifests: dict[str, dict[str, Any]],
    pairs: dict[str, list[dict[str, Any]]],
    eval_sets: list[EvalSet],
    excluded: dict[str, int],
) -> dict[str, Any]:
    """results.json: settings, evaluation sets, exclusions, and per variant its data, every seed's run,
    the means and spreads over seeds, the deltas against the baseline and the mean curve."""
    names = [s.name for s in eval_sets]
    rows = []
    for v in variants:
        good = [p for p in pairs[v.name] if "error" not in p]
        split = manifests[v.name]["splits"]["train"]
        row: dict[str, Any] = {
            "name": v.name,
            "slug": v.slug,
            "description": v.description,
            "documents": split["documents"],
            "train_tokens": split["tokens"],
            "train_windows": good[0]["train_windows"] if good else None,
            "epochs": good[0]["epochs"] if good else None,
            "runs": pairs[v.name],
            "eval": {},
        }
        row["repeated"] = bool(row["epochs"] and row["epochs"] > 1)
        for name in names:
            bpb = [p["eval"][name]["bits_per_byte"] for p in good]
            row["eval"][name] = {
                "bits_per_byte": _mean(bpb),
                "bits_per_byte_spread": _spread(bpb),
                "loss": _mean([p["eval"][name]["loss"] for p in good]),
                "perplexity": _mean([p["eval"][name]["perplexity"] for p in good]),
                "tokens": good[0]["eval"][name]["tokens"] if good else None,
                "bytes": good[0]["eval"][name]["bytes"] if good else None,
            }
        row["curve"] = _mean_curve([p["curve"] for p in good])
        rows.append(row)
    baseline = next((r for r in rows if r["name"] == BASELINE), rows[0])
    for row in rows:
        for name in names:
            mine, base = row["eval"][name], baseline["eval"][name]
            delta = spread = None
            if mine["bits_per_byte"] is not None and base["bits_per_byte"] is not None:
                delta = mine["bits_per_byte"] - base["bits_per_byte"]
                spread = max(mine["bits_per_byte_spread"], base["bits_per_byte_spread"])
            mine.update(delta_vs_baseline=delta, delta_spread=spread, verdict=verdict(delta, spread))
    failed = [f"{r['name']} seed {p['seed']}: {p['error']}" for r in rows for p in r["runs"] if "error" in p]
    seen = {p["tokens_seen"] for ps in pairs.values() for p in ps if "error" not in p}
    parameters = next((p["parameters"] for ps in pairs.values() for p in ps if "error" not in p), None)
    train = config.train
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": run.record.load().get("run_id", run.root.name),
        "tokenizer_sha256": sha256_file(run.tokenizer_json),
        "settings": {
            "variants": config.variants,
            "tokens_requested": config.tokens,
            "steps": config.steps,
            "batch_size": train.batch_size,
            "seq_len": train.seq_len,
            "training_tokens": config.steps * config.tokens_per_step,
            "preset": train.preset,
            "parameters": parameters,
            "lr": train.lr,
            "warmup_steps": config.steps // 10 if train.warmup_steps is None else train.warmup_steps,
            "dtype": train.dtype,
            "nproc": train.nproc,
            "seeds": config.seeds,
            "curve_every_steps": max(1, config.steps // max(1, config.curve_points)),
        },
        "equal_training_tokens": len(seen) <= 1,
        "baseline": baseline["name"],
        "eval_sets": [s.summary() for s in eval_sets],
        "excluded": excluded,
        "variants": rows,
        "failed": failed,
    }


def _mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """[tokens, mean validation loss, spread] at the steps every seed logged."""
    if not curves:
        return []
    by_tokens: dict[float, list[float]] = {}
    for curve in curves:
        for tokens, loss in curve:
            by_tokens.setdefault(tokens, []).append(loss)
    points = sorted((t, ls) for t, ls in by_tokens.items() if len(ls) == len(curves))
    return [[t, sum(ls) / len(ls), max(ls) - min(ls)] for t, ls in points]


def headline(results: dict[str, Any]) -> list[str]:
    """The console table: variant, training tokens kept, epochs, bits per byte on each evaluation set
    with the seed spread, delta against the baseline."""
    names = [s["name"] for s in results["eval_sets"]]
    settings = results["settings"]
    lines = [
        f"ablation of run {results['run_id']}: {settings['training_tokens']:,} training tokens per variant, "
        f"seeds {settings['seeds']}, baseline {results['baseline']}"
    ]
    header = f"  {'variant':<24} {'tokens kept':>12} {'epochs':>7}"
    for name in names:
        header += f"  {name + ' bits/byte (spread)':>28} {'delta':>8} {'':<18}"
    lines.append(header.rstrip())
    for row in results["variants"]:
        line = f"  {row['name']:<24} {row['train_tokens']:>12,} {row['epochs'] or 0:>7.2f}"
        for name in names:
            e = row["eval"][name]
            if e["bits_per_byte"] is None:
                line += f"  {'failed':>28} {'':>8} {'':<18}"
                continue
            value = f"{e['bits_per_byte']:.4f} ({e['bits_per_byte_spread']:.4f})"
            baseline = row["name"] == results["baseline"]
            delta = "" if baseline else f"{e['delta_vs_baseline']:+.4f}"
            line += f"  {value:>28} {delta:>8} {'' if baseline else e['verdict']:<18}"
        lines.append(line.rstrip())
    lines += [f"  failed: {f}" for f in results["failed"]]
    return lines
