"""Production-shaped Redis for the tests and benchmarks: a Redis Cluster on loopback.

    .venv/bin/python scripts/topology.py cluster [--primaries 3] [--replicas 1]   (main())

prints the cluster's REDIS_URL and keeps it running until Ctrl-C.

``RedisClusterServers`` starts Debian's redis-server with ``--cluster-enabled yes`` on
free loopback ports (one throwaway dir per node, no persistence), joins the nodes with
``redis-cli --cluster create`` and waits until every slot is served and every replica is
in sync. ``kill()`` and ``wait_for_failover()`` are for the fault tests: a replica is
promoted about ``node_timeout_ms`` after its primary dies.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novajobs_dev.stack import StackError, _redis_argv, _wait, free_base_port


@dataclass(frozen=True)
class ClusterNode:
    port: int
    node_id: str
    primary: bool
    slots: int  # how many slots it serves (0 for a replica)


def _redis_binary(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        raise StackError(f"{name} not found (apt-get install redis-server; see scripts/setup.sh)")
    return found


class RedisClusterServers:
    """``primaries`` primaries with ``replicas`` replicas each, on 127.0.0.1."""

    def __init__(
        self,
        directory: str | Path | None = None,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="novajobs-cluster-")).resolve()
        self.primaries, self.replicas = primaries, replicas
        self.node_timeout_ms = node_timeout_ms
        base = free_base_port()  # its +10000 twins are free too: the cluster bus ports
        self.ports = [base + 1 + i for i in range(primaries * (1 + replicas))]
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A URL naming one node: novajobs discovers the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def up(self) -> RedisClusterServers:
        for port in self.ports:
            self._start_node(port)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [_redis_binary("redis-cli"), "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0 or "All 16384 slots covered" not in created.stdout:
            raise StackError(f"redis-cli --cluster create failed:\n{created.stdout[-1500:]}"
                             f"{created.stderr[-500:]}")
        _wait("redis cluster", self._ready, timeout=60, log=self.dir / f"{self.ports[0]}.log")
        return self

    def down(self) -> None:
        for port in list(self._procs):
            self.kill(port, signal.SIGTERM)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- what the fault tests need --------------------------------------------------------
    def client(self, port: int) -> Any:
        """A plain client to one node (for CLUSTER and INFO commands)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                           decode_responses=True)

    def nodes(self) -> list[ClusterNode]:
        """The cluster as one live node sees it (dead nodes left out)."""
        for port in self.ports:
            if port not in self._procs:
                continue
            with self.client(port) as c:
                try:
                    return _parse_nodes(c.execute_command("CLUSTER", "NODES"))
                except Exception:
                    continue
        raise StackError("no cluster node answers")

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key`` now."""
        with self.client(self.live_ports()[0]) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, (_, port, *_rest), *_replicas in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(port)
        raise StackError(f"no node serves the slot of {key!r}")

    def start_migration(self, slot: int, target_port: int, keys: list[str]) -> int:
        """Begin moving ``slot`` to ``target_port`` (as ``redis-cli --cluster reshard``
        does) and move ``keys`` of it; the slot stays MIGRATING/IMPORTING, so the source
        answers ASK for the moved keys. Returns the source's port."""
        source = next(p for p in self.live_ports() if self._serves(p, slot))
        ids = {n.port: n.node_id for n in self.nodes()}
        with self.client(target_port) as target, self.client(source) as src:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target_port])
            if keys:
                src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000,
                                    "KEYS", *keys)
        return source

    def finish_migration(self, slot: int, target_port: int) -> None:
        """Move the slot's remaining keys, then the slot belongs to ``target_port`` (every
        node is told). A source told first would drop the keys it still has."""
        target_id = next(n.node_id for n in self.nodes() if n.port == target_port)
        for port in self.live_ports():
            with self.client(port) as c:
                if port == target_port or not self._is_primary(c):
                    continue
                while keys := c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                    c.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000,
                                      "KEYS", *keys)
        for port in [target_port, *(p for p in self.live_ports() if p != target_port)]:
            with self.client(port) as c:
                if port == target_port or self._is_primary(c):
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        _wait("the slot's new owner to be known", self._state_ok)

    def _serves(self, port: int, slot: int) -> bool:
        with self.client(port) as c:
            if not self._is_primary(c):
                return False
            return any(start <= slot <= end for start, end, *_ in
                       c.execute_command("CLUSTER", "SLOTS") if int(_[0][1]) == port)

    @staticmethod
    def _is_primary(c: Any) -> bool:
        return bool(c.info("replication")["role"] == "master")

    def live_ports(self) -> list[int]:
        return [port for port in self.ports if port in self._procs]

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        proc = self._procs.pop(port, None)
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_for_failover(self, dead_port: int, timeout: float = 60) -> None:
        """Until a replica serves every slot the dead node served and the cluster is ok."""

        def promoted() -> bool:
            nodes = self.nodes()
            serving = {n.port for n in nodes if n.primary and n.slots}
            return dead_port not in serving and sum(n.slots for n in nodes if n.primary) == 16384 \
                and self._state_ok()

        _wait(f"failover of 127.0.0.1:{dead_port}", promoted, timeout=timeout)

    # -- internals --------------------------------------------------------------------------
    def _start_node(self, port: int) -> None:
        data = self.dir / str(port)
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            *_redis_argv(_redis_binary("redis-server"), port, data),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Replicas show in CLUSTER SLOTS (so clients know them) only once their
            # replication offset is not 0: let the primaries ping them often.
            "--repl-ping-replica-period", "1",
        ]
        with (self.dir / f"{port}.log").open("ab") as log:
            self._procs[port] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait(f"redis cluster node {port}", lambda: bool(self.client(port).ping()),
              log=self.dir / f"{port}.log")

    def _state_ok(self) -> bool:
        for port in self.live_ports():
            with self.client(port) as c:
                if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                    return False
        return True

    def _ready(self) -> bool:
        if not self._state_ok():
            return False
        for port in self.live_ports():
            with self.client(port) as c:
                info = c.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        nodes = self.nodes()
        if sum(1 for n in nodes if n.primary) != self.primaries or len(nodes) != len(self.ports):
            return False
        with self.client(self.ports[0]) as c:  # every slot range lists its replicas
            ranges = c.execute_command("CLUSTER", "SLOTS")
        return all(len(r) - 3 == self.replicas for r in ranges)


def _parse_nodes(text: str) -> list[ClusterNode]:
    """``CLUSTER NODES`` lines -> live nodes (``fail``/``noaddr`` ones left out)."""
    out = []
    for line in text.strip().splitlines():
        node_id, address, flags, _primary, _ping, _pong, _epoch, _link, *slots = line.split()
        if "fail" in flags.split(",") or "noaddr" in flags:
            continue
        count = 0
        for spec in slots:
            if spec.startswith("["):  # a slot being migrated: counted where it lives now
                continue
            start, _, end = spec.partition("-")
            count += int(end or start) - int(start) + 1
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        out.append(ClusterNode(port, node_id, "master" in flags.split(","), count))
    return out


def main() -> int:
    import argparse

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("cluster",))
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    try:
        with RedisClusterServers(primaries=args.primaries, replicas=args.replicas) as cluster:
            print(f"export REDIS_URL={cluster.url!r}", flush=True)
            print(f"# nodes: {cluster.ports}; Ctrl-C stops them", file=sys.stderr)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except StackError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 1
    return 0
