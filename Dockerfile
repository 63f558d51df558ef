# syntax=docker/dockerfile:1
# journey: one image for the worker, the sidecar and the CLI.
#   docker build -t journey:0.1.0 .
#   docker run --rm -e JOURNEY_BOOTSTRAP_SERVERS=kafka:9092 journey:0.1.0 worker
# Two stages. The builder turns requirements/runtime.lock (every download checked against its
# hash) and journey itself into wheels; the image installs those wheels and nothing else: no
# index, no compiler, no source tree.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler, for a package with no wheel for the build's platform (faust-streaming on arm64);
# it stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/build.lock requirements/runtime.lock requirements/
RUN pip install --require-hashes -r requirements/build.lock \
    && pip wheel --require-hashes --wheel-dir /wheels -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JOURNEY_SCHEMAS_DIR=/app/schemas \
    JOURNEY_DATA_DIR=/var/lib/journey \
    JOURNEY_WEB_BIND=0.0.0.0 \
    JOURNEY_SIDECAR_HOST=0.0.0.0
# The wheels are mounted from the builder, not copied: they leave no layer behind. setuptools and
# wheel go too: nothing is built here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
    && pip check \
    && pip uninstall --yes setuptools wheel \
    && groupadd --system --gid 10001 journey \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/journey --shell /usr/sbin/nologin journey \
    && mkdir -p /var/lib/journey \
    && chown 10001:10001 /var/lib/journey
WORKDIR /app
COPY schemas ./schemas

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 6066: worker (metrics, /healthz, /readyz, customer lookups routed between workers); 8000: sidecar.
EXPOSE 6066 8000
ENTRYPOINT ["journey"]
CMD ["worker"]
