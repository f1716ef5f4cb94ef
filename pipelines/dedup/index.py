"""The cross-run dedup index: survivors of earlier runs, so that scheduled runs do not re-admit their
near-duplicates.

Layout of an index folder (all of its I/O is in this module, so an object-store backend replaces only this):

    manifest.json                       format, MinHash/LSH parameters, the list of parts (source of truth)
    parts/{part}/docs-{j:05d}.parquet   survivors of one run, one chunk per input shard:
                                        id, text_hash, n_words, minhash, excerpt
    parts/{part}/bands-{j:05d}.parquet  their LSH band keys (key, doc = row in the docs chunk), sorted by key

A part is named `{sequence:05d}-{run_id}`. Appending writes every chunk file atomically, then replaces
manifest.json atomically: a crash before that leaves an unlisted folder that readers ignore and the next
append overwrites. A run never matches its own part, and appending again replaces it (so a resumed run
does not remove its own documents). Appends hold an exclusive flock on `.lock` (released by the OS if the
process dies).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.dedup.lsh import write_keys
from pipelines.run.files import local_path, locked, write_json, write_parquet
from pipelines.run.record import now

FORMAT = "gristmill.dedup-index"
VERSION = 1


@dataclass(frozen=True)
class IndexChunk:
    """One chunk of an earlier run's survivors."""

    run_id: str
    docs: Path
    bands: Path


@dataclass
class PartWriter:
    """Writes the chunks of one part; the part exists once the manifest lists it."""

    folder: Path
    documents: int = 0
    chunks: int = 0
    written: list[str] = field(default_factory=list)

    def add(self, docs: pa.Table, band_keys: np.ndarray) -> None:
        """Add survivors (id, text_hash, n_words, minhash, excerpt) and their (rows, bands) band keys."""
        name = f"{self.chunks:05d}"
        rows = np.repeat(np.arange(docs.num_rows, dtype=np.uint64), band_keys.shape[1])
        write_keys(self.folder / f"bands-{name}.parquet", band_keys.reshape(-1), rows)
        write_parquet(docs, self.folder / f"docs-{name}.parquet")
        self.documents += docs.num_rows
        self.chunks += 1


class DedupIndex:
    """A persistent index folder (a local path)."""

    def __init__(self, uri: str, params: dict[str, Any]) -> None:
        self.uri = uri
        self.root = local_path(uri)
        self.params = params

    def manifest(self) -> dict[str, Any]:
        """The manifest (empty for a new index); refuses an index built with other parameters."""
        path = self.root / "manifest.json"
        if not path.exists():
            return {"format": FORMAT, "version": VERSION, "params": self.params, "parts": []}
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.uri} is not a gristmill dedup index (no {FORMAT} manifest)")
        if manifest.get("params") != self.params:
            raise ValueError(
                f"dedup index {self.uri} holds signatures made with {manifest.get('params')}, but this run "
                f"uses {self.params}; they are not comparable: use another index"
            )
        return manifest

    def chunks(self, exclude_run: str | None = None) -> list[IndexChunk]:
        """Every listed chunk, oldest part first, leaving out the part of `exclude_run`."""
        out = []
        for part in self.manifest()["parts"]:
            if part["run_id"] == exclude_run:
                continue
            folder = self.root / "parts" / part["part"]
            for j in range(part["chunks"]):
                docs, bands = folder / f"docs-{j:05d}.parquet", folder / f"bands-{j:05d}.parquet"
                out.append(IndexChunk(part["run_id"], docs, bands))
        return out

    def _lock(self) -> Any:
        return locked(self.root / ".lock")

    @contextlib.contextmanager
    def appending(self, run_id: str) -> Iterator[PartWriter]:
        """Write a run's survivors as a new part; it replaces the run's earlier part, if any, on success."""
        if not re.fullmatch(r"[\w.-]+", run_id):
            raise ValueError(f"run id {run_id!r} cannot name a dedup index part")
        with self._lock():
            manifest = self.manifest()
            sequence = 1 + max((int(p["part"].split("-", 1)[0]) for p in manifest["parts"]), default=-1)
            name = f"{sequence:05d}-{run_id}"
            folder = self.root / "parts" / name
            shutil.rmtree(folder, ignore_errors=True)  # left by an append that crashed
            folder.mkdir(parents=True)
            writer = PartWriter(folder)
            yield writer
            entry = {
                "part": name,
                "run_id": run_id,
                "documents": writer.documents,
                "chunks": writer.chunks,
                "created_at": now(),
            }
            replaced = [p for p in manifest["parts"] if p["run_id"] == run_id]
            parts = [p for p in manifest["parts"] if p["run_id"] != run_id] + [entry]
            write_json(self.root / "manifest.json", {**manifest, "parts": parts})
            for old in replaced:
                shutil.rmtree(self.root / "parts" / old["part"], ignore_errors=True)
