"""Throwaway network namespaces for the guard tests: knockd, fwknopd, fail2ban and firewall rules run in
them, never in the host's own network stack (NEVER the host's firewall).

* ``namespace()``: ``ip netns add geo-<our pid>-<random>``, ``lo`` up; deleted in ``finally`` (every
  process started in it through ``Netns.running`` is stopped first, by its own process group);
* ``linked(a, b)``: a veth pair between two of ours, with an IPv4 and an IPv6 address on each end (DAD
  off, so an address is usable at once), for tests where a knock must come from another source;
* ``Netns.call(fn)``: ``fn`` in a thread that entered the namespace (``setns`` acts on the calling
  thread only, so the test process itself never leaves its own); a child started from there is in it too;
* ``checked_namespaces()``: what a test module's fixture wraps: namespaces made on demand, all deleted
  after the test, then ``ip netns list`` asserted to hold none of this process's; before it,
  ``sweep_dead()`` deletes namespaces left by a test process that was killed (its pid is in the name).

A namespace dies with its last reference: ``ip netns del`` after its processes are gone frees it all,
rules, interfaces and sockets included.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from daemons import running
from orchestrator.signals import terminate_unwinds

PREFIX = "geo-"
NAME_RE = re.compile(rf"{PREFIX}(\d+)-[0-9a-f]{{6}}")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ours(pid: int | None = None) -> list[str]:
    """Namespaces named by process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return [name for name in listed() if (m := NAME_RE.fullmatch(name)) and int(m.group(1)) == pid]


def listed() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_dead() -> list[str]:
    """Delete our-format namespaces whose creating process is gone (a test run killed with -9)."""
    gone = [name for name in listed() if (m := NAME_RE.fullmatch(name)) and not Path(f"/proc/{m.group(1)}").exists()]
    for name in gone:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return gone


@dataclass
class Netns:
    name: str
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def daemon_argv(self, argv: list[str]) -> list[str]:
        """``argv`` inside, as PID 1 of a PID namespace of its own (``unshare --pid --fork --kill-child``).

        Seen here: knockd's cmd_timeout children call setsid(), so they leave its process group and
        outlived a SIGKILL of it (sleeping out a 600 s cmd_timeout). When PID 1 of a PID namespace dies,
        the kernel kills every process in it; and ``--kill-child`` kills that PID 1 when ``unshare``
        (our process group's leader) dies. So stopping the group stops them all."""
        return self.argv("unshare", "--pid", "--fork", "--kill-child", "--", *argv)

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A short command inside; its own process group, so a hang kills only it."""
        return subprocess.run(self.argv(*argv), check=check, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def running(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """A daemon inside (``daemons.running``: own process group, ready by an event; its own PID
        namespace), stopped before the namespace is deleted."""
        return self._stack.enter_context(running(self.daemon_argv(argv), **kwargs))

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a thread inside this namespace; its result, or its exception raised here."""
        box: dict = {}

        def inside() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            finally:
                os.close(fd)
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=inside, name=f"in-{self.name}")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def iptables(self, *argv: str, v6: bool = False) -> str:
        return self.run("ip6tables" if v6 else "iptables", *argv).stdout


@contextmanager
def namespace() -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up; its daemons stopped and itself deleted on every way out."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = Netns(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        with ns._stack:
            yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass(frozen=True)
class Link:
    """Both ends of a veth pair: interface name and addresses, seen from each namespace."""

    a_if: str
    b_if: str
    a4: str
    b4: str
    a6: str
    b6: str


def linked(a: Netns, b: Netns, subnet: int = 1) -> Link:
    """A veth pair from ``a`` to ``b``: 10.200.<subnet>.1|2/24 and fd00:<subnet>::1|2/64 (no DAD)."""
    link = Link("veth-a", "veth-b", f"10.200.{subnet}.1", f"10.200.{subnet}.2", f"fd00:{subnet}::1",
                f"fd00:{subnet}::2")
    _ip(a, "link", "add", link.a_if, "type", "veth", "peer", "name", link.b_if, "netns", b.name)
    for ns, ifname, v4, v6 in ((a, link.a_if, link.a4, link.a6), (b, link.b_if, link.b4, link.b6)):
        ns.run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0")
        _ip(ns, "addr", "add", f"{v4}/24", "dev", ifname)
        _ip(ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
        _ip(ns, "link", "set", ifname, "up")
    return link


def _ip(ns: Netns, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns.name, *argv], check=True, capture_output=True)


def assert_none_left() -> None:
    """None of this process's namespaces is left (``ip netns list``); any found is deleted, then reported."""
    left = ours()
    for name in left:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert not left, f"network namespaces left behind: {left}"


@contextmanager
def checked_namespaces() -> Iterator[Callable[[], Netns]]:
    """For a test's fixture: ``new()`` makes namespaces; after the block all are gone and none is left.
    SIGTERM (a CI abort) unwinds through here too, so the namespaces are deleted then as well."""
    sweep_dead()
    with terminate_unwinds(), ExitStack() as stack:
        yield lambda: stack.enter_context(namespace())
    assert_none_left()
