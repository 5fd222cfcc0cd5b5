#!/usr/bin/env bash
# System packages the test suite needs beyond Python: git (real repositories), Debian's postgresql (the
# tests start a throwaway server of their own for Dagster's and SQLMesh's PostgreSQL storage) and, for the
# web UI check, Debian's chromium. Installed only when missing and when we can (root with apt-get).
set -euo pipefail
missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# initdb and pg_ctl live in /usr/lib/postgresql/<version>/bin, not on PATH (tests/fixtures/postgres.py).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    # A failed install must not stop the suite: the tests that need a missing tool skip and say why.
    if ! { apt-get update -qq >/dev/null && \
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "warning: could not install ${missing[*]}; tests that need them are skipped" >&2
    fi
  else
    echo "warning: ${missing[*]} missing and cannot be installed here; tests that need them are skipped" >&2
  fi
fi
