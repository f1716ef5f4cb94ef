"""The command line's shape: help on every flag, --version, --debug anywhere, run ids, `gristmill status`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.cli import build_parser, main, status_lines
from pipelines.config import RunConfig
from pipelines.errors import UserError
from pipelines.run.layout import check_run_id


def _parsers(parser: argparse.ArgumentParser, path: str = "gristmill") -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _parsers(command, f"{path} {name}")


def test_every_flag_of_every_command_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    commands = {path for path, _ in _parsers(build_parser())}
    assert {"gristmill run", "gristmill status", "gristmill tokenizer train"} <= commands
    assert not missing, f"flags without help text: {missing}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gristmill {metadata.version('gristmill')}"


def test_debug_is_accepted_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--debug", "status", "r"]).debug is True
    assert parser.parse_args(["status", "r", "--debug"]).debug is True
    assert parser.parse_args(["status", "r"]).debug is False


def test_stage_commands_name_the_run_directory_with_run_and_the_older_output() -> None:
    parser = build_parser()
    for command in (["tokenize"], ["tokenizer", "train"], ["filter"], ["dedup"]):
        assert parser.parse_args([*command, "--run", "runs/r"]).run == "runs/r"
        assert parser.parse_args([*command, "--output", "runs/r"]).run == "runs/r"
    assert parser.parse_args(["run", "--run", "runs/r"]).run == "runs/r"


@pytest.mark.parametrize("run_id", ["r", "run-20261203-101500", "nightly.v2_a", "A" * 128])
def test_valid_run_ids(run_id: str) -> None:
    assert check_run_id(run_id) == run_id
    assert RunConfig(run_id=run_id).run_id == run_id


@pytest.mark.parametrize(
    "run_id", ["", "..", "../escaped", "a/b", "/abs", "a\x00b", ".hidden", "-x", "A" * 129]
)
def test_invalid_run_ids_are_rejected(run_id: str) -> None:
    with pytest.raises(UserError, match="invalid run id"):
        check_run_id(run_id)
    with pytest.raises(ValueError, match="invalid run id"):
        RunConfig(run_id=run_id)


RECORD = {
    "run_id": "r",
    "status": "interrupted",
    "created_at": "2026-12-03T10:00:00+00:00",
    "inputs": ["/data/in"],
    "stages": {
        "ingest": {"status": "done", "seconds": 2.5, "shards": {"done": 4, "total": 4}, "started_at": "t0"},
        "signals": {"status": "interrupted", "seconds": 1.5, "shards": {"done": 1, "total": 4}},
    },
}


def test_status_lines_show_every_stage_with_shards_and_seconds() -> None:
    lines = status_lines(RECORD, "runs/r")
    assert lines[0].startswith("run r in runs/r: interrupted (started 2026-12-03T10:00:00+00:00")
    assert lines[1] == "  inputs: /data/in"
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert list(rows) == ["ingest", "signals", "dedup", "tokenizer", "tokenize", "report"]
    assert rows["ingest"][1:4] == ["done", "4/4", "2.5"]
    assert rows["signals"][1:4] == ["interrupted", "1/4", "1.5"]
    assert rows["dedup"][1:3] == ["not", "run"]


def test_status_command_reads_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(RECORD))
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "signals" in out and "1/4" in out
    assert main(["status", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signals"]["shards"] == {"done": 1, "total": 4}
    assert main(["status", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gristmill: error: {tmp_path / 'none'} is not a run directory (no run.json)"]
