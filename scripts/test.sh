#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. The suite starts its own Redis, PostgreSQL,
# SeaweedFS (S3), FalkorDB (Bolt), Elasticsearch emulator and embedded ClickHouse on
# random loopback ports, and stops them at the end. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
