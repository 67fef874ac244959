"""One job on many hosts at once: a worker thread per host up to a limit, each with its own connection.

A host whose job fails (an ``OrchestratorError``, or an SSH or socket error, as one line) is reported and
the others go on. Ctrl-C or SIGTERM (``Interrupted``, from ``signals.terminate_unwinds``) reaches only the
main thread, which waits here; it then cancels the hosts not started, aborts every open connection (which
kills the remote commands still running and unblocks their workers), waits for the workers (bounded) and
raises on, so the job's own cleanup runs as for any interruption.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import paramiko

from ..config import FleetConfig, HostConfig
from ..errors import Interrupted, OrchestratorError
from ..job import JobRun
from ..run import RemoteTarget
from ..signals import held_signals
from .hosts import connect

T = TypeVar("T")

ABORT_WAIT = 30.0  # the most an interrupted run waits for its workers (each abort is bounded on its own)
_HOST_FAILURES = (OrchestratorError, OSError, EOFError, paramiko.SSHException)


@dataclass
class HostResults(Generic[T]):
    """What a job returned on each host that succeeded; a one-line reason for each that failed."""

    succeeded: dict[str, T] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def raise_if_failed(self, what: str) -> None:
        """``2 of 8 host(s) failed to <what>: a: ...; b: ...``, when any did."""
        if self.failed:
            total = len(self.succeeded) + len(self.failed)
            reasons = "; ".join(f"{name}: {why}" for name, why in self.failed.items())
            raise OrchestratorError(f"{len(self.failed)} of {total} host(s) failed to {what}: {reasons}")


def run_on_hosts(run: JobRun, hosts: Sequence[HostConfig], job: Callable[[HostConfig, RemoteTarget], T], *,
                 what: str, limit: int | None = None,
                 echo_for: Callable[[HostConfig], Callable[[str], None]] | None = None) -> HostResults[T]:
    """Run ``job(host, remote)`` on every host, at most ``limit`` (default ``fleet.parallel``) at once.

    Each job gets its own connection (``connect``), closed after it. The outcome of each host is said as
    progress, kept in ``run.report.summary["hosts"]`` and returned in inventory order. ``echo_for`` gives
    a host's target its echo (default: the run's, each line prefixed with ``<name>: ``).
    """
    cfg: FleetConfig = run.section("fleet")
    crew = _Crew(run, what, job, echo_for)
    if not hosts:
        return HostResults()
    executor = ThreadPoolExecutor(max_workers=min(limit or cfg.parallel, len(hosts)),
                                  thread_name_prefix=f"fleet-{what.replace(' ', '-')}")
    futures = [executor.submit(crew.work, host) for host in hosts]
    try:
        wait(futures)
    except BaseException:
        with held_signals():  # a second Ctrl-C waits until every connection is aborted
            crew.abort(executor, futures)
            crew.mark_unfinished(hosts)
        raise
    executor.shutdown(wait=True)
    for future in futures:
        future.result()  # a bug in a job (not a host's failure) surfaces here, with its traceback
    return crew.results(hosts)


class _Crew:
    """The state the workers share with the main thread: open targets, outcomes, and the abort."""

    def __init__(self, run: JobRun, what: str, job: Callable, echo_for: Callable | None):
        self.run, self.what, self.job = run, what, job
        self.echo_for = echo_for or self._prefixed_echo
        self.lock = threading.Lock()
        self.active: set[RemoteTarget] = set()
        self.aborting = False
        self.succeeded: dict[str, object] = {}
        self.failed: dict[str, str] = {}

    def _prefixed_echo(self, host: HostConfig) -> Callable[[str], None]:
        return lambda line: self.run.echo(f"{host.name}: {line}")

    def work(self, host: HostConfig) -> None:
        self.run.progress.say(f"{host.name}: {self.what}")
        try:
            with self._opened(connect(self.run, host, echo=self.echo_for(host))) as remote:
                value = self.job(host, remote)
        except _HOST_FAILURES as exc:
            self._record(host, None, "interrupted" if self.aborting else one_line(exc))
        else:
            self._record(host, value, None)

    @contextmanager
    def _opened(self, remote: RemoteTarget) -> Iterator[RemoteTarget]:
        with self.lock:
            if self.aborting:
                raise Interrupted("interrupted before it started")
            self.active.add(remote)
        try:
            with remote:
                yield remote
        finally:
            with self.lock:
                self.active.discard(remote)

    def _record(self, host: HostConfig, value, reason: str | None) -> None:
        hosts = self.run.report.summary.setdefault("hosts", {})
        with self.lock:
            if reason is None:
                self.succeeded[host.name] = value
                hosts[host.name] = "ok"
            else:
                self.failed[host.name] = reason
                hosts[host.name] = f"FAILED: {reason}"
        if reason is None:
            self.run.progress.say(f"{host.name}: {self.what}: ok")
        else:
            self.run.progress.warn(f"{host.name}: {reason}")

    def abort(self, executor: ThreadPoolExecutor, futures: list[Future]) -> None:
        """Cancel what has not started; abort every open target at once (each kills its remote commands,
        then closes its connection); then wait for the workers, at most ``ABORT_WAIT`` seconds."""
        with self.lock:
            self.aborting = True
            active = list(self.active)
        executor.shutdown(wait=False, cancel_futures=True)
        aborts = [threading.Thread(target=_abort_quietly, args=(remote,), name="fleet-abort") for remote in active]
        for thread in aborts:
            thread.start()
        deadline = time.monotonic() + ABORT_WAIT
        for thread in aborts:
            thread.join(max(0.0, deadline - time.monotonic()))
        # a future cancelled by shutdown() never counts as done for wait(): leave those out
        started = [future for future in futures if not future.cancelled()]
        wait(started, timeout=max(0.0, deadline - time.monotonic()))
        left = [future for future in started if not future.done()]
        if left:
            self.run.progress.warn(f"{len(left)} host worker(s) still busy after {ABORT_WAIT:.0f} s")

    def mark_unfinished(self, hosts: Sequence[HostConfig]) -> None:
        """After an interruption: a host with no outcome yet is reported as interrupted."""
        summary = self.run.report.summary.setdefault("hosts", {})
        with self.lock:
            for host in hosts:
                if host.name not in self.succeeded and host.name not in self.failed:
                    summary[host.name] = "FAILED: interrupted"

    def results(self, hosts: Sequence[HostConfig]) -> HostResults:
        order = [host.name for host in hosts]
        return HostResults({name: self.succeeded[name] for name in order if name in self.succeeded},
                           {name: self.failed[name] for name in order if name in self.failed})


def _abort_quietly(remote: RemoteTarget) -> None:
    try:
        remote.abort()
    except Exception:  # noqa: BLE001 - the interruption is what gets reported; the next abort goes on
        pass


def one_line(exc: BaseException) -> str:
    """An error as the one line a report holds: an OrchestratorError's own message; else its type and text."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, OrchestratorError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["HostResults", "one_line", "run_on_hosts"]
