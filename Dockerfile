# syntax=docker/dockerfile:1.7
#
# The cutmix-study pipeline image: Ray head/worker/submitter pods of the KubeRay RayJob and, with
# `--target mlflow-server`, the MLflow tracking server of k8s/base.
#
#   docker build -t REGISTRY/cutmix-study:0.1.0 .
#   docker build --target mlflow-server -t REGISTRY/cutmix-study-mlflow:0.1.0 .
#
# CUDA: the torch/torchvision wheels pinned in constraints.txt are CUDA builds that carry their own CUDA runtime,
# cuDNN and NCCL (the nvidia-* wheels), so the base needs no CUDA toolkit; the GPU driver comes from the node
# (NVIDIA container toolkit / device plugin). The base is Debian's Python 3.11 image, so `python`, `pip`, `ray` and
# `cutmix-study` live in /usr/local/bin, which stays on PATH even where KubeRay starts `ray start` through a login
# shell (ENABLE_LOGIN_SHELL).
#
# No secrets are baked in: credentials reach the pods as Secret-backed environment variables at run time. A
# private package index should be given with a BuildKit secret (`RUN --mount=type=secret,...`), never an ARG.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/ray \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAY_USAGE_STATS_ENABLED=0

# uid/gid 1000 like the rayproject images, so PVCs prepared for KubeRay samples (uid=1000) stay writable.
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray

COPY constraints.txt /opt/cutmix/constraints.txt

# ---------------------------------------------------------------------------------------------------------------
# A small image for the MLflow server: the same mlflow as the clients (constraints.txt), plus basic auth
# (Flask-WTF), the PostgreSQL driver (postgresql+psycopg2://) and boto3 for the s3:// artifact destination.
FROM base AS mlflow-server

RUN pip install -c /opt/cutmix/constraints.txt "mlflow[auth]" psycopg2-binary boto3 \
    && pip check

USER 1000:1000
WORKDIR /home/ray
EXPOSE 5000
CMD ["mlflow", "server", "--help"]

# ---------------------------------------------------------------------------------------------------------------
# The pipeline image (the default target).
FROM base AS pipeline

# Must equal the pins in constraints.txt (tests/k8s checks it); pip fails on a mismatch anyway, since the same
# constraints file is passed.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# No NVIDIA_VISIBLE_DEVICES=all here: the device plugin (or `docker run --gpus`) sets it to the GPUs a container
# was given; a default of "all" would expose every GPU of a node to pods that asked for none.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TORCH_HOME=/home/ray/.cache/torch

# The largest layer first, so source edits do not re-download torch.
RUN pip install -c /opt/cutmix/constraints.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The project's runtime dependencies (ray[default,tune] 2.60 included: KubeRay needs the dashboard/job server of
# ray[default]) before the source, for layer caching; then the project itself.
COPY pyproject.toml README.md /opt/cutmix/src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/opt/cutmix/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /opt/cutmix/requirements.txt \
    && pip install -c /opt/cutmix/constraints.txt -r /opt/cutmix/requirements.txt

COPY study /opt/cutmix/src/study
COPY pipelines /opt/cutmix/src/pipelines
RUN cd /opt/cutmix/src \
    && pip install -c /opt/cutmix/constraints.txt . \
    && pip check \
    && python -c "import torch, torchvision, ray, study.config, pipelines.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__)" \
    && rm -rf /opt/cutmix/src

USER 1000:1000
WORKDIR /home/ray
CMD ["cutmix-study", "--help"]
