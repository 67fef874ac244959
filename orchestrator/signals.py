"""SIGTERM (a Jenkins abort, systemd stop) unwinds like Ctrl-C, so cleanup always runs."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from .errors import Interrupted


@contextmanager
def terminate_unwinds():
    """Turn SIGTERM/SIGHUP into an ``Interrupted`` exception in the main thread.

    Every mount, lock, temp file and child process is held in a context manager;
    raising here lets each of them undo its work on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}; cleaned up")

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
