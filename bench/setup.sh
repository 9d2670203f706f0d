#!/usr/bin/env bash
# Installs what the benchmarks need beyond the venv: nginx, the sink. Idempotent and quiet.
# The bench runs its own nginx instances (own config, prefix and port in a temp dir).
set -euo pipefail
if ! command -v nginx >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
  # Debian's package may start a system nginx on port 80: the bench does not need it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi
command -v nginx >/dev/null
