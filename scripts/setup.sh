#!/usr/bin/env bash
# Everything novajobs' demo and tests need on a fresh Debian 12 machine, idempotently:
# Debian packages (as root, or via sudo), then a virtualenv in .venv with the project
# and its test extra. Safe to run again: it only installs what is missing.
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1  # no update check: pip talks to the index only to install
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  redis-server          # Redis 7 for locks, records, caches, streams
  postgresql            # PostgreSQL 15 (binaries only; the stack runs its own cluster)
  prometheus            # promtool: checks and unit-tests the generated alert rules
  prometheus-pushgateway  # a real Pushgateway for the metrics tests (started by them)
  openssl               # a throwaway certificate for the SMTP-over-TLS alert tests
  chromium              # the console's real-browser test (driven by PyPI playwright)
)

PYTHON=${PYTHON:-python3}
missing=()
# Debian's own python3 needs python3-venv to make a virtualenv (pyenv/official builds don't).
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a system Redis/PostgreSQL on install; novajobs' stack never uses them.
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.novajobs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv" >&2
  log=.venv/pip-install.log
  if ! { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e '.[test]'; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
