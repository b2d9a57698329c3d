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

step "demo data"
python scripts/demo_data.py

step "novajobs refresh-trending"
novajobs refresh-trending
show nova:cache:trending:1h

step "novajobs refresh-suggestions"
novajobs refresh-suggestions --batch-size 500
show "nova:cache:suggested_users:$(redis-cli -u "$REDIS_URL" --raw zrange novajobs:suggestions:refreshed 0 0)"

step "novajobs status"
novajobs status

printf '\nThe stack is still up. Try:  eval "$(.venv/bin/python scripts/stack.py env)"; novajobs --help\n' >&2
printf 'Stop it with:  .venv/bin/python scripts/stack.py down\n' >&2
