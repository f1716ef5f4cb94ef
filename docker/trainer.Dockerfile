# syntax=docker/dockerfile:1
# gristmill trainer (CUDA): the torchrun stage and its dependencies only (torch, numpy, pyarrow,
# tokenizers, boto3). It copies the `training` package alone: no Prefect, no datatrove, no pipeline.
#
# Build from the repository root (the build context; see /.dockerignore):
#   docker build -f docker/trainer.Dockerfile -t gristmill-trainer:0.1.0 .
# Run (one node, every GPU):
#   docker run --gpus all gristmill-trainer:0.1.0 --standalone --nproc_per_node=gpu \
#     -m training.train --data s3://BUCKET/runs/RUN/tokens/_manifest.json --output s3://BUCKET/checkpoints/NAME ...
#
# torch 2.13.0 from PyPI is the CUDA 13.0 build: its nvidia-* wheels carry cuBLAS, cuDNN and NCCL, so the
# base is the small `base` flavour of the CUDA 13.0 image (CUDA runtime and the driver-compat settings the
# NVIDIA container toolkit reads) rather than `runtime`/`cudnn-runtime`, which would ship those libraries
# twice. Needs an NVIDIA driver >= 580 on the node. Ubuntu 24.04's Python is 3.12.

FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS builder

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Versions come from the pinned base image's Ubuntu archive; exact Ubuntu revisions are dropped from the
# archive on every security update, so pinning them would make the image unbuildable within weeks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY docker/requirements/trainer.txt /tmp/trainer.txt
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/trainer.txt \
    && /opt/venv/bin/pip check

FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive
# python3: the interpreter the venv links to. gcc and python3-dev: Triton compiles a small C launcher
# (against Python.h) the first time `--compile` runs a kernel; without them only `--compile` fails.
# Not pinned, for the reason given in the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gristmill \
    && useradd --system --uid 10001 --gid gristmill --create-home --home-dir /home/gristmill \
        --shell /usr/sbin/nologin gristmill

COPY --from=builder /opt/venv /opt/venv
COPY training /app/training

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # Checkpoints bound for s3:// are staged under $TMPDIR first (training/checkpoint.py): give it room.
    TMPDIR=/tmp

WORKDIR /app
USER 10001:10001

# A batch job: it is healthy while torchrun runs and done when it exits; the orchestrator (Kubernetes
# Job, compose one-shot service) watches the exit code, so there is nothing for a probe to ask.
HEALTHCHECK NONE

ENTRYPOINT ["torchrun"]
CMD ["--help"]
