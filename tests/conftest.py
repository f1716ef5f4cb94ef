"""Shared fixtures: ``s3_server``, a loopback S3 endpoint (moto's server) for the whole session.

Helpers the tests share (servers, proxies, references, corpus builders) live in tests/support/, which is
put on sys.path here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))

from s3_server import moto_server  # noqa: E402


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a real S3 server on 127.0.0.1 (point clients at it with s3_server.aws_env)."""
    with moto_server() as url:
        yield url
