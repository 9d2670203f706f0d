#!/usr/bin/env bash
# Installs what the benchmarks need beyond the venv: nginx, the sink; the PostgreSQL server
# for `--engine postgresql` (the bench runs its own throwaway server, as the tests do); and,
# best effort, py-spy in the venv (thread names and --profile). pyreqwest, which `--scenario
# client` also needs, is a dependency of webhookd itself. Idempotent and quiet.
# The bench runs its own nginx instances (own config, prefix and port in a temp dir).
# Then, from the repository's root: .venv/bin/python -m bench.run --scenario NAME [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v nginx >/dev/null 2>&1; then
  apt_install nginx
  # Debian's package may start a system nginx on port 80: the bench does not need it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi
command -v nginx >/dev/null
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
  # Debian's package may start a cluster of its own: the bench does not use it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
if [ -x .venv/bin/python ] && [ ! -x .venv/bin/py-spy ]; then
  .venv/bin/python -m pip install --quiet py-spy >/dev/null 2>&1 || echo "note: py-spy not installed"
fi
