#!/usr/bin/env python3
"""What reporting costs a run: a trivial job under the full run contract (lock, records)
with no reporting (the baseline) vs Pushgateway metrics, health-check pings, both, and
both with every endpoint refusing connections. Goal: a few ms per run; a dead endpoint
must cost no more than a refused connection.

Starts its own Redis (scripts/stack.py), a real Pushgateway (Debian
prometheus-pushgateway) and a local ping server, all on loopback, and stops them.

    .venv/bin/python scripts/bench_reporting.py [--runs 200]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.output import setup_logging
from novajobs.registry import JobSpec
from novajobs.runner import run_job
from novajobs.settings import load_settings
from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary

JOB = JobSpec(name="bench-reporting", summary="", description="", example="", module="__main__",
              schedule="* * * * *", timeout_sec=30)


def run(ctx: JobContext) -> Result:
    ctx.count("items", 42)
    return Result(Outcome.SUCCESS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ping_server() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/ping/{{job}}"


def start_pushgateway(log: Any) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        sys.exit("prometheus-pushgateway is not installed (scripts/setup.sh)")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the Pushgateway did not start")


def median_ms(runs: int, settings: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rec = run_job(JOB, settings)
        times.append(time.perf_counter() - started)
        assert rec.outcome is Outcome.SUCCESS, rec.error
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parse_args(parser, tiny={"runs": 3})
    setup_logging("json", "error")  # the refused endpoints' warnings are expected here
    with temporary(("redis",)) as stack, tempfile.TemporaryFile() as log:
        gateway, gateway_url = start_pushgateway(log)
        pings, ping_url = start_ping_server()
        refused = f"http://127.0.0.1:{free_port()}"
        try:
            env = stack.env()
            make: Callable[..., Any] = lambda **o: load_settings(  # noqa: E731
                environ=env, overrides={"redis_prefix": "bench:", "log_level": "error", **o})
            cases = {
                "no reporting (baseline)": make(),
                "Pushgateway push": make(pushgateway_url=gateway_url),
                "health-check pings (start + end)": make(healthcheck_url=ping_url),
                "push + pings": make(pushgateway_url=gateway_url, healthcheck_url=ping_url),
                "push + pings, endpoints refusing": make(
                    pushgateway_url=refused, healthcheck_url=refused + "/{job}"),
            }
            median_ms(20, cases["push + pings"])  # warm up imports and connections
            results = {name: median_ms(args.runs, s) for name, s in cases.items()}
        finally:
            gateway.terminate()
            gateway.wait()
            pings.shutdown()
    base = results["no reporting (baseline)"]
    print(f"median of {args.runs} runs of a trivial job under the run contract:")
    for name, ms in results.items():
        print(f"  {name:36s} {ms:7.2f} ms/run   {ms / base:5.2f}x   +{ms - base:5.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
