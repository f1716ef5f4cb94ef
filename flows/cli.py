"""The `gristmill` command line: the front door to every stage."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.config import Config, TrainConfig, describe, load_config, parse_override
from flows.launch import train_command
from training.config import (
    HelpFormatter,
    add_eval_arguments,
    add_export_arguments,
    add_generate_arguments,
)
from training.config import add_arguments as add_train_arguments

log = logging.getLogger("gristmill")


def _setup_logging(under_prefect: bool) -> None:
    """Log lines of `gristmill` go through Prefect's handlers in a flow, else to stderr."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gristmill")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral API server needs more than Prefect's default 20 s on a busy two-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not under_prefect and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _common_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Config:
    """The run config from [CONFIG] (else `base`), with --set and the explicit flags applied on top."""
    overrides = dict(parse_override(item) for item in args.set or [])
    if getattr(args, "input", None):
        overrides["inputs"] = args.input
    for flag, key in (
        ("output", "output"),
        ("run_id", "run_id"),
        ("workers", "executor.workers"),
        ("policy", "signals.policy"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return load_config(getattr(args, "config", None), overrides, base=base)


def _force_restart(root: str) -> None:
    """`--force-restart`: discard what earlier attempts of the run in `root` wrote, if it exists."""
    from pipelines.run import RunDir
    from pipelines.stages import restart

    run = RunDir(root).pull()
    if run.run_json.exists():
        restart(run)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.build_corpus import build_corpus
    from pipelines.report import summary_lines

    cfg = _common_config(args)
    if not cfg.inputs:
        raise SystemExit("error: no inputs: give --input URI (or `inputs:` in the config)")
    run_id = cfg.resolved_run_id()
    if args.force_restart:
        _force_restart(f"{cfg.output.rstrip('/')}/{run_id}")
    report = build_corpus(cfg.model_dump(mode="json"), run_id)
    root = f"{cfg.output.rstrip('/')}/{run_id}"  # a folder or an s3:// URI
    print("\n".join(summary_lines(report)))
    print(f"  run directory: {root}\n  report: {root}/report/report.html")
    print(f"  shards: {root}/tokens/manifest.json")
    return 0


def _stage_run(args: argparse.Namespace) -> tuple[Any, Config]:
    """The run directory of a stage command and its config: [CONFIG], else the config run.json recorded,
    with the flags on top."""
    from pipelines.run import RunDir

    run = RunDir(args.output).pull().create()
    recorded = None if args.config else run.record.load().get("config")
    return run, _common_config(args, base=recorded)


def _run_stages(args: argparse.Namespace, *names: str, record: bool = False) -> tuple[Any, dict[str, Any]]:
    from pipelines.stages import run_stage

    run, cfg = _stage_run(args)
    if record:
        run.start(run.root.name, cfg.model_dump(mode="json"), cfg.inputs)
    summary: dict[str, Any] = {}
    for name in names:
        summary = run_stage(run, name, cfg)
    return run, summary


def cmd_filter(args: argparse.Namespace) -> int:
    _run_stages(args, "ingest", "signals", record=True)
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    if args.input:
        _run_stages(args, "ingest", "dedup", record=True)
    else:
        _run_stages(args, "dedup")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    _, summary = _run_stages(args, "tokenizer")
    bpt = summary["bytes_per_token"]
    heldout = f"{bpt:.3f} ({summary['heldout_documents']:,} documents)" if bpt else "not measured"
    print(
        f"tokenizer: vocab {summary['vocab_size']:,}, trained on {summary['documents']:,} documents "
        f"({summary['characters']:,} characters); bytes per token on held-out text: {heldout}"
    )
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    run, summary = _run_stages(args, "tokenize")
    print(
        f"tokenize: {summary['documents']:,} documents, {summary['tokens']:,} tokens in {summary['shards']} "
        f"shards ({summary['tokens_per_second']:,} tokens/s) -> {run.manifest}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import summary_lines, write_diff, write_whatif
    from pipelines.run import RunDir

    if args.policy and args.against:
        raise SystemExit("error: --policy (what-if) and --against (diff) are separate reports: give one")
    run = RunDir(args.run).pull()  # an s3:// run is pulled into its local mirror
    against = RunDir(args.against).pull() if args.against else None
    for path, opened in ((args.run, run), (args.against, against)):
        if opened is not None and not opened.run_json.exists():
            raise SystemExit(f"error: {path} is not a run directory (no run.json)")
    if args.policy:
        comparison, paths = write_whatif(run, args.policy, args.workers or 0)
        print(f"what-if {args.policy}: kept documents {comparison['kept_documents_before']:,} -> "
              f"{comparison['kept_documents_after']:,} ({comparison['newly_dropped']:,} newly dropped, "
              f"{comparison['newly_kept']:,} newly kept)")
    elif against is not None:
        _, paths = write_diff(run, against, args.workers or 0)
    else:
        from pipelines.stages import run_stage

        recorded = run.record.load().get("config")
        run_stage(run, "report", load_config(None, {"executor.workers": args.workers or 0}, base=recorded))
        print("\n".join(summary_lines(json.loads((run.report / "report.json").read_text()))))
        paths = [run.report / "report.html"]
    run.sync()  # an s3:// run: upload what was written
    print("  written: " + ", ".join(run.display(p) for p in paths))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(item) for item in args.set or [])
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    overrides.update({f"train.{name}": getattr(args, name) for name in fields if hasattr(args, name)})
    cfg = load_config(args.config, overrides).train
    if cfg.output is None and cfg.data and "://" not in cfg.data[0]:
        cfg = dataclasses.replace(cfg, output=str(Path(cfg.data[0]).resolve().parent.parent / "model"))
    command = train_command(cfg, resume=args.resume)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    log.info("launching: %s", shlex.join(command))
    return subprocess.call(command)


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import run

    return run(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from training.generate import run

    return run(args)


def eval_texts(uris: list[str], text_key: str, max_documents: int | None) -> tuple[list[str], dict[str, int]]:
    """The texts of every document in `uris` (any input format the pipeline reads), in input order,
    and the count of quarantined records per reason."""
    from collections import Counter

    from pipelines.io.inputs import list_inputs, local_input
    from pipelines.readers import Quarantined, ReadOptions, read_file

    texts: list[str] = []
    quarantined: Counter[str] = Counter()
    options = ReadOptions(text_key=text_key, metadata=False)
    for path, source in list_inputs(uris):
        for item in read_file(local_input(path), source, options):
            if isinstance(item, Quarantined):
                quarantined[item.reason] += 1
            else:
                texts.append(item.text)
            if max_documents and len(texts) >= max_documents:
                return texts, dict(quarantined)
    return texts, dict(quarantined)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from training.evaluate import evaluate_checkpoint, format_result

    texts, quarantined = eval_texts(args.data, args.text_key, args.max_documents)
    if quarantined:
        log.warning("eval: records set aside (not evaluated): %s", quarantined)
    if not texts:
        raise ValueError(f"no documents to evaluate in {args.data}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    result = evaluate_checkpoint(
        args.checkpoint,
        texts,
        args.seq_len,
        device,
        args.batch_size,
        torch.bfloat16 if args.dtype == "bf16" else None,
        rope_scaling=args.rope_scaling,
        rope_factor=args.rope_factor,
        quantize=args.quantize,
    )
    result["quarantined"] = quarantined
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from flows.ablate import AblationConfig, ablate, headline

    overrides: dict[str, Any] = {"train.preset": "small", "train.seq_len": 256, "train.nproc": 1}
    overrides.update(parse_override(item) for item in args.set or [])
    for flag in ("preset", "seq_len", "batch_size", "lr", "nproc", "dtype"):
        if getattr(args, flag) is not None:
            overrides[f"train.{flag}"] = getattr(args, flag)
    config = AblationConfig(
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        tokens=args.tokens,
        seeds=[int(s) for s in args.seeds.split(",")],
        eval=args.eval or [],
        heldout_bytes=args.heldout_bytes,
        curve_points=args.curve_points,
        keep_models=args.keep_models,
        workers=args.workers or 0,
        train=load_config(None, overrides).train,
    )
    results = ablate(args.run, config)
    print("\n".join(headline(results)))
    print(f"  results: {args.run.rstrip('/')}/ablation/results.json; report: {args.run.rstrip('/')}/report/")
    return 1 if results["failed"] else 0


def _add_ablate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="train the same model on raw and filtered variants of RUN; compare held-out bits per byte",
        description="Builds the token streams of corpus variants from what RUN stored (no signal is "
        "recomputed): raw (every readable document), policy (kept by the policy), policy+dedup (the "
        "final corpus), and leave-one-out variants -NAME that re-admit the documents dropped only by a "
        "rule, a rule-name prefix (-gopher, -c4, -fineweb) or a group (-gopher_repetition, "
        "-gopher_quality, -quality_classifier, -language), or skip a step (-dedup, -cleaning). Each "
        "variant trains with the same model, seeds and number of training tokens and is evaluated on "
        "held-out text none of them contains (docs/ablation.md). Writes RUN/ablation/ and the report's "
        "ablation section. A list starting with a leave-one-out variant needs `--variants=-c4,raw`.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a finished run directory")
    p.add_argument("--variants", default="raw,policy,policy+dedup", help="comma-separated variants")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per variant and seed")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--eval", nargs="+", metavar="URI", help="more evaluation files or folders")
    p.add_argument("--heldout-bytes", type=int, default=500_000,
                   help="text of the run's validation split held out for evaluation")  # fmt: skip
    p.add_argument("--curve-points", type=int, default=5, help="held-out evaluations during training")
    p.add_argument("--preset", default=None, help="model preset (default: small)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: 256)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: train's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: train's)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="compute precision (default: fp32)")
    p.add_argument("--nproc", type=int, default=None, help="torchrun processes (default: 1)")
    p.add_argument("--keep-models", action="store_true", help="keep the checkpoints (RUN/ablation/models/)")
    p.add_argument("--workers", type=int, help="tokenizer worker processes (0: every core)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a train field: train.grad_accum=2")
    p.set_defaults(func=cmd_ablate)


def cmd_config(args: argparse.Namespace) -> int:
    print(describe())
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    cfg = _common_config(args)
    for line in deploy(cfg, config_path=args.config):
        print(line)
    return 0


# ---------------------------------------------------------------------- quality classifier


def cmd_quality_train(args: argparse.Namespace) -> int:
    from pipelines.quality.classifier import train

    evaluation = train(
        args.positive, args.negative, args.output, holdout=args.holdout, seed=args.seed, epoch=args.epoch
    )
    print("\n".join(evaluation.lines()))
    print(f"model: {args.output} ({Path(args.output).stat().st_size / 1e6:.2f} MB)")
    return 0


def _add_quality_parser(sub: Any) -> None:
    p = sub.add_parser("quality", help="quality classifier commands")
    qsub = p.add_subparsers(dest="quality_command", required=True)
    t = qsub.add_parser(
        "train",
        help="train a fastText quality classifier; prints precision/recall on a held-out split",
        description="Documents under --positive are high quality, those under --negative are not; each is "
        "cut into examples of at most 1,000 characters. The model is quantized, and a policy rule on "
        "quality_score uses it once signals.quality_model points at it.",
    )
    t.add_argument("--positive", nargs="+", required=True, metavar="URI", help="high-quality documents")
    t.add_argument("--negative", nargs="+", required=True, metavar="URI", help="low-quality documents")
    t.add_argument("--output", required=True, metavar="MODEL", help="where to write the model (.ftz)")
    t.add_argument("--holdout", type=float, default=0.2, help="share of examples held out for evaluation")
    t.add_argument("--epoch", type=int, default=10, help="training epochs")
    t.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    t.set_defaults(func=cmd_quality_train)


# ----------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser, inputs: bool = True, run_id: bool = False) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (defaults: `gristmill config`)")
    if inputs:
        p.add_argument("--input", nargs="+", metavar="URI", help="input files or folders (local or s3://)")
    p.add_argument("--workers", type=int, help="worker processes (0: every core)")
    p.add_argument("--policy", help="policy YAML (default: the bundled one)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set dedup.threshold=0.7 (repeatable)",
    )
    if run_id:
        p.add_argument("--run-id", help="run directory name (default: from the time)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gristmill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="whole corpus build (Prefect flow build_corpus)")
    _add_config_args(p, run_id=True)
    p.add_argument("--output", help="folder holding run directories (default: runs)")
    p.add_argument(
        "--force-restart",
        action="store_true",
        help="discard what earlier attempts of this run wrote and start over (e.g. after its inputs changed)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("filter", help="ingest inputs and compute signals + keep/drop into DIR/signals")
    _add_config_args(p)
    p.add_argument("--output", required=True, metavar="DIR", help="run directory")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser(
        "dedup", help="near-dedup the kept documents of DIR (ingesting --input first if given)"
    )
    _add_config_args(p)
    p.add_argument("--output", required=True, metavar="DIR", help="run directory")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("tokenizer", help="tokenizer commands")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train the BPE tokenizer on DIR's final corpus into DIR/tokenizer")
    _add_config_args(t, inputs=False)
    t.add_argument("--output", required=True, metavar="DIR", help="run directory")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("tokenize", help="write token shards + manifest into DIR/tokens")
    _add_config_args(p, inputs=False)
    p.add_argument("--output", required=True, metavar="DIR", help="run directory")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("report", help="write RUN/report (HTML, Markdown, JSON); what-if; run-to-run diff")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--policy", metavar="FILE", help="what-if: re-apply this policy to the stored signals")
    p.add_argument("--against", metavar="RUN", help="diff: compare with another run directory")
    p.add_argument("--workers", type=int, help="worker processes for counting tokens (0: every core)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "train",
        help="train a model on token shards with torchrun",
        description="Runs `python -m training.train` under torchrun with the config's `train:` section "
        "(`gristmill config` lists it): every field is also an option here, and --set train.FIELD=VALUE "
        "sets one too. Flags override --set, which overrides the config.",
    )
    p.add_argument("config", nargs="?", help="run config YAML (its `train:` section)")
    add_train_arguments(p, overrides=True)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a checkpoint to the Hugging Face Llama format (safetensors)")
    add_export_arguments(p).set_defaults(func=cmd_export)
    p = sub.add_parser("generate", help="sample text from a checkpoint", formatter_class=HelpFormatter)
    add_generate_arguments(p).set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval",
        help="held-out loss, perplexity and bits per byte of a checkpoint on raw documents",
        description="Reads --data like `gristmill run` reads inputs (JSONL, Parquet, CSV, text, HTML, "
        "WARC/WET, compressed or not, local or s3://), tokenizes each document as the token shards do "
        "and scores every token in windows of --seq-len (training/evaluate.py).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", nargs="+", required=True, metavar="URI", help="input files or folders")
    p.add_argument("--text-key", default="text", help="JSON key / column of the text")
    p.add_argument("--max-documents", type=int, default=None, help="evaluate the first N documents only")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_eval_arguments(p).set_defaults(func=cmd_eval)

    p = sub.add_parser("config", help="print every config field with its default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "deploy",
        help="create/update the work pool and the scheduled Prefect deployment of build_corpus",
        description="Against PREFECT_API_URL: create the config's work pool if missing (or update its "
        "job template), and create or update the deployment `build_corpus/<deployment.name>` with the "
        "config as its parameters and deployment.cron/timezone as its schedule. Scheduled runs get run "
        "ids from their scheduled time (docs/deploy.md).",
    )
    _add_config_args(p)
    p.add_argument("--output", help="folder holding run directories, as the worker sees it")
    p.set_defaults(func=cmd_deploy)

    _add_quality_parser(sub)
    _add_ablate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(under_prefect=args.command == "run")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
