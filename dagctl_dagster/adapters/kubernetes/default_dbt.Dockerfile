# Default image of a dbt project that has no Dockerfile of its own (dagctl's Kubernetes backend).
#
# Kaniko builds it with the project folder as the build context and passes
# --build-arg BASE_IMAGE=<backend.runner_image>: the runner image already holds dbt-core, dbt-duckdb,
# dagster-pipes and dagctl's in-pod entrypoint (python -m dagctl_dagster.runner.dbt_pipes). This file
# only adds the project, its extra Python requirements and its dbt packages.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

# The dbt project lives in /app: dagctl runs the plan's dbt commands there.
WORKDIR /app

# The project itself, then the extra Python requirements it lists (e.g. dbt-snowflake). The runner
# image's virtualenv belongs to root: install as root, then run as the unprivileged user again.
USER root
COPY --chown=dagctl:dagctl . /app
RUN if [ -f requirements.txt ]; then \
        uv pip install --no-cache --python "$VIRTUAL_ENV/bin/python" --requirement requirements.txt; \
    fi
USER dagctl

# dbt packages (packages.yml / dependencies.yml) are installed at build time, so a plan runs offline.
RUN if [ -f packages.yml ] || [ -f dependencies.yml ]; then dbt deps; fi

# profiles.yml: in the project folder, or mounted by the backend (dbt_profiles_secret).
ENV DBT_PROFILES_DIR=/app
