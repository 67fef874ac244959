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
        error = Interrupted(f"stopped by {signal.Signals(signum).name}; cleaned up")
        error.signal_name = signal.Signals(signum).name
        raise error

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def held_signals():
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends, then deliver the first one.

    For the few statements that must not be cut in two: start a daemon *and*
    register its stop, so an interruption can never leave it running unowned.
    Keep such blocks short; outside the main thread it does nothing (Python
    runs signal handlers in the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])  # now handled as it would have been: Interrupted, KeyboardInterrupt
