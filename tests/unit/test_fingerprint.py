"""Input fingerprints (pipelines.io.fingerprint): what a resumed run compares to tell that an input
changed, locally and on S3."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import aws_env, client, create_bucket

from pipelines.io import s3
from pipelines.io.fingerprint import SAMPLE_BYTES, changes, fingerprint, fingerprints

BUCKET = "fingerprints"


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_local_changes_are_seen(tmp_path: Path) -> None:
    small, big, gone = tmp_path / "small.jsonl", tmp_path / "big.jsonl", tmp_path / "gone.jsonl"
    small.write_bytes(b'{"text": "one"}\n')
    big.write_bytes(b"a" * (3 * SAMPLE_BYTES))
    gone.write_bytes(b"x")
    files = [(str(p), p.name) for p in (small, big, gone)]
    recorded = fingerprints(files)
    assert changes(recorded, fingerprints(files)) == []

    _rewrite_keeping_mtime(small, b'{"text": "two"}\n')  # same size, same mtime: the content says it
    assert changes(recorded, fingerprints(files)) == ["small.jsonl changed (content differs)"]

    _rewrite_keeping_mtime(small, b'{"text": "one"}\n')
    data = bytearray(big.read_bytes())
    data[len(data) // 2] = ord("b")  # outside the sampled MiBs: the mtime says it
    big.write_bytes(bytes(data))
    gone.unlink()
    (tmp_path / "new.jsonl").write_bytes(b"y")
    now = fingerprints([*files, (str(tmp_path / "new.jsonl"), "new.jsonl")])
    assert changes(recorded, now) == [
        "big.jsonl changed (modification time differs)",
        "gone.jsonl is gone",
        "new.jsonl is new",
    ]
    small.write_bytes(b"longer than before\n")
    assert changes(recorded, fingerprints(files[:1])) == [
        "small.jsonl changed (size 16 -> 19 bytes)", "big.jsonl is gone", "gone.jsonl is gone"
    ]  # fmt: skip


def test_fifo_is_fingerprinted_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert fingerprint(str(fifo)) == {"kind": "p"}


@pytest.fixture
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    create_bucket(s3_server, BUCKET)
    for key, value in aws_env(s3_server).items():
        monkeypatch.setenv(key, value)
    s3.reset_client()
    yield s3_server
    s3.reset_client()


def test_s3_objects_by_size_and_etag(bucket: str) -> None:
    storage = client(bucket)
    storage.put_object(Bucket=BUCKET, Key="in/a.jsonl", Body=b'{"text": "one"}\n')
    uri = f"s3://{BUCKET}/in/a.jsonl"
    recorded = fingerprints([(uri, "in/a.jsonl")])
    assert recorded["in/a.jsonl"]["size"] == 16
    storage.put_object(Bucket=BUCKET, Key="in/a.jsonl", Body=b'{"text": "one"}\n')  # same bytes again
    assert changes(recorded, fingerprints([(uri, "in/a.jsonl")])) == []
    storage.put_object(Bucket=BUCKET, Key="in/a.jsonl", Body=b'{"text": "two"}\n')
    assert changes(recorded, fingerprints([(uri, "in/a.jsonl")])) == ["in/a.jsonl changed (ETag differs)"]
    storage.delete_object(Bucket=BUCKET, Key="in/a.jsonl")
    assert changes(recorded, fingerprints([(uri, "in/a.jsonl")])) == ["in/a.jsonl is gone"]
