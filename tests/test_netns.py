"""The namespace fixtures themselves: what runs inside stays inside, and nothing outlives a test, not
even one stopped by SIGTERM or killed with -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from children import wait_gone
from netns import Netns, checked_namespaces, linked, listed, sweep_dead

# Ready when the shell itself runs (it writes the marker): only then has setpriv set the parent-death
# signal; a kill before that (seen under load with ready=lambda: True) would leave the daemon behind.
CHILD = """
import os, sys, tempfile, time
sys.path.insert(0, {tests!r})
from netns import checked_namespaces
marker = os.path.join(tempfile.mkdtemp(), "up")
with checked_namespaces() as new:
    ns = new()
    script = "trap 'exit 0' TERM; echo up > " + marker + "; sleep 1000 & wait $!"
    proc = ns.running(["sh", "-c", script], what="sh", ready=lambda: os.path.exists(marker))
    print(ns.name, proc.pid, flush=True)
    time.sleep(1000)
"""


@pytest.fixture
def new():
    with checked_namespaces() as make:
        yield make


def child() -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent))],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    name, pid = proc.stdout.readline().split()
    return proc, name, int(pid)


def test_a_namespace_has_its_own_stack_and_a_veth_link_carries_v4_and_v6(new):
    a, b = new(), new()
    link = linked(a, b)
    assert a.name in listed() and b.name in listed()
    assert "127.0.0.1" in a.run("ip", "-4", "addr", "show", "lo").stdout
    assert link.b4 in b.run("ip", "-4", "addr").stdout and link.b4 not in a.run("ip", "-4", "addr").stdout
    for family, address in ((socket.AF_INET, link.b4), (socket.AF_INET6, link.b6)):
        server = b.call(listener, family, address)
        with server:
            port = server.getsockname()[1]
            a.call(lambda: socket.create_connection((address, port), timeout=5).close())
            with pytest.raises(OSError):  # not reachable from here: only across the link
                socket.create_connection((address, port), timeout=0.5).close()
    inside = a.call(lambda: Path("/proc/thread-self/ns/net").resolve().name)
    assert inside != Path("/proc/self/ns/net").resolve().name  # the call ran elsewhere; we did not move


def listener(family: int, address: str) -> socket.socket:
    server = socket.socket(family)
    server.bind((address, 0))
    server.listen(4)
    return server


def test_sigterm_stops_the_daemons_and_deletes_the_namespace():
    proc, name, daemon = child()
    assert name in listed() and Path(f"/proc/{daemon}").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    wait_gone(daemon, "the daemon in the namespace")
    assert name not in listed()


def test_after_kill_9_the_daemon_dies_with_its_parent_and_the_next_run_sweeps_the_namespace():
    proc, name, daemon = child()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_gone(daemon, "the daemon whose parent was killed (pdeathsig)")
    assert name in listed()  # nothing could run after kill -9
    assert name in sweep_dead()
    assert name not in listed()


def test_a_daemon_child_that_left_the_process_group_dies_with_the_daemon(tmp_path):
    """As knockd's cmd_timeout children do (setsid): the PID namespace takes them down too. (The daemon
    traps SIGTERM: PID 1 of a PID namespace ignores signals it has no handler for, as real daemons do not.)"""
    pidfile = tmp_path / "escaped"
    with checked_namespaces() as new:
        ns = new()
        script = f"trap 'exit 0' TERM; setsid sleep 1000 & echo $! > {pidfile}; sleep 1000 & wait $!"
        ns.running(["sh", "-c", script], what="sh",
                   ready=lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        inner = int(pidfile.read_text())  # its pid inside the PID namespace: find it outside by its parent ns
        escaped = [pid for pid in _sleepers_in(ns) if pid != inner]
        assert escaped, "the setsid'd child is not running"
    for pid in escaped:
        wait_gone(pid, "the child that left the daemon's process group")


def _sleepers_in(ns: Netns) -> list[int]:
    """Pids (as seen here) of processes in ``ns``'s network namespace."""
    want = os.stat(f"/run/netns/{ns.name}").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.stat(entry / "ns" / "net").st_ino == want:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_an_exception_in_a_call_reaches_the_caller(new):
    ns: Netns = new()
    with pytest.raises(ZeroDivisionError):
        ns.call(lambda: 1 / 0)
