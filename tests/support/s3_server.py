"""A real loopback S3 server for tests: moto's standalone server on 127.0.0.1.

``tests/conftest.py`` exposes it as the session fixture ``s3_server`` (the endpoint URL). Clients
reach it through the standard AWS environment (:func:`aws_env`), exactly as production code reaches
AWS or MinIO.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run ``moto.server`` on a free port; yields its endpoint URL and stops it on exit."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server on port {port} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment variables pointing boto3 at the loopback server with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def create_bucket(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def upload_dir(endpoint: str, local: Path, bucket: str, prefix: str) -> None:
    """Upload every file under ``local`` to ``s3://bucket/prefix/<relative path>``."""
    s3 = client(endpoint)
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}"
        s3.upload_file(str(path), bucket, key)
