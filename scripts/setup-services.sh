#!/usr/bin/env bash
# Services and tools the integration tests use on 127.0.0.1 that are Debian packages, not Python
# ones: PostgreSQL (tests/test_mlflow_server.py runs the production MLflow set-up of
# k8s/mlflow.yaml on it; the test starts its own cluster with initdb + pg_ctl in a temporary
# folder, as the `postgres` user when run as root) and Chromium (tests/test_mlflow_ui.py loads
# the MLflow UI headless; make ui-screenshots). Idempotent; as root on Debian. The package's own
# PostgreSQL cluster is not used (where systemd runs, Debian starts it on port 5432; the tests
# use free ports).
set -euo pipefail
say() { echo "setup-services: $*"; }
missing=()
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "PostgreSQL is installed"
else
  missing+=(postgresql)
fi
if command -v chromium >/dev/null 2>&1; then
  say "Chromium is installed"
else
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-services: error: missing ${missing[*]}; run as root (apt-get install ${missing[*]})" >&2
  exit 2
fi
say "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for m in "${missing[@]}"; do
  case $m in
    postgresql) say "installed: $(ls -d /usr/lib/postgresql/*/bin)" ;;
    chromium) say "installed: $(chromium --version 2>/dev/null || echo chromium)" ;;
  esac
done
