"""Checkpoints with torch.distributed.checkpoint (DCP), on a local path or ``s3://``.

Layout under the training output (local directory or S3 prefix)::

    latest                    names the newest complete checkpoint (written last: the commit point)
    step-000500/
      model/                  DCP checkpoint of the model state dict (FQNs as in Transformer)
      optimizer/              DCP checkpoint of the AdamW state, keyed by parameter FQN
      rng/rank-00000.json     python, numpy, torch (and CUDA) RNG states of each rank
      config.json             model shape, tokenizer facts, data identity, training arguments
      train_state.json        step, data position, scheduler state, tokens seen, world size
      tokenizer.json          the manifest's tokenizer, so the directory is self-contained

DCP writes sharded state (FSDP2 DTensors or replicated DDP tensors) from every rank and reshards on
load, so a checkpoint resumes on any world size. Locally a checkpoint is written as
``.tmp-step-N`` (on a filesystem that every rank sees) and renamed when complete. For S3 each rank
writes its DCP files to a local staging directory and uploads them, then rank 0 uploads the JSON
files and repoints ``latest``. Only the newest ``keep_last`` checkpoints are kept; checkpoints
newer than the one being written (left by an abandoned run) are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from training import storage

CHECKPOINT_FORMAT = "gristmill.checkpoint"
CHECKPOINT_FORMAT_VERSION = 3
LATEST = "latest"
STEP_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def _is_step_name(name: str) -> bool:
    return name.startswith(STEP_PREFIX) and name.removeprefix(STEP_PREFIX).isdigit()


def _step_of(name: str) -> int:
    return int(name.removeprefix(STEP_PREFIX))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def default_staging(output: str) -> Path:
    digest = hashlib.sha256(storage.normalize(output).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "gristmill-train" / digest


def _no_dist() -> bool:
    """DCP without collectives when there is no process group (a plain single process)."""
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DCP's warning that it runs in a single process (expected outside torchrun)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intent is to (save|load) in a single process")
        yield


# ---------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as JSON-safe data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


# ---------------------------------------------------------------- the store


class CheckpointStore:
    """Checkpoints of one training output. ``save`` and ``load`` are collective: every rank calls them."""

    def __init__(self, output: str, rank: int = 0, local_rank: int = 0, staging: Path | None = None) -> None:
        self.output = storage.normalize(output)
        self.remote = storage.is_s3(self.output)
        self.rank, self.local_rank = rank, local_rank
        self.staging = Path(staging) if staging else default_staging(self.output)

    def uri(self, *parts: str) -> str:
        return "/".join([self.output, *parts])

    def step_names(self) -> list[str]:
        return sorted((n for n in storage.list_dirs(self.output) if _is_step_name(n)), key=_step_of)

    def latest(self) -> str | None:
        """Name of the newest complete checkpoint (from ``latest``; without it, the newest step dir
        holding train_state.json)."""
        try:
            name = storage.read_bytes(self.uri(LATEST)).decode().strip()
        except storage.NotFound:
            complete = [n for n in self.step_names() if storage.exists(self.uri(n, "train_state.json"))]
            return complete[-1] if complete else None
        if not storage.exists(self.uri(name, "train_state.json")):
            raise CheckpointError(f"{self.uri(LATEST)} names {name}, which is not a complete checkpoint")
        return name

    def read_json(self, name: str, file: str) -> dict[str, Any]:
        return json.loads(storage.read_bytes(self.uri(name, file)))

    # -------------------------------------------------------------- save

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        files: dict[str, bytes],
        rng: dict[str, Any],
        keep_last: int,
    ) -> str:
        """Write checkpoint ``step-N`` (DCP model + optimizer, this rank's RNG, rank 0's ``files``)."""
        name = step_name(step)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        if self.remote:
            local = self.staging / "save" / name / f"rank-{self.rank:05d}"
            shutil.rmtree(local, ignore_errors=True)
            if self.rank == 0:
                storage.delete_tree(self.uri(name))  # parts of an interrupted earlier attempt
            _barrier()
        else:
            local = Path(self.output) / f".tmp-{name}"
            if self.rank == 0:
                shutil.rmtree(local, ignore_errors=True)
                local.mkdir(parents=True)
            _barrier()
        with _quiet():
            dcp.save(model_sd, checkpoint_id=local / "model", no_dist=_no_dist())
            dcp.save(optim_sd, checkpoint_id=local / "optimizer", no_dist=_no_dist())
        (local / "rng").mkdir(parents=True, exist_ok=True)
        (local / "rng" / f"rank-{self.rank:05d}.json").write_text(json.dumps(rng))
        if self.remote:
            storage.upload_tree(local, self.uri(name))
            shutil.rmtree(local, ignore_errors=True)
        _barrier()
        if self.rank == 0:
            if self.remote:
                for file, data in files.items():
                    storage.write_bytes(self.uri(name, file), data)
            else:
                for file, data in files.items():
                    (local / file).write_bytes(data)
                final = Path(self.output) / name
                if final.exists():
                    shutil.rmtree(final)
                os.replace(local, final)
            storage.write_bytes(self.uri(LATEST), (name + "\n").encode())
            self._prune(step, keep_last)
        _barrier()
        return self.uri(name)

    def _prune(self, step: int, keep_last: int) -> None:
        names = self.step_names()
        older = [n for n in names if _step_of(n) <= step]
        for stale in older[:-keep_last] + [n for n in names if _step_of(n) > step]:
            storage.delete_tree(self.uri(stale))

    # -------------------------------------------------------------- load

    def local_copy(self, name: str, parts: tuple[str, ...] | None = None) -> Path:
        """A local directory holding checkpoint ``name`` (downloaded from S3 when remote)."""
        if not self.remote:
            return Path(self.output) / name
        local = self.staging / "load" / name
        if local.exists():
            shutil.rmtree(local)
        for part in parts or ("",):
            prefix = self.uri(name, part) if part else self.uri(name)
            if storage.list_files(prefix):
                storage.download_tree(prefix, local / part if part else local)
            else:
                storage.download_file(prefix, local / part)
        return local

    def load(
        self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
    ) -> dict[str, Any] | None:
        """Load model and optimizer state into the (wrapped) model; return this rank's RNG state, or
        None when the checkpoint has none for this rank (written on a smaller world size)."""
        if self.remote:
            if self.local_rank == 0:
                self.local_copy(name)
            _barrier()
            local = self.staging / "load" / name
        else:
            local = Path(self.output) / name
        model_sd, optim_sd = get_state_dict(model, optimizer)
        with _quiet():
            dcp.load(model_sd, checkpoint_id=local / "model", no_dist=_no_dist())
            dcp.load(optim_sd, checkpoint_id=local / "optimizer", no_dist=_no_dist())
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
        rng_file = local / "rng" / f"rank-{self.rank:05d}.json"
        rng = json.loads(rng_file.read_text()) if rng_file.is_file() else None
        _barrier()
        if self.remote and self.local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)
        return rng


def resolve(path: str) -> tuple[CheckpointStore, str]:
    """(store, checkpoint name) for a checkpoint directory itself or a training output directory."""
    uri = storage.normalize(path)
    if storage.exists(f"{uri}/train_state.json") and storage.exists(f"{uri}/config.json"):
        return CheckpointStore(storage.parent(uri)), uri.rsplit("/", 1)[-1]
    store = CheckpointStore(uri)
    name = store.latest()
    if name is None:
        raise CheckpointError(f"no checkpoint found at {path}")
    return store, name


def load_model_weights(model: nn.Module, checkpoint_dir: Path) -> None:
    """Load a checkpoint's ``model/`` DCP state into a plain single-process module."""
    state = model.state_dict()
    with _quiet():
        dcp.load(state, checkpoint_id=checkpoint_dir / "model", no_dist=_no_dist())
    model.load_state_dict(state)
