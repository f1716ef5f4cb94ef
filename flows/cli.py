"""The `gristmill` command line: the front door to every stage.

Every command that works on one run names its run directory RUN the same way: `--run RUN` where it
writes (run, filter, dedup, tokenizer train, tokenize), the first argument where it reads (report,
status). Errors in what was given print one line, `gristmill: error: ...`, and exit 2 (`--debug` shows
the traceback); Ctrl-C or SIGTERM stop the workers, record the stage as interrupted and exit 130/143
with one line saying how to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from flows.config import Config, TrainConfig, describe, load_config, parse_override
from flows.launch import train_command
from training.config import (
    HelpFormatter,
    SFTConfig,
    add_eval_arguments,
    add_export_arguments,
    add_generate_arguments,
)
from training.config import add_arguments as add_train_arguments

log = logging.getLogger("gristmill")


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to stderr above a progress bar, if one is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _under_prefect() -> bool:
    """Whether `gristmill run` runs the Prefect flow: only against a Prefect API (PREFECT_API_URL)."""
    return bool(os.environ.get("PREFECT_API_URL"))


def _setup_logging(under_prefect: bool) -> None:
    """Log lines of `gristmill` go through Prefect's handlers in a flow, else to stderr; progress is a
    bar on a terminal, periodic lines otherwise."""
    from pipelines.exec import progress

    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gristmill")
    # a stage run outside a flow run (stage commands, in-process builds) logs to stderr only, silently
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not under_prefect and not log.handlers:
        handler = _TqdmHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    # a bar only on a terminal and outside Prefect (whose console handler does not write around it)
    bar = sys.stderr.isatty() and not under_prefect
    progress.configure(os.environ.get("GRISTMILL_PROGRESS") or ("bar" if bar else "lines"))


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
        ("text_key", "ingest.text_key"),
        ("id_key", "ingest.id_key"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "run", None) and args.command == "run":
        overrides["output"], overrides["run_id"] = _split_run(args.run)
    return _absolute_inputs(load_config(getattr(args, "config", None), overrides, base=base))


def _split_run(run: str) -> tuple[str, str]:
    """RUN as (the folder holding it, its name: the run id)."""
    parent, _, name = run.rstrip("/").rpartition("/")
    return parent or ".", name


def _absolute_inputs(cfg: Config) -> Config:
    """Local inputs as absolute paths, so run.json names them wherever a resume starts."""

    def absolute(uri: str) -> str:
        return uri if "://" in uri else os.path.abspath(uri)

    inputs = [
        absolute(entry) if isinstance(entry, str) else entry.model_copy(update={"uri": absolute(entry.uri)})
        for entry in cfg.inputs
    ]
    return cfg.model_copy(update={"inputs": inputs})


def _recorded(root: str) -> dict[str, Any]:
    """run.json of the run directory `root` (opening an S3 run fetches only that file), or {}."""
    from pipelines.run import RunDir

    return RunDir(root).pull().record.load()


def _force_restart(root: str) -> None:
    """`--force-restart`: discard what earlier attempts of the run in `root` wrote, if it exists."""
    from pipelines.run import RunDir
    from pipelines.stages import restart

    run = RunDir(root).pull()
    if run.run_json.exists():
        restart(run)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.build import run_root
    from pipelines.errors import UserError
    from pipelines.preflight import check_run
    from pipelines.report import summary_lines

    if args.run and (args.output or args.run_id):
        raise UserError("give either --run RUN or --output DIR [--run-id ID], not both")
    cfg = _common_config(args)
    run_id = cfg.resolved_run_id()
    root = run_root(cfg.output, run_id)
    recorded = _recorded(root) if cfg.run_id else {}
    if recorded.get("config") and not cfg.inputs:  # a resume: the config and inputs run.json recorded
        args.input = recorded["config"].get("inputs") or recorded.get("inputs")
        cfg = _common_config(args, base=None if args.config else recorded["config"])
        log.info("resuming run %s with its recorded config and inputs", run_id)
    args.resume_hint = f"gristmill run --run {root}"
    args.run_root = root
    check_run(cfg, root, same_inputs=not args.force_restart)
    if args.force_restart:
        _force_restart(root)
    if _under_prefect():
        from flows.build_corpus import build_corpus

        report = build_corpus(cfg.model_dump(mode="json"), run_id)
    else:
        from flows.build import build_in_process

        report = build_in_process(cfg, run_id)
    print("\n".join(summary_lines(report)))
    print(f"  run directory: {root}\n  report: {root}/report/report.html")
    print(f"  shards: {root}/tokens/_manifest.json")
    return 0


def _stage_run(args: argparse.Namespace, inputs: bool) -> tuple[Any, Config]:
    """The run directory of a stage command and its config: [CONFIG], else the config run.json recorded,
    with the flags on top; checked before anything is written. `inputs`: the command ingests --input."""
    from pipelines.errors import UserError
    from pipelines.preflight import check_models, check_output, check_run
    from pipelines.run import RunDir
    from pipelines.run.layout import check_run_id

    root = args.run
    check_run_id(_split_run(root)[1])
    recorded = _recorded(root)
    if not inputs and not recorded:
        raise UserError(f"{root} is not a run directory (no run.json); `gristmill run` or "
                        "`gristmill filter` starts one")  # fmt: skip
    cfg = _common_config(args, base=None if args.config else recorded.get("config"))
    args.run_root = root
    if inputs:
        check_run(cfg, root)
    else:
        check_models(cfg)
        check_output(root)
    return RunDir(root).pull().create(), cfg


def _run_stages(args: argparse.Namespace, *names: str, record: bool = False) -> tuple[Any, dict[str, Any]]:
    from pipelines.stages import run_stage

    run, cfg = _stage_run(args, inputs=record)
    if record:
        run.start(run.root.name, cfg.model_dump(mode="json"), cfg.inputs)
    summary: dict[str, Any] = {}
    for name in names:
        summary = run_stage(run, name, cfg)
    return run, summary


def cmd_filter(args: argparse.Namespace) -> int:
    _run_stages(args, "ingest", "signals", record=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pipelines.errors import UserError

    record = _recorded(args.run)
    if not record:
        raise UserError(f"{args.run} is not a run directory (no run.json)")
    if args.json:
        print(json.dumps(record.get("stages", {}), indent=2))
        return 0
    print("\n".join(status_lines(record, args.run)))
    return 0


def status_lines(record: dict[str, Any], where: str) -> list[str]:
    """What `gristmill status` prints: the run, then one line per stage (status, shards, seconds)."""
    from pipelines.stages import STAGES

    finished = f", finished {record['finished_at']}" if record.get("finished_at") else ""
    lines = [
        f"run {record.get('run_id')} in {where}: {record.get('status', 'unknown')} "
        f"(started {record.get('created_at', '?')}{finished})",
        "  inputs: " + ", ".join(str(i) for i in record.get("inputs") or []),
        f"  {'stage':<10} {'status':<12} {'shards':>11} {'seconds':>9}  started",
    ]
    stages = record.get("stages", {})
    for stage in STAGES:
        info = stages.get(stage.name, {})
        shards = info.get("shards") or {}
        counted = f"{shards['done']:,}/{shards['total']:,}" if shards else "-"
        seconds = f"{info['seconds']:.1f}" if isinstance(info.get("seconds"), int | float) else "-"
        error = f"  {info['error']}" if info.get("error") else ""
        lines.append(f"  {stage.name:<10} {info.get('status', 'not run'):<12} {counted:>11} {seconds:>9}  "
                     f"{info.get('started_at', '-')}{error}")  # fmt: skip
    return lines


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
    run = RunDir(args.run).pull()  # an s3:// run: run.json; the report fetches what it reads
    against = RunDir(args.against).pull() if args.against else None
    for path, opened in ((args.run, run), (args.against, against)):
        if opened is not None and not opened.run_json.exists():
            raise SystemExit(f"error: {path} is not a run directory (no run.json)")
    if args.policy:
        comparison, paths = write_whatif(run, args.policy, args.workers or 0)
        print(
            f"what-if {args.policy}: kept documents {comparison['kept_documents_before']:,} -> "
            f"{comparison['kept_documents_after']:,} ({comparison['newly_dropped']:,} newly dropped, "
            f"{comparison['newly_kept']:,} newly kept)"
        )
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
    return _launch(train_command(cfg, resume=args.resume), args.dry_run)


def _launch(command: list[str], dry_run: bool) -> int:
    """Run a torchrun command line (print it only with --dry-run); its exit status."""
    if dry_run:
        print(shlex.join(command))
        return 0
    log.info("launching: %s", shlex.join(command))
    return subprocess.call(command)


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import run

    return run(args)


def cmd_export_text(args: argparse.Namespace) -> int:
    from pipelines.export import export_text
    from pipelines.run import RunDir

    summary = export_text(RunDir(args.run).pull_all(), Path(args.output), args.format)
    counts = ", ".join(f"{n:,} {split}" for split, n in summary["documents"].items()) or "no"
    out = args.output.rstrip("/")
    print(f"export-text: {counts} documents -> {out}/data/*.{args.format} (dataset card: {out}/README.md)")
    return 0


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


def cmd_sft(args: argparse.Namespace) -> int:
    from training.config import SFTConfig, to_argv

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    cfg = SFTConfig(**{k: v for k, v in vars(args).items() if k in names})
    nproc = f"--nproc_per_node={cfg.nproc}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", nproc, "-m", "training.sft"]
    command += [*to_argv(cfg), *(["--resume"] if args.resume else [])]
    return _launch(command, args.dry_run)


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


def _add_run_arg(p: argparse.ArgumentParser) -> None:
    """RUN, the run directory a stage command writes into (`--output`: the same, an older spelling)."""
    p.add_argument("--run", "--output", dest="run", required=True, metavar="RUN",
                   help="run directory (a folder or s3:// URI; --output is the same flag)")  # fmt: skip


def _add_config_args(p: argparse.ArgumentParser, inputs: bool = True, run_id: bool = False) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (defaults: `gristmill config`)")
    if inputs:
        p.add_argument("--input", nargs="+", metavar="URI", help="input files or folders (local or s3://)")
        p.add_argument("--text-key", metavar="KEY", help="field or column of the text (default: text)")
        p.add_argument("--id-key", metavar="KEY", help="field or column of a record's own id (default: id)")
    p.add_argument("--workers", type=int, help="worker processes (0: every core)")
    p.add_argument("--policy", help="policy YAML (default: the bundled one)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set dedup.threshold=0.7 (repeatable)",
    )
    if run_id:
        p.add_argument("--run-id", help="run directory name under --output (default: from the time)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gristmill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"gristmill {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="whole corpus build into RUN (in process; the Prefect flow build_corpus with PREFECT_API_URL)",
        description="Every stage into the run directory RUN (--run RUN, or --output DIR --run-id ID: "
        "DIR/ID). Given an existing RUN without --input, it resumes from what run.json recorded.",
    )
    _add_config_args(p, run_id=True)
    p.add_argument("--run", metavar="RUN", help="run directory (same as --output PARENT --run-id NAME)")
    p.add_argument("--output", help="folder holding run directories (default: runs)")
    p.add_argument(
        "--force-restart",
        action="store_true",
        help="discard what earlier attempts of this run wrote and start over (e.g. after its inputs changed)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("filter", help="ingest inputs and compute signals + keep/drop into RUN/signals")
    _add_config_args(p)
    _add_run_arg(p)
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser(
        "dedup", help="near-dedup the kept documents of RUN (ingesting --input first if given)"
    )
    _add_config_args(p)
    _add_run_arg(p)
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("tokenizer", help="tokenizer commands")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train the BPE tokenizer on RUN's final corpus into RUN/tokenizer")
    _add_config_args(t, inputs=False)
    _add_run_arg(t)
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("tokenize", help="write token shards + manifest into RUN/tokens")
    _add_config_args(p, inputs=False)
    _add_run_arg(p)
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("status", help="stages of RUN: status, shards done of total, timings (run.json)")
    p.add_argument("run", metavar="RUN", help="run directory (a folder or s3:// URI)")
    p.add_argument("--json", action="store_true", help="print run.json's stage records as JSON")
    p.set_defaults(func=cmd_status)

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
    p = sub.add_parser(
        "export-text",
        help="write RUN's final corpus (text, ids, metadata, lang, quality_score) as a dataset with a card",
        description="The documents the policy kept and dedup did not remove, with their cleaned text, in "
        "input order and the token shards' train/validation split: DIR/data/{train,validation}-NNNNN.* "
        "and DIR/README.md. Loads with datasets.load_dataset(DIR) and pyarrow.dataset(DIR/data).",
    )
    p.add_argument("run", metavar="RUN", help="run directory (local or s3://)")
    p.add_argument("--output", required=True, metavar="DIR", help="a new or empty local folder")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="file format")
    p.set_defaults(func=cmd_export_text)
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

    p = sub.add_parser(
        "sft",
        help="instruction-tune a checkpoint on JSONL conversations with torchrun",
        description="Runs `python -m training.sft` under torchrun: the chat template's tokens are added "
        "to the checkpoint's tokenizer, the loss is on the assistant's tokens, examples are packed with "
        "attention masked per example (docs/training.md).",
        formatter_class=HelpFormatter,
    )
    add_train_arguments(p, settings=SFTConfig)
    p.add_argument("--nproc", type=int, default=1, help="processes per node (torchrun --nproc_per_node)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    p.set_defaults(func=cmd_sft)

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
    _add_debug_flag(parser)
    return parser


DEBUG_HELP = "show the traceback of an error"


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """--debug on the top level and on every command below it (`gristmill run ... --debug` works)."""
    if "--debug" not in parser._option_string_actions:
        # below the top, SUPPRESS keeps a command's default from overwriting `gristmill --debug CMD`
        default = False if top else argparse.SUPPRESS
        parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_debug_flag(command, top=False)


def _version() -> str:
    try:
        return metadata.version("gristmill")
    except metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def _error(message: str) -> None:
    """One line on stderr: `gristmill: error: ...`."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"gristmill: error: {text.removeprefix('error: ')}", file=sys.stderr)


def _interrupted(args: argparse.Namespace, signum: int) -> int:
    """After Ctrl-C or SIGTERM: mark where the run stopped, one line saying how to resume."""
    where = ""
    root = getattr(args, "run_root", None)
    if root:
        try:
            stages = _recorded(root).get("stages", {})
        except Exception:
            stages = {}
        stopped = [name for name, info in stages.items() if info.get("status") in ("interrupted", "running")]
        if stopped:
            shards = stages[stopped[-1]].get("shards") or {}
            counted = f", {shards['done']} of {shards['total']} shards done" if shards else ""
            where = f" in stage {stopped[-1]}{counted}"
    hint = getattr(args, "resume_hint", None) or shlex.join(["gristmill", *sys.argv[1:]])
    print(f"gristmill: interrupted{where}; resume with: {hint}", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    from pipelines.errors import UserError
    from pipelines.exec.runner import Interrupted, stop_on_signals

    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    _setup_logging(under_prefect=args.command == "run" and _under_prefect())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop_on_signals()  # SIGINT (also when started with it ignored) and SIGTERM: Interrupted
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        if debug:
            traceback.print_exc()
        _error(exc.code)
        return 2
    except (UserError, ValueError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return 2
    except Exception as exc:
        if debug:
            raise
        _error(f"{type(exc).__name__}: {exc} (--debug shows the traceback)")
        return 1
    except BaseException as exc:  # Prefect's termination signal (SIGTERM inside the flow)
        if type(exc).__name__ != "TerminationSignal":
            raise
        return _interrupted(args, signal.SIGTERM)
    finally:  # main() called in a process that goes on (tests)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
