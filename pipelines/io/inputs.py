"""Input files: what a list of local paths or `s3://` URIs expands to, named the same way for both.

A folder (or an S3 prefix) is walked recursively: keys sorted; hidden parts, `*.md` and `LICENSE*`
skipped; each file is named `<folder name>/<relative path>`. A file given directly is named like it is
when its folder is given: `<parent folder name>/<file name>`. So `web/pages-00.jsonl.gz` whether the
input was `web/`, `./web/pages-00.jsonl.gz` or `s3://bucket/crawl/web/`, and a local copy and an S3 copy
of the same files get the same names (a bucket's root is named by the bucket). That name is the
`source` of its documents' ids. A file name's bytes that are
not UTF-8 appear percent-encoded in its source (`caf%E9.jsonl`; a name that already reads so is then the
same source, refused as a repeated one); its path keeps the real bytes.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from pipelines.errors import UserError
from pipelines.io import s3
from pipelines.run.files import locked, write_atomic


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(".md") or name.upper().startswith("LICENSE")


def list_inputs(uris: list[str]) -> list[tuple[str, str]]:
    """Expand local paths and `s3://` URIs into `(path, source)` pairs (a local file as an absolute
    path, an object as its URI), each folder's files sorted by name.

    Raises UserError on a missing path or prefix, an unlistable folder, or two inputs with one source.
    """
    return [(path, source) for path, source, _ in expand_inputs(uris)]


def expand_inputs(uris: list[str]) -> list[tuple[str, str, int]]:
    """`(path, source, i)` for every file of the inputs: `i` is the index in `uris` of the input it
    came from (see `list_inputs`)."""
    found: list[tuple[str, str, int]] = []
    for i, uri in enumerate(uris):
        pairs = _list_s3(uri) if s3.is_s3(uri) else _list_local(uri)
        found += [(path, _utf8_name(source), i) for path, source in pairs]
    seen: dict[str, str] = {}
    for path, source, _ in found:
        if source in seen:
            raise UserError(f"inputs {seen[source]!r} and {path!r} have the same source name {source!r}")
        seen[source] = path
    return found


def _named(folder: str, rel: str) -> str:
    """`<folder>/<rel>`, or `rel` alone for a folder without a name (the file system's root)."""
    return posixpath.join(folder, rel) if folder else rel


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # how os.fsdecode holds a byte that is not UTF-8


def _utf8_name(name: str) -> str:
    """A file name as UTF-8 text: each byte that is not UTF-8 percent-encoded."""
    return _UNDECODABLE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", name)


def _list_local(uri: str) -> list[tuple[str, str]]:
    if os.path.isdir(uri):
        root = os.path.basename(os.path.abspath(uri))
        return [(str(Path(uri, rel).resolve()), _named(root, rel)) for rel in _walk(uri)]
    if os.path.lexists(uri):
        path = os.path.abspath(uri)
        return [
            (
                str(Path(uri).resolve()),
                _named(os.path.basename(os.path.dirname(path)), os.path.basename(path)),
            )
        ]
    raise UserError(f"input path does not exist: {uri!r}")


def _walk(top: str) -> list[str]:
    """Sorted POSIX paths, relative to top, of the files under it that are inputs."""

    def fail(error: OSError) -> None:
        raise UserError(f"cannot list input directory {error.filename!r}: {error.strerror}") from error

    found = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=fail):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found += [Path(dirpath, name).relative_to(top).as_posix() for name in filenames if not _skipped(name)]
    return sorted(found)


def _list_s3(uri: str) -> list[tuple[str, str]]:
    """An existing object is one file; otherwise (or with a trailing `/`) the URI is a folder, listed with
    the local folder rules."""
    location = s3.S3Uri.parse(uri)
    if location.key and not location.key.endswith("/") and s3.exists(location):
        parent, _, name = location.key.rpartition("/")
        return [(str(location), _named(parent.rsplit("/", 1)[-1] or location.bucket, name))]
    root = location.key.rstrip("/").rsplit("/", 1)[-1] or location.bucket
    found = []
    for obj in s3.list_objects(location):
        rel = obj.key[len(location.prefix) :]
        parts = rel.split("/")
        if parts[-1] and not any(p.startswith(".") for p in parts) and not _skipped(parts[-1]):
            found.append((str(location.join(rel)), _named(root, rel)))
    if not found:
        raise UserError(f"input path does not exist: {uri!r} (no object or objects under it)")
    return sorted(found, key=lambda pair: pair[1])


def local_input(path: str) -> str:
    """A local path to read an input from: the path itself, or an S3 object's copy in the cache
    (downloaded unless the copy matches the object's size and sha256)."""
    if not s3.is_s3(path):
        return path
    location = s3.S3Uri.parse(path)
    local = s3.cache_path(location)
    state = local.with_name(f".{local.name}.sha256")
    with locked(local.with_name(f".{local.name}.lock")):  # the splits of one object download it once
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
