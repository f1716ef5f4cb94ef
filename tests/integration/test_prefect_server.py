"""`gristmill deploy` and a scheduled-style flow run against a real Prefect server and a real worker.

The test starts `prefect server start` on loopback (temp PREFECT_HOME, SQLite), runs `gristmill deploy`
twice (create, then update in place), triggers a run of the deployment through the API, lets
`prefect worker start --run-once` execute it on two sample files, and reads the flow run's final state,
its logs and its artifacts back through the API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import yaml
from prefect_server import prefect_server

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server on 127.0.0.1 with its own SQLite database; yields its API URL and a client env."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as (api, env):
        yield api, env


def _cli(env: dict[str, str], cwd: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result


def test_deploy_and_run_through_a_worker(server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
    )
    from prefect.client.schemas.sorting import ArtifactSort, LogSort

    api, env = server
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("spam.jsonl.zst", "udhr.jsonl.zst"):
        shutil.copy(SAMPLE / name, inputs / name)
    config = tmp_path / "nightly.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inputs": ["in"],
                "output": "runs",
                "run_id": "fixed",  # ignored by deployments: every scheduled run gets its own id
                "executor": {"workers": 2},
                "tokenizer": {"vocab_size": 512},
                "stages": {"report": {"retries": 2, "timeout_seconds": 600}},
                "deployment": {
                    "name": "nightly",
                    "work_pool": "gristmill-test",
                    "cron": "30 2 * * *",
                    "timezone": "Europe/Berlin",
                },
            }
        )
    )
    first = _cli(env, tmp_path, str(BIN / "gristmill"), "deploy", str(config))
    assert "work pool gristmill-test: created (process)" in first.stdout
    assert "deployment build_corpus/nightly: applied" in first.stdout
    assert "cron '30 2 * * *' in Europe/Berlin" in first.stdout
    # again, with another schedule: the same deployment is updated, the pool left as it is
    second = _cli(
        env, tmp_path, str(BIN / "gristmill"), "deploy", str(config), "--set", "deployment.cron=0 4 * * 1"
    )
    assert "work pool gristmill-test: exists (process), left as it is" in second.stdout

    with SyncPrefectClient(api) as client:
        pool = client.read_work_pool("gristmill-test")
        assert pool.type == "process"
        deployment = client.read_deployment_by_name("build_corpus/nightly")
        assert str(deployment.id) in first.stdout and str(deployment.id) in second.stdout
        assert deployment.entrypoint == "flows.build_corpus.build_corpus"
        assert deployment.work_pool_name == "gristmill-test"
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
            ("0 4 * * 1", "Europe/Berlin")
        ]
        parameters = deployment.parameters["config"]
        assert parameters["run_id"] is None
        assert parameters["inputs"] == [str(inputs)] and parameters["output"] == str(tmp_path / "runs")
        assert deployment.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "gristmill"

        flow_run = client.create_flow_run_from_deployment(deployment.id)

    # a Kubernetes pool gets the template of infra/prefect/work-pool.json, and keeps it in step with the file
    k8s = ["--set", "deployment.work_pool=gristmill-k8s", "--set", "deployment.work_pool_type=kubernetes"]
    k8s += ["--set", "deployment.name=on-k8s", "--set", "deployment.cron=null"]
    created = _cli(env, tmp_path, str(BIN / "gristmill"), "deploy", str(config), *k8s)
    assert "work pool gristmill-k8s: created (kubernetes)" in created.stdout
    assert "schedule: none" in created.stdout
    with SyncPrefectClient(api) as client:
        pool = client.read_work_pool("gristmill-k8s")
        template = json.loads((REPO / "infra" / "prefect" / "work-pool.json").read_text())
        assert pool.type == "kubernetes" and pool.base_job_template == template
        assert client.read_deployment_by_name("build_corpus/on-k8s").schedules == []

    worker = _cli(
        env,
        tmp_path / "in",  # the worker's working directory does not matter: the paths are absolute
        str(BIN / "prefect"),
        "worker",
        "start",
        "--pool",
        "gristmill-test",
        "--run-once",
        timeout=240,
    )
    with SyncPrefectClient(api) as client:
        done = client.read_flow_run(flow_run.id)
        assert done.state is not None and done.state.is_completed(), (done.state, worker.stdout[-3000:])
        expected = flow_run.expected_start_time.astimezone(UTC)
        run_id = f"nightly-{expected:%Y%m%d-%H%M%S}"
        assert done.name == f"build-corpus-{run_id}"
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
            sort=LogSort.TIMESTAMP_ASC,
            limit=200,  # explicit limit and offset: with this FastAPI pin, None is a 422
            offset=0,
        )
        gristmill_lines = [entry.message for entry in logs if entry.name == "gristmill"]
        # per-shard lines come from the forked worker processes, forwarded by the parent
        assert any(line.startswith("signals 00001.parquet: ") for line in gristmill_lines), gristmill_lines
        assert any(line.startswith("signals: ") and "kept" in line for line in gristmill_lines), [
            (entry.name, entry.message) for entry in logs
        ]
        assert any("Finished in state Completed" in entry.message for entry in logs)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
            offset=0,
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    prefix = f"gristmill-{run_id}"
    for suffix in ("ingest", "signals", "dedup", "tokenizer", "tokenize", "report", "funnel", "outputs"):
        assert f"{prefix}-{suffix}" in by_key, sorted(by_key)
    run_dir = tmp_path / "runs" / run_id
    assert str(run_dir / "tokens" / "_manifest.json") in by_key[f"{prefix}-outputs"].data
    # link artifacts: Prefect stores them as Markdown links
    assert (run_dir / "report" / "report.html").as_uri() in by_key[f"{prefix}-report-html"].data
    assert "documents" in by_key[f"{prefix}-signals"].data and by_key[f"{prefix}-funnel"].type == "table"
    assert by_key[f"{prefix}-report"].type == "markdown" and "## Funnel" in by_key[f"{prefix}-report"].data
    # a progress artifact per stage with shards, at 100% once the stage is done
    for stage in ("ingest", "signals", "dedup", "tokenize", "report"):
        assert by_key[f"{prefix}-{stage}-progress"].type == "progress"
        assert by_key[f"{prefix}-{stage}-progress"].data == 100
    assert (run_dir / "tokens" / "_manifest.json").exists()
