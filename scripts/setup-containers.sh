#!/usr/bin/env bash
# Container tooling for `make image`, `make push`, `make run-containers` and the container tests,
# from a clean Debian 12 machine, as root. Idempotent: re-running changes nothing that is in place.
#
#   1. Debian packages: podman, buildah, runc (the OCI runtime), mmdebstrap (bootstraps the base
#      image), docker-registry (a real OCI registry the push/pull test serves on 127.0.0.1).
#   2. /etc/containers/containers.conf: runtime runc (crun refuses cgroups v1/hybrid, which some
#      machines have), cgroupfs and file events (no systemd as PID 1 here), and default
#      container ulimits no higher than this machine's hard limits (podman's defaults exceed
#      them on some machines, and every container then fails to start).
#   3. The local base image $LOCAL_BASE: Debian 12 with Python 3.11, bootstrapped from Debian
#      packages with mmdebstrap and imported, for machines that cannot pull the upstream base
#      (`make image` uses it when it exists; BASE_IMAGE=... overrides).
#   4. The Docker API of podman on a unix socket (`podman system service`), which the `docker`
#      Python client (kfp.local's DockerRunner) talks to; started only when nothing answers there.
#
# Where a Docker engine answers (`docker info`), steps 1-4 are skipped: `make image` and the
# container runners use Docker, and the upstream base image is pulled as usual.
set -euo pipefail

LOCAL_BASE=${LOCAL_BASE:-localhost/wavenet-base/python:3.11-bookworm}
PODMAN_SOCKET=${PODMAN_SOCKET:-/run/podman/podman.sock}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

say() { echo "setup-containers: $*"; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  say "a Docker engine answers: nothing to set up"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-containers: error: run as root (installs Debian packages and writes /etc/containers)" >&2
  exit 2
fi

# 1. packages --------------------------------------------------------------------------------
PACKAGES=(podman buildah runc mmdebstrap docker-registry)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" uidmap netavark aardvark-dns iptables catatonit >/dev/null
fi
# The Debian package starts a registry service on :5000 where systemd runs; the tests start
# their own on free loopback ports, so a stray one is only stopped when this script started it.

# 2. containers.conf ---------------------------------------------------------------------------
cap() {  # the lower of a wanted limit and the hard limit ("unlimited" counts as no cap)
  local want=$1 hard=$2
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then echo "$want"; else echo "$hard"; fi
}
nofile=$(cap 1048576 "$(ulimit -Hn)")
# nproc counts the processes and threads of a uid machine-wide; no more than pid_max (32768 on
# most kernels): on this project's VMs runc was refused any nproc above pid_max.
nproc=$(cap "$(cap 65536 "$(cat /proc/sys/kernel/pid_max)")" "$(ulimit -Hu)")
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want=$(cat <<EOF
# Written by scripts/setup-containers.sh (wavenet-pipelines).
[containers]
# Within this machine's hard limits (ulimit -Hn, ulimit -Hu); higher defaults stop every container.
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
# crun refuses cgroups v1/hybrid; runc runs on both.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
# netavark (installed above) rather than the CNI plugins, which Debian's podman leaves uninstalled.
network_backend = "netavark"
EOF
)
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  [ -f "$conf" ] && ! grep -q "scripts/setup-containers.sh" "$conf" && cp "$conf" "$conf.orig"
  printf '%s\n' "$want" > "$conf"
  say "wrote $conf (runc, nofile=$nofile, nproc=$nproc)"
  # A service started by this script before the change would keep the old settings.
  pidfile="$(dirname "$PODMAN_SOCKET")/service.pid"
  if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
    say "stopped the podman service started with the old settings"
    sleep 1
  fi
fi

# 3. the local base image ------------------------------------------------------------------------
if podman image exists "$LOCAL_BASE"; then
  say "base image $LOCAL_BASE is there"
else
  say "bootstrapping $LOCAL_BASE with mmdebstrap (Debian 12, Python 3.11)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # minbase + what python:3.11-slim-bookworm has that the images use: Python with venv,
  # CA certificates (HTTPS to buckets), and tzdata. No compilers: the builder stage adds them.
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=python3,python3-venv,ca-certificates,tzdata \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tmp/rootfs.tar" \
    "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
    "deb $DEBIAN_SECURITY bookworm-security main"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null
  say "imported $LOCAL_BASE ($(podman image inspect --format '{{.Size}}' "$LOCAL_BASE") bytes)"
fi

# 4. the Docker API ---------------------------------------------------------------------------------
if curl -sf --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
  say "podman's Docker API answers on $PODMAN_SOCKET"
else
  mkdir -p "$(dirname "$PODMAN_SOCKET")"
  rm -f "$PODMAN_SOCKET"
  # --time=0: no idle exit. Detached from this shell; its log goes next to the socket. Started
  # in /, not in this checkout: every container's conmon inherits the service's working
  # directory, and once a clone that started it is deleted, each container start fails
  # ("conmon: Failed to get working directory", answered 500 "write child: broken pipe").
  env --chdir=/ setsid nohup podman system service --time=0 "unix://$PODMAN_SOCKET" \
    >"$(dirname "$PODMAN_SOCKET")/service.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    curl -sf --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null \
    || { echo "setup-containers: error: podman system service did not answer on $PODMAN_SOCKET" >&2; exit 1; }
  echo $! > "$(dirname "$PODMAN_SOCKET")/service.pid"
  say "started podman's Docker API on $PODMAN_SOCKET (pid $!)"
fi
say "ready: DOCKER_HOST=unix://$PODMAN_SOCKET"
