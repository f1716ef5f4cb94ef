"""Shared fixtures: ``s3_server``, a loopback S3 endpoint (moto's server) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3_server import moto_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a real S3 server on 127.0.0.1 (point clients at it with s3_server.aws_env)."""
    with moto_server() as url:
        yield url
