"""A throwaway network namespace reached from the build box over a veth pair, with an sshd inside.

Firewall tests change only this namespace's rules, never the host's. ``netns_host`` removes the
namespace on every path, after killing every process still in it (found by namespace membership,
``ip netns pids``: only what ran inside it, which only this test started), and asserts it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from children import wait_gone
from sshd import SshServer, running_sshd

SSH_PORT = 2222


@dataclass(frozen=True)
class NetnsHost:
    name: str
    ip: str  # the namespace's side of the veth pair
    server: SshServer
    interface: str = ""  # the namespace's end of the veth pair (what a daemon inside listens on)
    peer: str = ""  # this box's end of the veth pair (where a service of ours is reached from inside)

    def ns(self, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the namespace (its firewall tools see only its rules)."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, text=True,
                              capture_output=True, check=check)


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=check)


@contextmanager
def netns_host(tmp: Path, wrap: Sequence[str] = (), ns_if: str = "") -> Iterator[NetnsHost]:
    """A namespace ``geo-<random>`` with ``lo`` up, a veth pair (10.251.x.y/30) and an sshd on its side
    (started through ``wrap``, a command prefix run inside the namespace, when given). ``ns_if`` names the
    namespace's end (``eth0``, as on an instance: it is made inside the namespace, so names never clash)."""
    suffix = uuid.uuid4().hex[:8]
    name, host_if, ns_if = f"geo-{suffix}", f"geoh{suffix}", ns_if or f"geon{suffix}"
    net = int(suffix[:4], 16) % 16384 * 4  # a /30 inside 10.251.0.0/16
    host_ip, ns_ip = f"10.251.{net // 256}.{net % 256 + 1}", f"10.251.{net // 256}.{net % 256 + 2}"
    try:
        ip("netns", "add", name)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", name, "link", "set", ns_if, "up")
        ip("-n", name, "link", "set", "lo", "up")
        prefix = ["ip", "netns", "exec", name, *wrap]
        with running_sshd(tmp / "sshd", listen=ns_ip, port=SSH_PORT, prefix=prefix) as srv:
            yield NetnsHost(name, ns_ip, srv, ns_if, host_ip)
    finally:
        _remove(name, host_if)


def _remove(name: str, host_if: str) -> None:
    if name in ip("netns", "list", check=False).stdout.split():
        pids = [int(pid) for pid in ip("netns", "pids", name, check=False).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            wait_gone(pid, f"process in namespace {name}", timeout=10)
        ip("netns", "del", name)
    ip("link", "del", host_if, check=False)  # normally gone with its peer
    assert name not in ip("netns", "list", check=False).stdout.split(), f"namespace {name} still there"
