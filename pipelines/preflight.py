"""Checks of a run before anything starts: the user errors that would otherwise surface minutes later.

`check_run` raises `UserError` (one line) when the run id is not one safe path component, an input is
missing, unreadable or given twice, the policy or a model file does not load, the output cannot be
written, or the run directory already holds a run of other inputs. It writes nothing, so a failed check
leaves no run directory behind. Inputs on S3 are listed by the ingest stage, not here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import RunConfig
from pipelines.errors import UserError
from pipelines.io import s3
from pipelines.io.inputs import list_inputs
from pipelines.quality.plugins import load_run_policy
from pipelines.run.layout import check_run_id


def input_uri(entry: Any) -> str:
    """The URI of a config input: a string, or an entry with its own settings (`uri`)."""
    if isinstance(entry, str):
        return entry
    return str(entry["uri"] if isinstance(entry, dict) else entry.uri)


def check_run(config: RunConfig, root: str, inputs: bool = True, same_inputs: bool = True) -> None:
    """Every check of a run into `root` (a folder or an s3:// URI); `inputs=False` for a stage that
    reads an existing run instead of inputs; `same_inputs=False` when the run is to be discarded
    (`--force-restart`), so other inputs may take its place."""
    check_run_id(root.rstrip("/").rsplit("/", 1)[-1])
    if inputs:
        check_inputs([input_uri(entry) for entry in config.inputs])
    check_models(config)
    check_output(root)
    if inputs and same_inputs:
        check_same_inputs(root, [input_uri(entry) for entry in config.inputs])


def check_inputs(uris: list[str]) -> None:
    """Inputs given, each local one present and readable, none given twice or inside another."""
    if not uris:
        raise UserError("no inputs: give --input URI (or `inputs:` in the config)")
    seen: list[tuple[str, str]] = []  # (normalized, as given)
    for uri in uris:
        key = uri.rstrip("/") if s3.is_s3(uri) else os.path.realpath(uri)
        for other_key, other in seen:
            if key == other_key:
                raise UserError(f"input {uri!r} is given twice (also as {other!r})")
            inner, outer = (key, other_key) if len(key) > len(other_key) else (other_key, key)
            if inner.startswith(outer.rstrip("/") + "/"):
                given = {key: uri, other_key: other}
                raise UserError(f"input {given[inner]!r} is inside input {given[outer]!r}: read twice")
        seen.append((key, uri))
        if not s3.is_s3(uri):
            _check_readable(uri)
    local = [uri for uri in uris if not s3.is_s3(uri)]
    try:
        if local and not list_inputs(local):
            raise UserError(f"no input files in {local}")
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _check_readable(uri: str) -> None:
    path = Path(uri)
    if not path.exists():
        raise UserError(f"input path does not exist: {uri!r}")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"input folder is not readable: {uri!r}")
    if not path.is_dir() and not os.access(path, os.R_OK):
        raise UserError(f"input file is not readable: {uri!r}")


def check_models(config: RunConfig) -> None:
    """The policy parses and the model files the signals stage loads exist."""
    settings = config.signals
    try:
        load_run_policy(settings)  # imports the signal plugins: their columns are signals too
    except ValueError as exc:
        raise UserError(" ".join(str(exc).split())) from exc
    for field in ("langid_model", "quality_model"):
        value = getattr(settings, field)
        if value and not s3.is_s3(value) and not Path(value).is_file():
            raise UserError(f"signals.{field}: no such file: {value!r}")


def check_output(root: str) -> None:
    """The run directory, or the nearest folder above it that exists, is a folder this process can
    write in (checked by creating and removing an empty folder there)."""
    if not root or s3.is_s3(root):
        return
    path = Path(root).absolute()
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"output {root!r}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output {root!r}: {existing} is not a folder")
    try:  # a real write: permissions, read-only file systems and special folders (/proc) alike
        os.rmdir(tempfile.mkdtemp(prefix=".gristmill-check-", dir=existing))
    except OSError as exc:
        raise UserError(f"output {root!r}: cannot write in {existing} ({exc.strerror})") from exc


def check_same_inputs(root: str, uris: list[str]) -> None:
    """A run directory that exists holds a run of these inputs (else a resume would mix two corpora)."""
    if s3.is_s3(root):
        return
    run_json = Path(root) / "run.json"
    if not run_json.is_file():
        return
    try:
        recorded = json.loads(run_json.read_text()).get("inputs")
    except (OSError, ValueError) as exc:
        raise UserError(f"{run_json} is not readable: {exc}") from exc
    if recorded is not None and [_normal(u) for u in recorded] != [_normal(u) for u in uris]:
        raise UserError(
            f"{root} already holds a run of other inputs {recorded}: use another run directory, or "
            "--force-restart to discard that run"
        )


def _normal(uri: str) -> str:
    return uri.rstrip("/") if s3.is_s3(uri) else os.path.abspath(uri)
