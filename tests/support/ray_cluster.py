"""A real one-node Ray cluster for tests: `ray start --head --block` in its own process group."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prefect_server import free_port


@contextlib.contextmanager
def ray_head(env: dict[str, str] | None = None, cpus: int = 2) -> Iterator[str]:
    """Start a head node on loopback (workers get `env` on top of this environment); yields its address."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = Path(temp) / "head.log"
    command = f"start --head --block --node-ip-address 127.0.0.1 --port {port} --temp-dir {temp} "
    command += f"--num-cpus {cpus} --object-store-memory {100 * 2**20} --include-dashboard=false "
    command += "--disable-usage-stats"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), *command.split()],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
        )
    try:
        deadline = time.monotonic() + 90
        while "will now block" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "Ray head did not start:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # gcs_server and raylet can outlive the CLI on SIGTERM
        proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
