# syntax=docker/dockerfile:1.7
#
# One image for everything dagctl runs in a cluster:
#   - the Dagster code location (`dagster api grpc`, the default command) and the run workers the
#     K8sRunLauncher starts from it;
#   - the step runners: SQLMesh steps (`python -m dagctl_dagster.runner.sqlmesh_apply ...`), the
#     Dockerfile selector of Kaniko builds, and the base image of dbt project images
#     (backend.runner_image, passed to Kaniko as --build-arg BASE_IMAGE).
#
# Build: docker build -t ghcr.io/acme/dagctl-dagster:0.1.0 .
# Layers: system packages -> locked dependencies (changes only with uv.lock) -> our source, so editing the
# package rebuilds only the last, small layer.

ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm

# git + ssh: the code location keeps Git mirrors of the projects (GitPython drives the git binary).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# uv stays in the image: the default dbt Dockerfile installs a project's requirements.txt with it.
COPY --from=uv /uv /uvx /usr/local/bin/

ENV VIRTUAL_ENV=/opt/dagctl/.venv \
    UV_PROJECT_ENVIRONMENT=/opt/dagctl/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    SQLMESH__DISABLE_ANONYMIZED_ANALYTICS=1
ENV PATH=/opt/dagctl/.venv/bin:$PATH

# An unprivileged user (uid 1000) runs everything; /app is where dbt project images put the project.
RUN groupadd --system --gid 1000 dagctl \
    && useradd --system --uid 1000 --gid dagctl --create-home --home-dir /home/dagctl dagctl \
    && mkdir -p /opt/dagster/dagster_home /app \
    && chown dagctl:dagctl /opt/dagster/dagster_home /app

WORKDIR /opt/dagctl

# Dependency layer: exactly the versions of uv.lock, without dev tools and without our package.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Source layer: our package, installed as a regular (non-editable) wheel with its package data. uv keys its
# cached build of a local project on pyproject.toml alone: without --reinstall-package, a cache mount kept
# between builds would install the wheel of older sources.
COPY README.md ./
COPY dagctl_dagster ./dagctl_dagster
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --reinstall-package dagctl-dagster

USER dagctl
WORKDIR /app
EXPOSE 3030

# The code location; the Helm chart passes the same arguments (dagsterApiGrpcArgs).
CMD ["dagster", "api", "grpc", "--host", "0.0.0.0", "--port", "3030", "--module-name", "dagctl_dagster.defs.location"]
