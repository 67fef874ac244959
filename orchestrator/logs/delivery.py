"""Proof that a host's syslog reaches the database: a line with a fresh token, logged on the host, read back
from ``SystemEvents`` on the log server (``inv harden``'s last syslog step)."""

from __future__ import annotations

import time
import uuid

from ..errors import OrchestratorError
from ..run import Target
from .client import Client, log_server
from .query import Filters, fetch

PROOF_S = 30  # a logger line's way through rsyslog's queue into SystemEvents
POLL_S = 0.5


def prove_delivery(run, target: Target, host_name: str) -> int:
    """``logger -t inv-harden TOKEN`` on ``target``, then the rows holding TOKEN (at least one) within
    ``PROOF_S``; one line naming what to look at when none came."""
    token = f"inv-harden-{uuid.uuid4().hex}"
    target.run(["logger", "-t", "inv-harden", "--", token])
    logs = run.section("logs")
    deadline = time.monotonic() + PROOF_S
    with log_server(run, logs) as server:
        client = Client(server, logs)
        while not (rows := fetch(client, logs, Filters(grep=token, since="1h", limit=5))):
            if time.monotonic() > deadline:
                raise OrchestratorError(f"the test line logged on {host_name} is not in SystemEvents after "
                                        f"{PROOF_S} s (is the database up, inv logs.setup run, the port open?)")
            time.sleep(POLL_S)
    return len(rows)


__all__ = ["PROOF_S", "prove_delivery"]
