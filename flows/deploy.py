"""`gristmill deploy`: the work pool and the scheduled deployment of `build_corpus`, from a run config.

Against the Prefect API in PREFECT_API_URL (a self-hosted server or Prefect Cloud):

1. the work pool `deployment.work_pool`: created if missing, as `deployment.work_pool_type` (`process`:
   Prefect's default process template; `kubernetes`: the template in infra/prefect/work-pool.json). An
   existing pool of the same type keeps its settings, except that a Kubernetes pool's template is
   re-read from infra/prefect/work-pool.json (so the file stays the source of truth); a pool of another
   type is an error.
2. the deployment `build_corpus/<deployment.name>`: created, or updated in place, with the whole run
   config as its `config` parameter (its `run_id` removed, see below), the cron schedule
   `deployment.cron` in `deployment.timezone` (none: runs only when triggered), the pool and queue, and
   `PREFECT_LOGGING_EXTRA_LOGGERS=gristmill` in the flow run's environment so stage logs reach the API.

The entrypoint is the module path `flows.build_corpus.build_corpus`: a worker runs it from the installed
gristmill package (the worker image, or a venv with gristmill), so no code storage or pull step is
involved. Paths in the config are the ones the worker sees.

Run ids: a fixed `run_id` would make every scheduled run resume the same run directory, so the deployment
carries none, and each flow run takes `<deployment name>-<scheduled time, UTC>` (flows/build_corpus.py).
Pass `run_id` when triggering a run by hand to resume a particular run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.config import PATH_FIELDS, Config, DeploymentConfig

ENTRYPOINT = "flows.build_corpus.build_corpus"
WORK_POOL_TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "prefect" / "work-pool.json"
FLOW_RUN_ENV = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "gristmill",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def base_job_template(kind: str) -> dict[str, Any]:
    """The base job template a new pool of this type gets."""
    if kind == "kubernetes":
        if not WORK_POOL_TEMPLATE.exists():
            raise SystemExit(
                f"error: {WORK_POOL_TEMPLATE} not found: run `gristmill deploy` from a gristmill checkout "
                "to create a Kubernetes pool, or create it with `prefect work-pool create` first"
            )
        return json.loads(WORK_POOL_TEMPLATE.read_text())
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_work_pool(settings: DeploymentConfig) -> str:
    """Create the pool if missing (or refresh a Kubernetes pool's template); say what was done."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    name, kind = settings.work_pool, settings.work_pool_type
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=kind, base_job_template=base_job_template(kind))
            )
            return f"work pool {name}: created ({kind})"
        if pool.type != kind:
            raise SystemExit(
                f"error: work pool {name} exists with type {pool.type}, the config says {kind}: "
                "set deployment.work_pool_type or deployment.work_pool"
            )
        if kind == "kubernetes":
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=base_job_template(kind)))
            return f"work pool {name}: exists ({kind}), base job template updated from {WORK_POOL_TEMPLATE}"
        return f"work pool {name}: exists ({kind}), left as it is"


def deployment_parameters(cfg: Config) -> dict[str, Any]:
    """The flow parameters of every run of the deployment: the config, without a fixed run id.

    Local paths become absolute (a worker's working directory is not the one `gristmill deploy` ran in).
    """
    config = cfg.model_dump(mode="json")
    config["run_id"] = None
    for keys in PATH_FIELDS:
        holder = config
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(keys[-1]) is not None:
            value = holder[keys[-1]]
            holder[keys[-1]] = [_absolute(v) for v in value] if isinstance(value, list) else _absolute(value)
    return {"config": config}


def _absolute(value: str) -> str:
    return value if "://" in value else str(Path(value).absolute())


def deploy(cfg: Config, config_path: str | None = None) -> list[str]:
    """Create/update the work pool and the deployment; return lines that say what was done."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    from flows.build_corpus import build_corpus

    api = PREFECT_API_URL.value()
    if not api:
        raise SystemExit("error: PREFECT_API_URL is not set: point it at a Prefect server or Prefect Cloud")
    settings = cfg.deployment
    lines = [f"Prefect API: {api}"]
    if cfg.run_id:
        lines.append(
            f"note: run_id {cfg.run_id!r} of the config is not used: each scheduled run gets "
            f"<deployment>-<scheduled time> as its run id"
        )
    if not cfg.inputs:
        raise SystemExit("error: no inputs: a deployment needs `inputs:` in the config (or --input)")
    lines.append(ensure_work_pool(settings))
    schedules = [Cron(settings.cron, timezone=settings.timezone)] if settings.cron else []
    deployment = build_corpus.to_deployment(
        name=settings.name,
        schedules=schedules,
        paused=settings.paused,
        parameters=deployment_parameters(cfg),
        description=f"gristmill corpus build from {config_path or 'the command line'}",
        tags=settings.tags,
        work_pool_name=settings.work_pool,
        work_queue_name=settings.work_queue,
        job_variables={"env": dict(FLOW_RUN_ENV)},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id = deployment.apply()
    full_name = f"build_corpus/{settings.name}"
    lines.append(f"deployment {full_name}: applied (id {deployment_id}, entrypoint {ENTRYPOINT})")
    if settings.cron:
        state = "paused" if settings.paused else "active"
        lines.append(f"schedule: cron {settings.cron!r} in {settings.timezone} ({state})")
    else:
        lines.append("schedule: none (runs only when triggered)")
    config = deployment_parameters(cfg)["config"]
    lines.append(f"inputs: {', '.join(config['inputs'])}; run directories under {config['output']}/")
    lines.append(f"start a worker: prefect worker start --pool {settings.work_pool}")
    lines.append(f"trigger a run:  prefect deployment run {full_name!r}")
    return lines
