"""One way for tests to run a daemon or a long child: its own process group, dead with the test.

* started with ``start_new_session`` (a process group of its own) under ``setpriv --pdeathsig
  KILL``, so it dies even if pytest itself is killed with ``kill -9``;
* ready means an event (a port's greeting, an HTTP answer, a line), waited for with a deadline
  that only turns a hang into a failure naming the daemon and the tail of its log;
* stopped in ``finally`` by its own process group (SIGTERM, then SIGKILL), and asserted gone:
  no process of that group may be left. Nothing is ever matched by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STOP_GRACE_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_answers(host: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False
    return ready


@contextmanager
def running(argv: list[str], *, what: str, ready: Callable[[], bool], log: Path | None = None,
            env: dict | None = None, cwd=None, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run ``argv`` until the block ends; ``ready()`` must turn true within ``timeout`` seconds."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)
    finally:
        if log:
            out.close()
    try:
        wait_ready(proc, what, ready, timeout, log)
        yield proc
    finally:
        stop_group(proc)


def wait_ready(proc: subprocess.Popen, what: str, ready: Callable[[], bool], timeout: float,
               log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout:.0f} s"
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise RuntimeError(f"{what} {state}" + (f": {tail}" if tail else ""))
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's whole process group, SIGKILL after a grace period; then none may be left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
        if not group_members(proc.pid):
            return
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + STOP_GRACE_S
    while group_members(proc.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {proc.pid} survived SIGKILL: {group_members(proc.pid)}")
        time.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
