"""The local mirror of a run directory on S3: explicit pulls, pushes per shard and per stage.

Stages read and write local files only. A run on `s3://bucket/prefix` is mirrored in
`<cache>/s3/<bucket>/<prefix>` (`pipelines.io.s3.cache_path`). `<mirror>/.gristmill/remote` names the
remote, so a mirror folder handed to a worker process is backed by S3 again; `.gristmill/state/` holds
one small file per synced file (size, mtime, sha256, ETag): a file whose size or mtime differs from its
state changed locally and is pushed; an object whose ETag differs changed remotely and is pulled (the
remote wins on a pull).

The mirror is filled lazily: opening a run (`open`) brings run.json up to date and lists the run; a
stage's driver pulls what it plans with (`pull_matching`); each shard task fetches just the objects it
reads (`ShardUpload`, `fetch`), on whatever machine it runs.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.io import s3
from pipelines.run.files import locked, write_atomic, write_json
from pipelines.run.layout import (
    INTERMEDIATE_PREFIXES,
    SHARD_COMPANIONS,
    STAGE_COMMIT_FILES,
    STAGE_FOLDERS,
    STAGES,
    RunLayout,
    is_commit_file,
)
from pipelines.run.record import now

log = logging.getLogger("gristmill")

RETENTION_TAG = {"gristmill-retention": "intermediate"}
NODE_ID_ENV = "GRISTMILL_NODE_ID"

_MIRROR_MARK = ".gristmill"  # <mirror>/.gristmill/remote (the URI) and state/<path>.json per synced file


def node_id() -> str:
    """This machine, as ShardUpload compares the driver's and a worker's: `$GRISTMILL_NODE_ID`, else the
    host name."""
    return os.environ.get(NODE_ID_ENV) or socket.gethostname()


class RemoteRun:
    """The local mirror of a run directory on S3 and its synchronisation.

    State per synced file (size, mtime, sha256, ETag) lives in `<mirror>/.gristmill/state/`, one small
    file each, so worker processes record their uploads without sharing a file. A file whose size or
    mtime differs from its state changed locally; an object whose ETag differs from the state changed
    remotely (the remote wins on a pull).
    """

    def __init__(self, uri: str, mirror: Path | None = None) -> None:
        self.uri = s3.S3Uri.parse(uri.rstrip("/"))
        if not self.uri.key:
            raise ValueError(f"{uri}: a run directory needs a prefix, not a whole bucket")
        self.root = mirror or s3.cache_path(self.uri)
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
                "sha256": meta.get(s3.SHA256_METADATA),
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
        objects = {o.key[len(self.uri.prefix) :]: o for uri in listed for o in s3.list_objects(uri)}
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
            if s3.head(self.uri.join(rel)) is None:  # not uploaded since the listing
                (self.root / rel).unlink(missing_ok=True)
                self._state_path(rel).unlink(missing_ok=True)

        def fetch(rel: str) -> None:
            info = s3.download(self.uri.join(rel), self.root / rel)
            self._record(rel, self.root / rel, info)

        _parallel(forget, gone)
        _parallel(fetch, todo)
        if todo:
            where = f"{self.uri} (endpoint {s3.endpoint()})"
            log.info("pulled %d files of %s into %s", len(todo), where, self.root)
        return len(todo)

    def open(self) -> None:
        """What opening a run reads: one listing of the run and run.json."""
        self.pull(wanted=lambda rel: rel == "run.json")

    def pull_matching(self, patterns: tuple[str, ...] | list[str]) -> int:
        """Pull the files matching any of `patterns` (`matches`), listing only their folders; a pattern
        without a wildcard (a run's metadata file, such as `_shards.json`) is fetched by name."""
        exact = [p for p in patterns if "*" not in p]
        globbed = [p for p in patterns if "*" in p]
        fetched = self.fetch(exact) if exact else 0
        if not globbed:
            return fetched
        folders = tuple(sorted({posix_dirname(p.split("*")[0]) for p in globbed}))
        if "" in folders:
            folders = ()
        return fetched + self.pull(folders or None, lambda rel: any(matches(rel, p) for p in globbed))

    def fetch(self, rels: list[str]) -> int:
        """Download files of the run unless the mirror holds the object's current version (one HEAD
        each); an entry `a|b` is the first of a and b that exists on S3, and an entry that exists
        nowhere is skipped. Returns the number downloaded."""
        fetched = 0
        with self._pull_lock():
            for entry in rels:
                for rel in entry.split("|"):
                    info = s3.head(self.uri.join(rel))
                    if info is None:
                        continue
                    state, path = self._state(rel), self.root / rel
                    if (
                        state is None
                        or state.get("etag") != str(info.get("ETag", "")).strip('"')
                        or not path.exists()
                    ):
                        self._record(rel, path, s3.download(self.uri.join(rel), path))
                        fetched += 1
                    break
        return fetched

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

    def _pull_lock(self) -> Any:
        return locked(self.root / _MIRROR_MARK / "pull.lock")

    # ------------------------------------------------------------------ push

    def push_files(self, paths: list[Path]) -> None:
        """Upload files of the mirror now, in the given order, each verified before the next."""
        for path in paths:
            self._upload(self.rel(path), path)

    def _upload(self, rel: str, path: Path) -> None:
        if rel in STAGE_COMMIT_FILES["tokenize"]:
            self._check_manifest_shards(path)
        tags = RETENTION_TAG if rel.startswith(INTERMEDIATE_PREFIXES) and not is_commit_file(rel) else None
        info = s3.upload(path, self.uri.join(rel), tags)
        self._record(rel, path, info)

    def _check_manifest_shards(self, manifest_path: Path) -> None:
        """Refuse to publish a manifest until every shard it lists is on S3 with its size and sha256."""
        manifest = json.loads(manifest_path.read_text())
        for split in manifest.get("splits", {}).values():
            for shard in split.get("shards", []):
                uri = self.uri.join(f"tokens/{shard['path']}")
                info = s3.head(uri)
                meta = (info or {}).get("Metadata") or {}
                if (
                    info is None
                    or int(info["ContentLength"]) != shard["bytes"]
                    or meta.get(s3.SHA256_METADATA) != shard["sha256"]
                ):
                    where = self.rel(manifest_path)
                    raise s3.StorageError(f"not publishing {where}: {uri} is missing or differs from it")

    def delete_prefix(self, rel: str) -> None:
        """Delete every object under a folder of the run (and the mirror's state of them)."""
        for obj in s3.list_objects(self.uri.join(rel.strip("/") + "/")):
            self.delete_remote(obj.key[len(self.uri.prefix) :])

    def delete_remote(self, rel: str) -> None:
        s3.delete(self.uri.join(rel))
        self._state_path(rel).unlink(missing_ok=True)

    def sync(self) -> None:
        """Push local changes: deletions, then new/changed data files, then commit files, run.json last."""
        state_root = self.root / _MIRROR_MARK / "state"
        for state_file in sorted(state_root.rglob("*.json")) if state_root.is_dir() else []:
            rel = state_file.relative_to(state_root).as_posix()[: -len(".json")]
            if not (self.root / rel).exists():
                self.delete_remote(rel)
        changed = [p for p in s3.iter_files(self.root) if self._changed(self.rel(p), p)]
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
            if not path.name.startswith(".") and path != marker
        ]
        self.push_files([*companions, marker])


class ShardUpload:
    """A picklable executor task wrapping a stage's shard task for an S3 run: fetches what the shard
    reads, runs the shard, then uploads its output (companion files first, the completion marker last).

    A shard is done (`is_done`) when its marker exists locally or was listed on S3 when the wrapper was
    made; a shard written locally but not yet uploaded (a crash in between) is skipped as well and pushed
    by the stage's final sync.

    Reads: a step that declares them (`plan_files()`, then `reads(i)`: paths relative to the run) gets
    exactly those objects fetched before its shard, on any machine. A step that does not, on a node other
    than the driver's, gets that node's mirror brought up to date with one incremental pull per stage and
    node (`RemoteRun.pull_once`: neither later stages' folders nor this stage's shard outputs). On another
    node whose mirror is elsewhere (another `$GRISTMILL_CACHE_DIR`) the task's `run_root` points at that
    mirror. After the shards the executor calls `finish()` on the driver, which pulls the outputs the
    driver reads (the step's `driver_reads` patterns; by default the shard folders).
    """

    def __init__(self, task: Any, mirror_root: str, uri: str) -> None:
        self.task = task
        self.mirror_root = mirror_root
        self.uri = uri
        self.node = node_id()
        self.pull_key = uuid.uuid4().hex  # this stage's shards: each other node pulls once for all of them
        self.folders = _shard_folders(task, Path(mirror_root))
        self.uploaded = _listed(uri, self.folders[0]) if self.folders else set()

    def output(self, index: int) -> Path:
        return Path(self.task.output(index))

    def is_done(self, index: int) -> bool:
        marker = self.output(index)
        return marker.exists() or marker.relative_to(self.mirror_root).as_posix() in self.uploaded

    def __call__(self, index: int) -> object:
        task, root = self.task, Path(self.mirror_root)
        elsewhere = node_id() != self.node
        if elsewhere:
            task, root = self._on_this_node()
        remote = RemoteRun.of_mirror(root)
        if remote is not None:
            wanted = None
            if callable(getattr(task, "reads", None)):
                remote.fetch(list(task.plan_files()))
                wanted = task.reads(index)
            if wanted is not None:
                remote.fetch(list(wanted))
            elif elsewhere:
                remote.pull_once(self.pull_key, self._reads)
        result = task(index)
        remote = RemoteRun.of_mirror(root)
        if remote is not None:
            remote.push_shard(Path(task.output(index)))
        return result

    def finish(self) -> None:
        """On the driver, after the shards: pull the shard outputs the driver reads (uploaded from other
        nodes, or by an earlier attempt)."""
        remote = RemoteRun.of_mirror(Path(self.mirror_root))
        if remote is None:
            return
        patterns = getattr(self.task, "driver_reads", None)
        if patterns is None:
            remote.pull(self.folders or None)
        else:
            remote.pull_matching(patterns)

    def _on_this_node(self) -> tuple[Any, Path]:
        """On a node other than the driver's: the task pointed at this node's mirror."""
        remote = RemoteRun(self.uri)
        RunLayout(remote.root).create()  # the folders the driver made (S3 keeps no empty folder)
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


def matches(rel: str, pattern: str) -> bool:
    """Whether a run path matches a pattern: `folder/*` is every file directly in the folder (a glob on
    names), `folder/**` everything under it, anything else the path itself."""
    if pattern.endswith("/**"):
        return rel.startswith(pattern[:-2])
    folder, _, name = pattern.rpartition("/")
    rel_folder, _, rel_name = rel.rpartition("/")
    return folder == rel_folder and fnmatch.fnmatchcase(rel_name, name)


def posix_dirname(path: str) -> str:
    return path.rpartition("/")[0]


def _listed(uri: str, folder: str) -> set[str]:
    """The run paths of the objects in one folder of a run on S3."""
    run = s3.S3Uri.parse(uri.rstrip("/"))
    return {o.key[len(run.prefix) :] for o in s3.list_objects(run.join(folder.strip("/") + "/"))}


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
