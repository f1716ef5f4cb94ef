"""Training settings: one dataclass for the ``train:`` section of a run config and for the options
of ``python -m training.train``.

Every field carries its help text in its metadata, and for numbers its bounds (``ge``, ``gt``,
``le``); ``__post_init__`` checks bounds, choices and mixing weights, so a :class:`TrainConfig` is
valid however it was made: parsed here by :func:`build_parser`, from YAML by pydantic in the run
configuration of ``flows/``, or in Python. :func:`to_argv` turns one back into the options of
``python -m training.train``. Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<=")}
ROPE_SCALING_CHOICES = ("linear", "ntk", "yarn")


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A field with an immutable default, its help and other metadata (``ge``/``gt``/``le`` bounds,
    ``required`` on the command line, ``launcher``: an option of torchrun, not of training.train)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """The torchrun training stage (`gristmill train`); fields are `python -m training.train` options."""

    # pydantic (flows/ validates run configs with it) reads this: unknown keys are errors
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    data: list[str] = field(default_factory=list, metadata={
        "help": "tokens/_manifest.json of runs (local or s3://); several are mixed by weight",
        "required": True, "metavar": "MANIFEST"})  # fmt: skip
    data_weights: list[float | str] | None = field(default=None, metadata={
        "help": "training-token share per manifest: a number or a fraction like 1/3 (default: their "
        "train token counts)", "metavar": "W"})  # fmt: skip
    output: str | None = _field(
        None, "checkpoint folder or s3:// prefix (`gristmill train` default: <run>/model)", required=True
    )
    nproc: int = _field(2, "processes per node (torchrun --nproc_per_node)", ge=1, launcher=True)
    preset: Literal["tiny", "small", "15m", "gpt2-124m", "1b"] = _field(
        "small", "model size preset (the vocabulary comes from the manifest)"
    )
    seq_len: int = _field(128, "tokens per training sequence", ge=8)
    resume_from: str | None = _field(
        None,
        "start from this checkpoint's weights (a step dir or a training output's latest): a new run "
        "with a fresh optimizer, schedule and data order, e.g. a long-context fine-tune",
        metavar="CKPT",
    )
    rope_scaling: Literal["linear", "ntk", "yarn"] | None = _field(
        None, "rotary scaling for a context beyond the one --resume-from was trained on"
    )
    rope_factor: float | None = _field(
        None, "with rope_scaling: the new context as a multiple of the trained one (default: "
        "seq_len / the trained seq_len)", ge=1
    )  # fmt: skip
    batch_size: int = _field(16, "sequences per optimizer step, over all processes", ge=1)
    grad_accum: int = _field(1, "micro-batches per optimizer step on each process", ge=1)
    max_steps: int = _field(200, "optimizer steps of the whole run (sets the LR schedule)", ge=1)
    stop_at: int | None = _field(
        None,
        "end this invocation after this step with a checkpoint, keeping the LR schedule of max_steps "
        "(preemptible jobs; default: max_steps)",
        ge=1,
    )
    lr: float = _field(3e-3, "peak learning rate", gt=0)
    warmup_steps: int | None = _field(None, "linear warm-up steps (default: 10% of max_steps)", ge=0)
    min_lr_ratio: float = _field(0.1, "cosine decay floor as a fraction of lr", ge=0, le=1)
    weight_decay: float = _field(0.1, "AdamW weight decay (matrices only)", ge=0)
    grad_clip: float = _field(1.0, "max global gradient norm", gt=0)
    dtype: Literal["fp32", "bf16"] = _field(
        "fp32", "compute precision; bf16: autocast (one process, DDP) or FSDP2 bf16 params, fp32 reductions"
    )
    parallel: Literal["ddp", "fsdp"] = _field(
        "ddp", "data parallelism under torchrun: replicate (DDP) or shard (FSDP2 fully_shard)"
    )
    tp: int = _field(
        1, "tensor-parallel ranks per model replica (Megatron-style q/k/v, w1/w3 by column, wo/w2 by "
        "row; ranks = data-parallel groups x tp)", ge=1
    )  # fmt: skip
    sequence_parallel: bool = _field(
        False, "with tp > 1: shard the norms' activations along the sequence over the tp ranks"
    )
    compile: bool = _field(False, "torch.compile the model")
    activation_checkpointing: bool = _field(False, "recompute block activations in backward")
    deterministic: bool = _field(False, "torch.use_deterministic_algorithms (bitwise repeatable runs)")
    seed: int = _field(0, "seed of model init and data order")
    eval_every: int = _field(100, "steps between validation-loss evaluations (0: never)", ge=0)
    eval_batches: int = _field(10, "global batches of validation windows per evaluation", ge=1)
    log_every: int = _field(10, "steps between log lines", ge=1)
    save_every: int = _field(500, "steps between checkpoints (0: only at the end)", ge=0)
    keep_last: int = _field(3, "newest checkpoints kept", ge=1)
    peak_flops: float | None = _field(
        None, "peak FLOP/s per device for MFU (default: GRISTMILL_PEAK_FLOPS, else the table by device)", gt=0
    )
    data_lanes: int | None = _field(
        None,
        "lanes of the data order: each global batch takes batch_size/lanes windows from every lane, and a "
        "rank reads only its own lanes when the world size divides them (default: gcd(batch_size, 8))",
        ge=1,
    )
    shuffle_chunk_tokens: int = _field(
        8 << 20, "tokens of consecutive stream per chunk of the data order (a rank reads each once)", ge=1
    )
    shuffle_buffer_chunks: int = _field(
        4, "chunks of a lane whose windows are shuffled together (the shuffle buffer)", ge=1
    )
    loader_workers: int = _field(4, "threads per rank that fetch and decode row groups", ge=1)
    prefetch_steps: int = _field(2, "batches built ahead of the training step", ge=0)
    data_cache_mb: int = _field(
        1024,
        "decoded row groups kept in memory per split and rank: the shuffle buffers of the rank's lanes "
        "and the read-ahead",
        ge=0,
    )
    verify_shards: bool = _field(
        False, "hash every shard against the manifest first (a full read, spread over the ranks)"
    )
    dist_timeout_s: int = _field(1800, "seconds a collective may wait, setup included", ge=1)
    trace: bool = _field(True, "write the per-step data trace (shards and documents read)")
    profile_start: int | None = _field(
        None, "record a torch.profiler window from this step on (OUTPUT/profile/; default: off)", ge=0
    )
    profile_steps: int = _field(3, "steps the profiler window records", ge=1)
    staging_dir: str | None = _field(
        None, "local staging folder for S3 checkpoints and logs (default: under $TMPDIR)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.rope_scaling is not None and self.resume_from is None:
            raise ValueError("rope_scaling: scales the context of a pretrained model; give resume_from")
        if self.data_lanes is not None and self.batch_size % self.data_lanes:
            raise ValueError(f"data_lanes: {self.data_lanes} does not divide batch_size {self.batch_size}")
        if self.data_weights is not None:
            if len(self.data_weights) != len(self.data):
                raise ValueError(f"{len(self.data)} data manifests but {len(self.data_weights)} data_weights")
            for weight in self.data_weights:
                as_fraction(weight)


def check_fields(config: Any) -> None:
    """Check a settings dataclass's choices (``Literal`` fields) and bounds (``ge``/``gt``/``le``)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        choices = typing.get_args(hints[f.name])
        if typing.get_origin(hints[f.name]) is Literal and value not in choices:
            raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
        for bound, (check, word) in _BOUNDS.items():
            if bound in f.metadata and value is not None and not check(value, f.metadata[bound]):
                raise ValueError(f"{f.name}: must be {word} {f.metadata[bound]}, got {value}")


@dataclass
class SFTConfig:
    """Instruction tuning (`gristmill sft`, `python -m training.sft`) of a pretrained checkpoint."""

    checkpoint: str | None = _field(
        None, "pretrained checkpoint: a step dir or a training output's latest (local or s3://)",
        required=True, metavar="CKPT",
    )  # fmt: skip
    data: list[str] = field(default_factory=list, metadata={
        "help": "JSONL files of conversations: `messages` [{role, content}] or `prompt`/`response` "
        "(local or s3://; .gz/.zst too)", "required": True, "metavar": "URI"})  # fmt: skip
    output: str | None = _field(None, "checkpoint folder or s3:// prefix", required=True)
    nproc: int = _field(1, "processes per node (torchrun --nproc_per_node)", ge=1, launcher=True)
    seq_len: int | None = _field(
        None, "tokens per training window (default: the checkpoint's training --seq-len)", ge=8
    )
    packing: bool = _field(
        True, "pack several examples per window, attention masked per example (else one per window, padded)"
    )
    validation_fraction: float = _field(
        0.05, "share of examples held out for validation (by a hash of their position)", ge=0, le=0.5
    )
    batch_size: int = _field(16, "windows per optimizer step, over all processes", ge=1)
    grad_accum: int = _field(1, "micro-batches per optimizer step on each process", ge=1)
    max_steps: int = _field(200, "optimizer steps (sets the LR schedule)", ge=1)
    stop_at: int | None = _field(
        None, "end this invocation after this step with a checkpoint (default: max_steps)", ge=1
    )
    lr: float = _field(3e-4, "peak learning rate", gt=0)
    warmup_steps: int | None = _field(None, "linear warm-up steps (default: 5% of max_steps)", ge=0)
    min_lr_ratio: float = _field(0.1, "cosine decay floor as a fraction of lr", ge=0, le=1)
    weight_decay: float = _field(0.0, "AdamW weight decay (matrices only)", ge=0)
    grad_clip: float = _field(1.0, "max global gradient norm", gt=0)
    dtype: Literal["fp32", "bf16"] = _field("fp32", "compute precision, as in pretraining")
    parallel: Literal["ddp", "fsdp"] = _field("ddp", "data parallelism under torchrun, as in pretraining")
    tp: int = _field(1, "tensor-parallel ranks per model replica, as in pretraining", ge=1)
    compile: bool = _field(False, "torch.compile the model")
    activation_checkpointing: bool = _field(False, "recompute block activations in backward")
    deterministic: bool = _field(False, "torch.use_deterministic_algorithms (bitwise repeatable runs)")
    seed: int = _field(0, "seed of the window order and the new token rows' noise-free init")
    eval_every: int = _field(50, "steps between validation-loss evaluations (0: never)", ge=0)
    eval_windows: int = _field(64, "validation windows per evaluation (the first ones)", ge=1)
    log_every: int = _field(10, "steps between log lines", ge=1)
    save_every: int = _field(100, "steps between checkpoints (0: only at the end)", ge=0)
    keep_last: int = _field(2, "newest checkpoints kept", ge=1)
    dist_timeout_s: int = _field(1800, "seconds a collective may wait, setup included", ge=1)
    staging_dir: str | None = _field(
        None, "local staging folder for S3 checkpoints and logs (default: under $TMPDIR)"
    )

    def __post_init__(self) -> None:
        check_fields(self)


LAUNCHER_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("launcher"))


def as_fraction(weight: float | int | str | Fraction) -> Fraction:
    """An exact mixing weight: decimal strings and floats by their shortest decimal form."""
    try:
        value = Fraction(str(weight)) if isinstance(weight, float) else Fraction(weight)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"data_weights: {weight!r} is not a number or a fraction") from exc
    if value <= 0:
        raise ValueError(f"mixing weights must be positive, got {weight}")
    return value


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _option(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation: ``type``, ``choices``, ``nargs`` or a bool action."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return {"nargs": "+", "type": item if isinstance(item, type) else str}
    if typing.get_origin(hint) is Literal:
        return {"choices": typing.get_args(hint)}
    return {"type": hint}


def add_arguments(
    parser: argparse.ArgumentParser, overrides: bool = False, settings: type = TrainConfig
) -> None:
    """One ``--field-name`` option per field of ``settings`` (TrainConfig, SFTConfig).
    ``overrides=False`` (``python -m training.train``): the dataclass defaults, required fields
    required, launcher fields left out; ``True`` (``gristmill train``): every field, absent from the
    namespace unless given, to lay over a config."""
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        if f.metadata.get("launcher") and not overrides:
            continue
        help = f.metadata["help"].replace("%", "%%")
        kwargs = {"dest": f.name, "help": help, "metavar": f.metadata.get("metavar")}
        kwargs.update(_option(hints[f.name]))
        if "action" in kwargs:
            del kwargs["metavar"]
        if overrides:
            kwargs["default"] = argparse.SUPPRESS
        elif f.metadata.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = _default(f)
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help text already names its default or the flag is required."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.train``: every TrainConfig field, and ``--resume``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a decoder-only transformer on gristmill token shards (torchrun-compatible).",
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --output (default: off; starts fresh if there is none)",
    )
    return parser


def add_generate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m training.generate`` (and ``gristmill generate``)."""
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a training --output dir")
    p.add_argument("--prompt", required=True, help="text to continue (may be empty)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="maximum number of tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: nondeterministic)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    add_context_arguments(p)
    p.add_argument(
        "--chat",
        action="store_true",
        help="format the prompt as a user message with the chat template (an sft checkpoint)",
    )
    p.add_argument("--system", default=None, help="with --chat: a system message before the prompt")
    return p


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``gristmill eval`` that concern the model (the data options are the CLI's)."""
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or training output (local or s3://)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per evaluation window (default: the checkpoint's training --seq-len)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="compute precision (autocast)")
    add_context_arguments(p)
    return p


def add_context_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Rotary scaling and quantization at inference (generate, eval, export)."""
    p.add_argument(
        "--rope-scaling",
        choices=ROPE_SCALING_CHOICES,
        default=None,
        help="stretch rotary positions beyond the trained context (default: the checkpoint's)",
    )
    p.add_argument(
        "--rope-factor",
        type=float,
        default=None,
        help="with --rope-scaling: the new context as a multiple of the trained one",
    )
    p.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        default=None,
        help="weight-only quantization: int8 per channel, int4 in groups of 64 (torchao)",
    )
    return p


def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m training.export`` (and ``gristmill export``)."""
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or training output (local or s3://)")
    p.add_argument("--output", required=True, help="directory for the Hugging Face model")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the exported weights")  # fmt: skip
    add_context_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """(config, resume) from ``python -m training.train`` arguments; exits with a usage error."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    resume = options.pop("resume")
    try:
        return TrainConfig(**options), resume
    except ValueError as exc:
        parser.error(str(exc))


def to_argv(cfg: TrainConfig) -> list[str]:
    """The ``python -m training.train`` options that give ``cfg``: the required fields and every field
    that differs from its default (launcher fields are the launcher's)."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = value == _default(f) and not f.metadata.get("required")
        if f.metadata.get("launcher") or value is None or default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    return argv
