"""``inv fleet.check``: reach every chosen host at once and say what it is."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..config import FleetConfig
from ..job import JobRun
from .facts import HostFacts, gather
from .hosts import select_hosts
from .runner import run_on_hosts


def check(run: JobRun, names: Sequence[str], option: str = "--hosts") -> dict[str, HostFacts]:
    """One summary line per host, every host's facts in the report; fails (exit 1) when any host did not
    answer, after the others have."""
    cfg: FleetConfig = run.section("fleet")
    hosts = select_hosts(cfg, names, option=option)
    results = run_on_hosts(run, hosts, lambda host, remote: gather(remote, host), what="gather facts")
    facts = run.report.summary.setdefault("facts", {})
    for host in hosts:
        if host.name in results.succeeded:
            found = results.succeeded[host.name]
            run.report.summary[host.name] = found.line()
            facts[host.name] = dataclasses.asdict(found)
        else:
            run.report.summary[host.name] = f"UNREACHABLE: {results.failed[host.name]}"
    results.raise_if_failed("answer")
    return results.succeeded


__all__ = ["check"]
