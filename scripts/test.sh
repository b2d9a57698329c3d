#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. The suite starts its own Redis, PostgreSQL,
# SeaweedFS (S3), FalkorDB (Bolt), Elasticsearch emulator and embedded ClickHouse on
# random loopback ports, and stops them at the end. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Two workers (NOVAJOBS_TEST_WORKERS; 0 = one process), each with its own stack: the suite
# mostly waits on servers and subprocesses, so this nearly halves its wall time on 2 cores.
exec .venv/bin/python -m pytest -q -n "${NOVAJOBS_TEST_WORKERS:-2}" --dist loadgroup "$@"
