"""Redis Streams plumbing for drain-stream, promote-retries and the dlq commands.

- ``handlers``: what a handler is, the registry (built-ins + the ``novajobs.handlers``
  entry-point group), and how a stream entry becomes a ``Message``.
- ``queues``: key names, retry backoff, the retry sorted set and the dead-letter stream
  (atomic Lua scripts for promoting and replaying).
- ``reader``: where entries come from (own pending, reclaimed, new) and delivery counts.
- ``settle``: every write of drain-stream (the MULTI of a round; giving entries back).
- ``pool``: bounded worker threads with a per-call timeout.
- ``audit``: the built-in ``audit-log`` handler (PostgreSQL ``audit_logs``, exactly once).

Handler authors import ``Handler``, ``Message``, ``PermanentError`` and ``Unavailable`` from
``novajobs.streams.handlers``; nothing here imports a driver at module level.
"""
