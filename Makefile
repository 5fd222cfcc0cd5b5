# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
# Both install what they need (uv, then the locked dependencies) first.

PYTHON ?= python3
UV_VERSION := 0.13.8
# uv from PATH, else bootstrapped into .tools/ (a virtualenv of its own: works where pip may not install
# into the system Python).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
# Scripts run by the targets use this uv too (uv may not be on PATH).
export UV
export UV_PYTHON ?= 3.11
# Telemetry of Dagster, dbt and SQLMesh stays off in tests and in the demo.
export DAGSTER_DISABLE_TELEMETRY := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export SQLMESH__DISABLE_ANONYMIZED_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install demo demo-check test test-image test-kind bench clean

$(UV):
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

install: $(UV)
	$(UV) sync --frozen

# The demo's dbt parse servers (scope `demo`) are stopped when the demo stops (Ctrl-C included).
demo: install
	DAGCTL_DBT_PARSE_SERVER_SCOPE=demo bash -c 'trap "$(UV) run --frozen python -m dagctl_dagster.runner.dbt_parse_server --stop --scope demo" EXIT; bash scripts/demo.sh'

# Everything `make demo` does except starting the webserver: checks that its command resolves.
demo-check: install
	bash scripts/demo.sh --check

test: install
	bash scripts/test-deps.sh
	$(UV) run --frozen pytest -q -p no:randomly --timeout=600 $(PYTEST_ARGS)

# The image built from the Dockerfile and run under podman (tests/image; see scripts/test-image.sh).
test-image: install
	bash scripts/test-image.sh

test-kind: install
	$(UV) run --frozen pytest -q -m kind tests/kind

bench: install
	$(UV) run --frozen python benchmarks/bench_dbt_detect.py
	$(UV) run --frozen python benchmarks/bench_sqlmesh.py
	$(UV) run --frozen python benchmarks/bench_dbt_impact.py
	$(UV) run --frozen python benchmarks/bench_plan_state.py
	$(UV) run --frozen python benchmarks/bench_decision.py

clean:
	rm -rf .demo .dagster_home .dagctl-data
