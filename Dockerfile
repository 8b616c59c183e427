# syntax=docker/dockerfile:1.7
# Three images from one repository:
#
#   docker build --target operator    -t ghcr.io/refinery-dev/refinery-operator:0.1.0 .
#   docker build --target trainer     -t ghcr.io/refinery-dev/refinery-trainer:0.1.0 .
#   docker build --target trainer-cpu -t ghcr.io/refinery-dev/refinery-trainer:0.1.0-cpu .
#
# `trainer` is for GPU nodes (CUDA torch + DeepSpeed); `trainer-cpu` runs the same stages on nodes
# without a GPU (kind, minikube, CI) with PyTorch's CPU wheel, in a fraction of the size.
# Base images are pinned by version tag; a release build should pin them by digest too
# (`docker buildx imagetools inspect <tag>` prints it). Where no public registry can be reached,
# scripts/build_images.py builds `operator` and `trainer-cpu` on a Debian base made with
# debootstrap (PYTHON_IMAGE) and a local torch wheel (TORCH_PIP_ARGS); tests/cluster runs them.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# torch 2.13.0 from PyPI is built against CUDA 13.0; DeepSpeed compiles its ops at first use
# (JIT) with the nvcc of this image, whose CUDA major version must match torch's.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04

# ------------------------------------------------------------------------------------------------
# operator: kopf + the Kubernetes client, never torch
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin refinery
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY operator/ operator/
# The distribution also holds the trainer package; the operator image ships none of its code.
# A virtual environment: a Debian base's own Python refuses system-wide installs (PEP 668).
RUN mkdir trainer \
 && python3 -m venv /opt/venv \
 && pip install '.[operator]' \
 && cd / && rm -rf /src \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the operator image'"
WORKDIR /
USER 10001:10001
# 8080: kopf's liveness endpoint (/healthz); 8000: Prometheus /metrics (REFINERY_METRICS_PORT).
EXPOSE 8080 8000
ENV REFINERY_METRICS_PORT=8000
# `refinery operator` runs kopf standalone (one replica, no peering objects; handlers.run_operator)
# and hands the namespaces to the handlers too. The chart replaces CMD with `--namespace=<ns>` to
# watch a single namespace (a plain `kopf run --namespace` would leave the handlers listing
# cluster-wide, which a Role in one namespace forbids).
ENTRYPOINT ["refinery", "operator", "--liveness=http://0.0.0.0:8080/healthz"]
CMD ["--all-namespaces"]

# ------------------------------------------------------------------------------------------------
# trainer: CUDA torch + the trainer, eval (lm-eval) and export (boto3) and tracking (tensorboard) extras + DeepSpeed; `refinery-train` is what stage Jobs run
FROM ${CUDA_IMAGE} AS trainer
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# python3.12-dev: DeepSpeed's JIT ops compile against Python.h; ninja/g++ drive that build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev g++ ninja-build libaio-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv \
 && pip install --upgrade pip setuptools wheel
# torch first, in its own layer (GBs that rarely change), then pinned by a constraint so that no
# later install can swap it for another build.
RUN pip install "torch==${TORCH_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /opt/constraints.txt
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages stand in for the source), so that
# a change of the source rebuilds only the small layer after it, not GBs of dependencies.
COPY pyproject.toml ./
RUN mkdir -p sdk/refinery operator/refinery_operator trainer/refinery_trainer \
 && touch README.md sdk/refinery/__init__.py operator/refinery_operator/__init__.py trainer/refinery_trainer/__init__.py \
 && pip install -c /opt/constraints.txt '.[trainer,eval,export,tracking]' \
 && pip uninstall -y refinery \
 && rm -rf /src/*
# --no-build-isolation: DeepSpeed's setup imports torch; an isolated build would fetch another one.
RUN pip install -c /opt/constraints.txt --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY operator/ operator/
COPY trainer/ trainer/
RUN pip install --no-deps -c /opt/constraints.txt . \
 && cd / && rm -rf /src \
 && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}') and torch.version.cuda, torch.__version__"
# The stage pod runs as uid 1000 (builders.RUN_AS_USER) with a read-only view of everything but
# /workspace (the volume) and /tmp (an emptyDir): every cache goes under /tmp.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/refinery --shell /usr/sbin/nologin refinery
ENV HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    REFINERY_METRICS_PORT=9400
WORKDIR /workspace
USER 1000:1000
# Prometheus metrics of the stage (trainer/refinery_trainer/metrics.py).
EXPOSE 9400
ENTRYPOINT ["refinery-train"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# trainer-cpu: the same trainer on PyTorch's CPU wheel, for nodes without a GPU (kind, minikube,
# CI). Same entrypoint, user, caches and extras as `trainer`, less DeepSpeed (its ops need CUDA):
# stages with `gpus: 0` and no `deepspeed` run here. TORCH_PIP_ARGS says where the CPU wheel comes
# from: PyTorch's CPU index by default, or a folder of wheels (`--find-links=/wheels`, mounted).
FROM ${PYTHON_IMAGE} AS trainer-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=--index-url=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
 && pip install --upgrade pip setuptools wheel
RUN pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}+cpu" \
 && echo "torch==${TORCH_VERSION}" > /opt/constraints.txt
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages stand in for the source), so that
# a change of the source rebuilds only the small layer after it, not GBs of dependencies.
COPY pyproject.toml ./
RUN mkdir -p sdk/refinery operator/refinery_operator trainer/refinery_trainer \
 && touch README.md sdk/refinery/__init__.py operator/refinery_operator/__init__.py trainer/refinery_trainer/__init__.py \
 && pip install -c /opt/constraints.txt '.[trainer,eval,export,tracking]' \
 && pip uninstall -y refinery \
 && rm -rf /src/*
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY operator/ operator/
COPY trainer/ trainer/
RUN pip install --no-deps -c /opt/constraints.txt . \
 && cd / && rm -rf /src \
 && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}') and torch.version.cuda is None, torch.__version__"
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/refinery --shell /usr/sbin/nologin refinery
ENV HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    MPLCONFIGDIR=/tmp/matplotlib \
    REFINERY_METRICS_PORT=9400
WORKDIR /workspace
USER 1000:1000
EXPOSE 9400
ENTRYPOINT ["refinery-train"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# trainer-vllm: the trainer plus the GPU-only speed-ups, for stages with `rl.generation: vllm` or
# `training.ligerKernel` (extras `vllm` and `kernels` of pyproject.toml, same versions):
#   docker build --target trainer-vllm -t ghcr.io/refinery-dev/refinery-trainer:0.1.0-vllm .
# vLLM 0.30.0 pins torch==2.13.0, the trainer's own torch, so it is installed on top of that image
# under the same constraint (no second torch); a vLLM whose pin differs would need its own target.
FROM trainer AS trainer-vllm
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.30.0
ARG LIGER_KERNEL_VERSION=0.8.5
USER root
RUN pip install -c /opt/constraints.txt "vllm==${VLLM_VERSION}" "liger-kernel==${LIGER_KERNEL_VERSION}" \
 && python -c "import torch, vllm, liger_kernel; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"
USER 1000:1000
