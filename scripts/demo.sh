#!/usr/bin/env bash
# Set up (idempotent), start the local stack, load demo data, run the jobs, show what
# they wrote and `novajobs status`. The stack keeps running for you to explore:
#   eval "$(.venv/bin/python scripts/stack.py env)"; .venv/bin/novajobs --help
#   .venv/bin/python scripts/stack.py down
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
eval "$(.venv/bin/python scripts/stack.py up)"
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
show() { python - "$@" <<'PY'
import json, os, sys
import redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
for key in sys.argv[1:]:
    value = r.get(key)
    items = json.loads(value) if value else None
    print(f"{key} (TTL {r.ttl(key)} s): {len(items or [])} items; first 3:")
    for item in (items or [])[:3]:
        print("   ", item)
PY
}

step "demo data (ClickHouse, PostgreSQL, S3, Redis, Neo4j, Elasticsearch)"
python scripts/demo_data.py

# Run a job, print its exit code, and go on whatever it was (3 = a check found a problem).
nj() { printf '\n$ novajobs %s\n' "$*" >&2; local rc=0; novajobs "$@" || rc=$?; echo "-> exit $rc" >&2; }

step "cache jobs (ClickHouse -> Redis)"
nj refresh-trending
show nova:cache:trending:1h
nj refresh-suggestions --batch-size 500
show "nova:cache:suggested_users:$(redis-cli -u "$REDIS_URL" --raw zrange novajobs:suggestions:refreshed 0 0)"

step "PostgreSQL jobs"
nj init-db
nj create-partitions
nj daily-stats --from "$(date -u -d '-7 days' +%F)"
nj group-activity-rank
nj check-message-gaps --since 45d --json     # the demo deleted 3 messages: exit 3

step "gc-files: a dry run, then the real run in 2 shards"
nj gc-files --dry-run --grace 1h
nj gc-files --grace 1h --shard 1/2
nj gc-files --grace 1h --shard 2/2

step "cross-store checks"
nj check-consistency --sample 500            # 3 users missing in Neo4j: within 0.1 %
nj check-consistency --tolerance 0.01        # ... but not within 0.01 %: exit 3
nj forcemerge-indices --dry-run --pattern 'logs-*'

step "Redis jobs"
nj clean-token-blacklist --dry-run
nj clean-token-blacklist
nj drain-stream --max-seconds 5              # 1000 audit events -> audit_logs, 2 poison -> DLQ
nj dlq list

step "data lifecycle: archive old months to S3, bring one back"
export NOVAJOBS_ARCHIVE_RETENTION_MONTHS="chat_messages=3,chat_inbox=3"
month=$(date -u -d "$(date -u +%Y-%m-01) -5 months" +%Y-%m)
nj archive-partitions --dry-run                  # the 3 old months of each table
nj archive-partitions                            # detached, archived, verified, dropped
nj restore-partition chat_messages "$month" --json
nj archive-audit-logs --retention-days 20        # audit rows older than 20 days -> S3

step "data lifecycle: orphan objects to quarantine and back"
export NOVAJOBS_ORPHAN_BUCKETS=nova-orphans-demo NOVAJOBS_ORPHAN_SETTLE_SEC=1
nj gc-orphans --dry-run --grace 0                # 30 orphans; 5 rows point at nothing
nj gc-orphans --grace 0 --shard 1/2
nj gc-orphans --grace 0 --shard 2/2
nj quarantine list -n 5
nj quarantine restore --prefix uploads/tmp/000   # 10 of them back where they were

step "data lifecycle: index retention"
nj expire-indices --dry-run --retention-days 7   # lists ages and sizes; the write index stays
nj expire-indices --retention-days 8

step "novajobs status"
novajobs status

printf '\nThe stack is still up. Try:  eval "$(.venv/bin/python scripts/stack.py env)"; novajobs --help\n' >&2
printf 'Stop it with:  .venv/bin/python scripts/stack.py down\n' >&2
