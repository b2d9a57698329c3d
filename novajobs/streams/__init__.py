"""Redis Streams plumbing for drain-stream, promote-retries and the dlq commands.

- ``handlers``: what a handler is, the registry (built-ins + the ``novajobs.handlers``
  entry-point group), and how a stream entry becomes a ``Message``.
- ``queues``: key names, retry backoff, the retry sorted set and the dead-letter stream
  (atomic Lua scripts for promoting and replaying).
- ``pool``: bounded worker threads with a per-call timeout.
- ``audit``: the built-in ``audit-log`` handler (PostgreSQL ``audit_logs``, exactly once).

Handler authors import ``Handler``, ``Message`` and ``PermanentError`` from
``novajobs.streams.handlers``; nothing here imports a driver at module level.
"""
