"""`gristmill train`: every `train:` config field reaches `python -m training.train` intact."""

from __future__ import annotations

import shlex
from fractions import Fraction
from pathlib import Path

import pytest
from gristmill_cli import gristmill

from flows.cli import LAUNCHER_FIELDS, train_command
from flows.config import TrainConfig
from training.mixing import as_fraction
from training.train import build_parser

# a value other than the default for every field, so a field that is dropped on the way shows up
NON_DEFAULTS = {
    "data": ["s3://bucket/a/tokens/manifest.json", "/data/b/tokens/manifest.json"],
    "data_weights": [0.7, "1/3"],
    "output": "s3://bucket/model",
    "nproc": 4,
    "preset": "15m",
    "seq_len": 512,
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
    "loader_workers": 2,
    "prefetch_steps": 4,
    "data_cache_mb": 128,
    "verify_shards": True,
    "trace": False,
    "staging_dir": "/scratch/stage",
}


def test_every_train_field_is_set_in_the_test() -> None:
    assert set(NON_DEFAULTS) == set(TrainConfig.model_fields)
    defaults = TrainConfig().model_dump()
    assert all(NON_DEFAULTS[k] != defaults[k] for k in NON_DEFAULTS)


def test_train_command_round_trips_through_the_training_parser() -> None:
    cfg = TrainConfig(**NON_DEFAULTS)
    command = train_command(cfg, resume=True)
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in command
    options = command[command.index("training.train") + 1 :]
    parsed = vars(build_parser().parse_args(options))
    assert parsed.pop("resume") is True
    for name, value in cfg.model_dump().items():
        if name == "data_weights":
            assert [as_fraction(w) for w in parsed[name]] == [Fraction(7, 10), Fraction(1, 3)]
        elif name not in LAUNCHER_FIELDS:
            assert parsed[name] == value, name


def test_defaults_leave_training_defaults_alone() -> None:
    cfg = TrainConfig(data=["m.json"], output="out", warmup_steps=None)
    options = train_command(cfg)[train_command(cfg).index("training.train") + 1 :]
    assert "--warmup-steps" not in options and "--no-trace" not in options and "--compile" not in options
    parsed = build_parser().parse_args(options)
    assert parsed.warmup_steps is None and parsed.trace is True and parsed.stop_at is None


def test_cli_dry_run_merges_config_flags_and_set(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  preset: tiny\n  parallel: fsdp\n  data: [runs/a/tokens/manifest.json]\n")
    result = gristmill(
        "train", str(config), "--dry-run", "--nproc", "3", "--output", "out", "--set", "train.compile=true",
        "--set", "train.grad_accum=2", "--data-weights", "1", cwd=tmp_path,
    )  # fmt: skip
    command = shlex.split(result.stdout.strip())
    options = command[command.index("training.train") + 1 :]
    parsed = build_parser().parse_args(options)
    assert "--nproc_per_node=3" in command
    assert parsed.data == [str(tmp_path / "runs/a/tokens/manifest.json")]  # relative to the config file
    assert (parsed.preset, parsed.parallel, parsed.compile, parsed.grad_accum) == ("tiny", "fsdp", True, 2)
    assert parsed.data_weights == ["1"] and parsed.output == "out"


def test_cli_default_output_and_missing_data(tmp_path: Path) -> None:
    manifest = tmp_path / "run" / "tokens" / "manifest.json"
    result = gristmill("train", "--data", str(manifest), "--dry-run", cwd=tmp_path)
    options = shlex.split(result.stdout)
    assert options[options.index("--output") + 1] == str(tmp_path / "run" / "model")
    missing = gristmill("train", "--dry-run", check=False)
    assert missing.returncode != 0 and "no training data" in missing.stderr


@pytest.mark.parametrize("bad", ["train.parallel=tp", "train.grad_accum=0", "train.bogus=1"])
def test_cli_rejects_invalid_train_settings(bad: str) -> None:
    result = gristmill("train", "--data", "m.json", "--dry-run", "--set", bad, check=False)
    assert result.returncode != 0 and "invalid configuration" in result.stderr
