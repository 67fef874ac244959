"""One lock per job (and per chroot): a second run refuses with a clear message."""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError


@contextmanager
def held_lock(path: Path, what: str):
    """Hold an flock on ``path`` for the duration; refuse at once if another holds it.

    The kernel drops an flock when its holder dies, even after ``kill -9``, so a
    stale lock file never blocks the next run: only a live holder does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is already running ({_holder(fd)}); lock file {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time(), "what": what}).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} since {since}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
