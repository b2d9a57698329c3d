"""`novajobs console`: a web console over the run records, locks and streams in Redis.

Imported only by the `console` command (and its tests): `novajobs --help` and every job
run never pay for it. The standard library serves it (server.py); pages are rendered on
the server (pages.py, opspages.py, an SVG chart in chart.py) from the same data as the
JSON API under /api/ (data.py); actions (actions.py) are the CLI's own functions; who
may do what is security.py.
"""
