"""Children that run to their end, and the proof that nothing a test started is left.

The same discipline as ``daemons.py`` (which runs daemons until a block ends), for a child that
ends by itself (``inv ...``): its own process group under ``setpriv --pdeathsig KILL``, its end
waited for with a deadline that only turns a hang into a failure naming it, its group stopped in
``finally`` and asserted empty.

What leaves a process group (gpg-agent, a background job, a daemon started by the code under
test) is found by an environment tag the test itself set (``GEO_TEST_TAG``), or by a pid the test
was told; sshd's per-connection processes (sshd writes its process title over its environment) by
their parent, the sshd the test started. Never by a process's name or command line.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemons import group_members, stop_group

TAG = "GEO_TEST_TAG"
HANG_S = 60.0  # only turns a hang into a failure: nothing here takes a tenth of it


def new_tag(what: str) -> str:
    return f"{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def tagged(tag: str) -> dict[int, str]:
    """Live processes but this one whose environment holds ``GEO_TEST_TAG=<tag>``: pid -> command line."""
    wanted = f"{TAG}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0") and _state(entry) != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
    return found


def _state(entry: Path) -> str:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> dict[int, str]:
    """Live children of ``pid`` (the parent field of /proc/*/stat), with their command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
            if fields and int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
    return found


def sshd_sessions(server) -> dict[int, str]:
    """The per-connection processes of a ``running_sshd`` server: children of the sshd it started (read from
    its PidFile). Each leads a session of its own, so its process group does not hold them."""
    listener = int((Path(server.log_path).parent / "sshd.pid").read_text())
    return children_of(listener)


def no_sshd_session_left(server) -> None:
    wait_until(lambda: not sshd_sessions(server), lambda: f"sshd sessions still open: {sshd_sessions(server)}")


def wait_until(condition: Callable[[], bool], what: str | Callable[[], str], timeout: float = HANG_S,
               poll: float = 0.05) -> None:
    """Until ``condition()`` holds; after ``timeout`` seconds (a hang) fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} (waited {timeout:.0f} s)")
        time.sleep(poll)


def no_tagged_left(tag: str, what: str) -> None:
    """Every process carrying ``tag`` ends (a killed one may take a moment to be gone)."""
    wait_until(lambda: not tagged(tag), lambda: f"{what}: still running: {tagged(tag)}")


def wait_gone(pid: int, what: str, timeout: float = HANG_S) -> None:
    """Until process ``pid`` has exited: an event (its pidfd turns readable), not a poll."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not readable:
        raise AssertionError(f"{what} (pid {pid}) still runs (waited {timeout:.0f} s)")


def finish(proc: subprocess.Popen, what: str, timeout: float = HANG_S) -> int:
    """``proc``'s exit code; a hang fails the test naming ``what``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not end (waited {timeout:.0f} s)") from None


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def finished(argv: list[str], *, what: str, out_dir: Path, env: dict | None = None, cwd=None,
             timeout: float = HANG_S) -> Finished:
    """Run ``argv`` to its end as its own process group; nothing of that group may outlive it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out, err = out_dir / "stdout", out_dir / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, start_new_session=True, env=env, cwd=cwd)
    try:
        code = finish(proc, what, timeout)
        left = group_members(proc.pid)
        assert not left, f"{what} ended but left processes in its group: {left}"
    finally:
        stop_group(proc)
    return Finished(code, out.read_text(), err.read_text())
