#!/usr/bin/env bash
# Installs PostgreSQL's server from Debian's packages, so that the cluster
# tests on PostgreSQL runner storage (test/cluster/Postgres.test.ts) run
# instead of being skipped. The tests start their own throwaway server
# (initdb into a temp folder, loopback, trust authentication) and look for
# initdb on the PATH: put /usr/lib/postgresql/<version>/bin first. Nothing is
# started here.
#
# Idempotent: exits at once when initdb is there.
#
# Usage: scripts/install-postgres.sh            (as root, or with sudo on PATH)
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  echo "install-postgres: PostgreSQL's server binaries are installed already"
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-postgres: needs root (or sudo) to run apt-get" >&2; exit 1; }
  sudo=sudo
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The server package without starting Debian's default cluster as a service.
$sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | head -1)"
