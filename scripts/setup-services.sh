#!/usr/bin/env bash
# Services the integration tests start on 127.0.0.1 that are Debian packages, not Python ones:
# PostgreSQL (tests/test_mlflow_server.py runs the production MLflow set-up of k8s/mlflow.yaml on
# it; the test starts its own cluster with initdb + pg_ctl in a temporary folder, as the
# `postgres` user when run as root). Idempotent; as root on Debian. The package's own cluster
# is not used (where systemd runs, Debian starts it on port 5432; the tests use free ports).
set -euo pipefail
say() { echo "setup-services: $*"; }
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "PostgreSQL is installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-services: error: PostgreSQL is missing; run as root (apt-get install postgresql)" >&2
  exit 2
fi
say "installing postgresql"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
say "installed: $(ls -d /usr/lib/postgresql/*/bin)"
