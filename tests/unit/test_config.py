"""The run configuration: YAML, overrides, validation errors and the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.config import Config as RunConfig
from flows.config import describe, load_config, parse_override


def test_printed_defaults_are_valid_yaml_equal_to_the_model_defaults() -> None:
    text = describe()
    assert RunConfig.model_validate(yaml.safe_load(text)) == RunConfig()
    # every field carries its meaning
    for line in text.splitlines():
        assert "  # " in line and line.split("  # ", 1)[1].strip(), line


def test_config_command_prints_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    assert "vocab_size: 8192" in capsys.readouterr().out


def test_yaml_paths_are_relative_to_the_file_and_overrides_win(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "run.yaml"
    config.parent.mkdir()
    config.write_text("inputs: [data/a.jsonl, /abs/b.jsonl]\noutput: out\ndedup: {threshold: 0.9}\n")
    cfg = load_config(config, dict([parse_override("dedup.threshold=0.7"), parse_override("train.nproc=4")]))
    assert cfg.inputs == [str(config.parent / "data/a.jsonl"), "/abs/b.jsonl"]
    assert cfg.output == str(config.parent / "out")
    assert cfg.dedup.threshold == 0.7 and cfg.train.nproc == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dedup: {threshold: 2}\n", "threshold"),
        ("no_such_section: {}\n", "no_such_section"),
        ("tokenizer: {vocab_size: many}\n", "vocab_size"),
        ("- a list\n", "YAML mapping"),
        ("inputs: [unclosed\n", "cannot read config"),
    ],
)
def test_invalid_configs_fail_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit, match=message):
        load_config(config)


def test_override_needs_an_equals_sign() -> None:
    with pytest.raises(SystemExit, match=r"section\.field=value"):
        parse_override("dedup.threshold")
