#!/usr/bin/env bash
# The embedded demo: a local Git remote holding the example dbt project, and `dagster dev` on
# 127.0.0.1:3000 watching it. Everything lives in .demo/ and .dagster_home/ (ignored by git).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
demo="$root/.demo"
export DAGSTER_HOME="$root/.dagster_home"
export DAGCTL_CONFIG="$root/examples/dagctl.yaml"
export DAGCTL_WAREHOUSE_DIR="$demo/warehouse"
mkdir -p "$DAGSTER_HOME" "$DAGCTL_WAREHOUSE_DIR"
cp "$root/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

if [ ! -d "$demo/remote/jaffle.git" ]; then
  echo "creating the demo Git remote $demo/remote/jaffle.git from examples/jaffle_dbt"
  git init -q --bare -b main "$demo/remote/jaffle.git"
  git init -q -b main "$demo/work/jaffle"
  cp -r "$root/examples/jaffle_dbt/." "$demo/work/jaffle/"
  git -C "$demo/work/jaffle" -c user.name="Demo User" -c user.email=demo@example.com add -A
  git -C "$demo/work/jaffle" -c user.name="Demo User" -c user.email=demo@example.com \
    commit -qm "Jaffle shop: first version"
  git -C "$demo/work/jaffle" remote add origin "$demo/remote/jaffle.git"
  git -C "$demo/work/jaffle" push -q origin main
fi

cat <<MSG

dagctl demo: Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops it).
The sensor plans version "1" for dev (runs by itself) and prod (waits for alice or bob).

To change a model, bump the version and push, in another terminal:

  cd $demo/work/jaffle && echo "-- reviewed change" >> models/marts/customers.sql
  sed -i 's/^version: .*/version: "2"/' .dagctl/config.yaml
  git -c user.name="Demo User" -c user.email=demo@example.com commit -qam "Change customers" && git push -q

Approve prod from the launchpad of dagctl_review_job, or:
  DAGSTER_URL=http://127.0.0.1:3000 uv run dagctl plans list

MSG
cd "$root"
exec "${UV:-uv}" run --frozen dagster dev -h 127.0.0.1 -p "${DAGCTL_DEMO_PORT:-3000}" -w workspace.yaml
