"""Input files: what a list of local paths or `s3://` URIs expands to, named the same way for both.

A file given directly is named by its basename. A folder (or an S3 prefix) is walked recursively: keys
sorted; hidden parts, `*.md` and `LICENSE*` skipped; each file named `<folder name>/<relative path>`.
That name is the `source` of its documents' ids, so a local copy and an S3 copy of the same files give
the same ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.io import s3
from pipelines.run.files import write_atomic


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(".md") or name.upper().startswith("LICENSE")


def list_inputs(uris: list[str]) -> list[tuple[str, str]]:
    """Expand local paths and `s3://` URIs into `(path, source)` pairs (a local file as an absolute
    path, an object as its URI), each folder's files sorted by name.

    Raises ValueError on a missing path or prefix, an unlistable folder, or two inputs with one source.
    """
    pairs: list[tuple[str, str]] = []
    for uri in uris:
        pairs += _list_s3(uri) if s3.is_s3(uri) else _list_local(uri)
    seen: dict[str, str] = {}
    for path, source in pairs:
        if source in seen:
            raise ValueError(f"inputs {seen[source]!r} and {path!r} have the same source name {source!r}")
        seen[source] = path
    return pairs


def _list_local(uri: str) -> list[tuple[str, str]]:
    if os.path.isdir(uri):
        root = os.path.basename(os.path.abspath(uri))
        return [(str(Path(uri, rel).resolve()), f"{root}/{rel}") for rel in _walk(uri)]
    if os.path.lexists(uri):
        return [(str(Path(uri).resolve()), os.path.basename(uri))]
    raise ValueError(f"input path does not exist: {uri!r}")


def _walk(top: str) -> list[str]:
    """Sorted POSIX paths, relative to top, of the files under it that are inputs."""

    def fail(error: OSError) -> None:
        raise ValueError(f"cannot list input directory {error.filename!r}: {error.strerror}") from error

    found = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=fail):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found += [Path(dirpath, name).relative_to(top).as_posix() for name in filenames if not _skipped(name)]
    return sorted(found)


def _list_s3(uri: str) -> list[tuple[str, str]]:
    """An existing object is one file named by its basename; otherwise (or with a trailing `/`) the URI
    is a folder, listed with the local folder rules."""
    location = s3.S3Uri.parse(uri)
    if location.key and not location.key.endswith("/") and s3.exists(location):
        return [(str(location), location.key.rsplit("/", 1)[-1])]
    root = location.key.rstrip("/").rsplit("/", 1)[-1] or location.bucket
    found = []
    for obj in s3.list_objects(location):
        rel = obj.key[len(location.prefix) :]
        parts = rel.split("/")
        if parts[-1] and not any(p.startswith(".") for p in parts) and not _skipped(parts[-1]):
            found.append((str(location.join(rel)), f"{root}/{rel}"))
    if not found:
        raise ValueError(f"input path does not exist: {uri!r} (no object or objects under it)")
    return sorted(found, key=lambda pair: pair[1])


def local_input(path: str) -> str:
    """A local path to read an input from: the path itself, or an S3 object's copy in the cache
    (downloaded unless the copy matches the object's size and sha256)."""
    if not s3.is_s3(path):
        return path
    location = s3.S3Uri.parse(path)
    local = s3.cache_path(location)
    state = local.with_name(f".{local.name}.sha256")
    info = s3.head(location)
    if info is None:
        raise FileNotFoundError(f"input object {path} does not exist")
    want = (info.get("Metadata") or {}).get(s3.SHA256_METADATA) or str(info.get("ETag", "")).strip('"')
    size_matches = local.exists() and local.stat().st_size == int(info["ContentLength"])
    if size_matches and state.exists() and state.read_text().strip() == want:
        return str(local)
    s3.download(location, local)
    write_atomic(state, want)
    return str(local)
