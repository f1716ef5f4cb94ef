"""`gristmill train`: every `train:` config field reaches `python -m training.train` intact; the one
TrainConfig (training/config.py) is the YAML section, the training parser and `gristmill config`."""

from __future__ import annotations

import dataclasses
import shlex
import typing
from fractions import Fraction
from pathlib import Path

import pytest
from gristmill_cli import gristmill

from flows.cli import train_command
from flows.config import describe, load_config
from training.config import LAUNCHER_FIELDS, TrainConfig, as_fraction, build_parser, parse_args, to_argv
from training.model import PRESETS

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]

# a value other than the default for every field, so a field that is dropped on the way shows up
NON_DEFAULTS = {
    "data": ["s3://bucket/a/tokens/manifest.json", "/data/b/tokens/manifest.json"],
    "data_weights": [0.7, "1/3"],
    "output": "s3://bucket/model",
    "nproc": 4,
    "preset": "15m",
    "seq_len": 512,
    "resume_from": "s3://bucket/short-context/step-001000",
    "rope_scaling": "yarn",
    "rope_factor": 4.0,
    "batch_size": 64,
    "grad_accum": 4,
    "max_steps": 1000,
    "stop_at": 250,
    "lr": 6e-4,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,
    "weight_decay": 0.01,
    "grad_clip": 0.5,
    "dtype": "bf16",
    "parallel": "fsdp",
    "tp": 2,
    "sequence_parallel": True,
    "compile": True,
    "activation_checkpointing": True,
    "deterministic": True,
    "seed": 7,
    "eval_every": 25,
    "eval_batches": 3,
    "log_every": 5,
    "save_every": 50,
    "keep_last": 2,
    "peak_flops": 989e12,
    "data_lanes": 16,
    "shuffle_chunk_tokens": 1 << 20,
    "shuffle_buffer_chunks": 8,
    "loader_workers": 2,
    "prefetch_steps": 4,
    "data_cache_mb": 128,
    "verify_shards": True,
    "dist_timeout_s": 600,
    "trace": False,
    "profile_start": 100,
    "profile_steps": 5,
    "staging_dir": "/scratch/stage",
}


def test_every_train_field_is_set_in_the_test() -> None:
    assert set(NON_DEFAULTS) == set(FIELDS)
    defaults = dataclasses.asdict(TrainConfig())
    assert all(NON_DEFAULTS[k] != defaults[k] for k in NON_DEFAULTS)


def _options(command: list[str]) -> list[str]:
    return command[command.index("training.train") + 1 :]


def test_train_command_round_trips_through_the_training_parser() -> None:
    cfg = TrainConfig(**NON_DEFAULTS)
    command = train_command(cfg, resume=True)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in command and LAUNCHER_FIELDS == ("nproc",)
    parsed, resume = parse_args(_options(command))
    assert resume is True
    assert [as_fraction(w) for w in parsed.data_weights or []] == [Fraction(7, 10), Fraction(1, 3)]
    assert dataclasses.replace(parsed, data_weights=cfg.data_weights, nproc=cfg.nproc) == cfg


def test_defaults_leave_training_defaults_alone() -> None:
    cfg = TrainConfig(data=["m.json"], output="out")
    assert to_argv(cfg) == ["--data", "m.json", "--output", "out"]
    assert parse_args(to_argv(cfg)) == (cfg, False)


def test_one_set_of_defaults_and_help() -> None:
    """The YAML section, the training parser and `gristmill config` show the same defaults and help."""
    assert load_config(None).train == TrainConfig()
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    described = describe().split("\ntrain:", 1)[1]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert f"  {f.name}: " in described and f.metadata["help"] in described, f.name
        if f.name not in LAUNCHER_FIELDS:
            action = actions[f.name]
            assert action.help == f.metadata["help"].replace("%", "%%")
            assert action.required or action.default == default, f.name
    assert "10% of max_steps" in parser.format_help()
    preset = typing.get_type_hints(TrainConfig)["preset"]
    assert set(typing.get_args(preset)) == set(PRESETS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seq-len", "4"], "seq_len: must be >= 8"),
        (["--min-lr-ratio", "1.5"], "min_lr_ratio: must be <= 1"),
        (["--data-weights", "1", "2"], "1 data manifests but 2 data_weights"),
        (["--data-weights", "x"], "not a number or a fraction"),
        (["--preset", "huge"], "invalid choice"),
    ],
)
def test_training_parser_rejects_invalid_settings(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data", "m.json", "--output", "out", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_dry_run_merges_config_flags_and_set(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  preset: tiny\n  parallel: fsdp\n  data: [runs/a/tokens/manifest.json]\n")
    result = gristmill(
        "train", str(config), "--dry-run", "--nproc", "3", "--output", "out", "--set", "train.compile=true",
        "--set", "train.grad_accum=2", "--data-weights", "1", "--no-trace", "--set", "train.seq_len=256",
        "--seq-len", "512", cwd=tmp_path,
    )  # fmt: skip
    command = shlex.split(result.stdout.strip())
    parsed, resume = parse_args(_options(command))
    assert "--nproc_per_node=3" in command and not resume
    assert parsed.data == [str(tmp_path / "runs/a/tokens/manifest.json")]  # relative to the config file
    assert (parsed.preset, parsed.parallel, parsed.compile, parsed.grad_accum) == ("tiny", "fsdp", True, 2)
    assert parsed.data_weights == ["1"] and parsed.output == "out"
    assert parsed.trace is False and parsed.seq_len == 512  # a flag wins over --set


def test_sft_dry_run_prints_the_torchrun_command(tmp_path: Path) -> None:
    from training.sft import build_parser as sft_parser

    result = gristmill(
        "sft", "--checkpoint", "ckpt", "--data", "chat.jsonl", "--output", "tuned", "--nproc", "2",
        "--max-steps", "7", "--resume", "--dry-run", cwd=tmp_path,
    )  # fmt: skip
    command = shlex.split(result.stdout.strip())
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    parsed = sft_parser().parse_args(command[command.index("training.sft") + 1 :])
    assert (parsed.checkpoint, parsed.data, parsed.output) == ("ckpt", ["chat.jsonl"], "tuned")
    assert parsed.max_steps == 7 and parsed.resume
    assert not (tmp_path / "tuned").exists()  # a dry run launches nothing


def test_cli_default_output_and_missing_data(tmp_path: Path) -> None:
    manifest = tmp_path / "run" / "tokens" / "manifest.json"
    result = gristmill("train", "--data", str(manifest), "--dry-run", cwd=tmp_path)
    options = shlex.split(result.stdout)
    assert options[options.index("--output") + 1] == str(tmp_path / "run" / "model")
    missing = gristmill("train", "--dry-run", check=False)
    assert missing.returncode != 0 and "no training data" in missing.stderr


@pytest.mark.parametrize(
    "bad", ["train.parallel=tp", "train.grad_accum=0", "train.bogus=1", "train.preset=huge", "train.lr=-1"]
)
def test_cli_rejects_invalid_train_settings(bad: str) -> None:
    result = gristmill("train", "--data", "m.json", "--dry-run", "--set", bad, check=False)
    assert result.returncode != 0 and "invalid configuration" in result.stderr
