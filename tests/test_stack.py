"""The servers the suite and the demo start (scripts/stack.py) talk to loopback only.

Nothing we start may call outside hosts: no telemetry, no update checks. SeaweedFS's
master reports usage to a public URL unless told not to; the others (Redis, PostgreSQL,
FalkorDB, the noida-db emulator) have no such feature. The first test proves the
switch is on the command line of the running server; the second that no process of the
stack holds a connection to a non-loopback address after the suite has used it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

SERVICES = ("redis", "postgres", "s3", "neo4j", "es")


@pytest.fixture
def running(stack: Any) -> dict[str, int]:
    stack.up(SERVICES)
    return dict(stack.pids())


def test_seaweedfs_runs_with_its_telemetry_off(running):
    argv = Path(f"/proc/{running['s3']}/cmdline").read_bytes().split(b"\0")
    assert b"-master.telemetry=false" in argv


def test_no_server_of_the_stack_is_connected_to_an_outside_host(running):
    assert sorted(running) == sorted(SERVICES)
    outside = {
        (name, str(remote))
        for name, pid in running.items()
        for proc in _tree(pid)
        for remote in _remote_addresses(proc)
        if not (remote.is_loopback or remote.is_unspecified)
    }
    assert outside == set()


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _remote_addresses(pid: int) -> list[Any]:
    """Peer addresses of the TCP and UDP sockets the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                peers.append(_address(fields[2].split(":")[0]))
    return peers


def _address(hexed: str) -> Any:
    """/proc/net's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hexed)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
