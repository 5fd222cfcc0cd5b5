#!/usr/bin/env bash
# The embedded demo: a local Git remote holding the example dbt project, and `dagster dev` on
# 127.0.0.1:3000 watching it. Everything lives in .demo/ and .dagster_home/ (ignored by git).
#
# Run it through `make demo`: the Makefile exports UV, the uv it installed (uv need not be on PATH).
# `demo.sh --check` prepares everything the same way, then checks that the webserver command resolves
# instead of starting it (DAGCTL_DEMO_DIR and DAGCTL_DEMO_HOME move .demo/ and .dagster_home/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
uv="${UV:-uv}"
demo="${DAGCTL_DEMO_DIR:-$root/.demo}"
export DAGSTER_HOME="${DAGCTL_DEMO_HOME:-$root/.dagster_home}"
export DAGCTL_CONFIG="$root/examples/dagctl.yaml"
export DAGCTL_WAREHOUSE_DIR="$demo/warehouse"
mkdir -p "$DAGSTER_HOME" "$DAGCTL_WAREHOUSE_DIR"
cp "$root/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

# make_remote NAME SOURCE: a bare Git remote $demo/remote/NAME.git and a working clone $demo/work/NAME.
make_remote() {
  local name="$1" source="$2" work="$demo/work/$1"
  [ -d "$demo/remote/$name.git" ] && return
  echo "creating the demo Git remote $demo/remote/$name.git from $source"
  git init -q --bare -b main "$demo/remote/$name.git"
  git init -q -b main "$work"
  cp -r "$root/$source/." "$work/"
  git -C "$work" add -A
  git -C "$work" -c user.name="Demo User" -c user.email=demo@example.com commit -qm "$name: first version"
  git -C "$work" remote add origin "$demo/remote/$name.git"
  git -C "$work" push -q -u origin main
}
make_remote jaffle examples/jaffle_dbt
make_remote shop examples/sqlmesh_shop

cat <<MSG

dagctl demo: Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops it).
The sensors plan the dbt project 'jaffle' (version "1") and the SQLMesh project 'shop' for dev (runs by
itself) and prod (waits for an approval by alice or bob).

To change a model, bump the version and push, in another terminal:

  cd $demo/work/jaffle && echo "-- reviewed change" >> models/marts/customers.sql
  sed -i 's/^version: .*/version: "2"/' .dagctl/config.yaml
  git -c user.name="Demo User" -c user.email=demo@example.com commit -qam "Change customers" && git push -q

Approve prod from the launchpad of dagctl_review_job (the plan's asset page shows the config), or:
  $root/.venv/bin/dagctl plans list
  $root/.venv/bin/dagctl plans approve <plan id> --as alice

MSG
cd "$root"
webserver=("$uv" run --frozen dagster dev -h 127.0.0.1 -p "${DAGCTL_DEMO_PORT:-3000}" -w workspace.yaml)
if [ "${1:-}" = "--check" ]; then
  "${webserver[@]}" --help >/dev/null
  echo "demo check: ${webserver[*]} resolves"
  exit 0
fi
exec "${webserver[@]}"
