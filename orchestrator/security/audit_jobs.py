"""``inv audit-report``: what a login uid ran and touched on a host, from its audit log, streamed.

On the host, ``ausearch --raw`` selects the records (``-ul`` the login uid, ``-ts`` the start) and prints
them in the kernel's format, each event's records together; they come back over SSH line by line
(``RemoteTarget.stream_lines``) into ``audit_report.Report``, so neither side holds the log. ``--file``
reads a log on this box instead (a copy, or the tests' fixtures), through the same ``ausearch``.

Times: ausearch reads ``-ts`` in its locale's ``%x`` and local time; we run it with ``LC_ALL=C TZ=UTC``
and give it ``MM/DD/YY HH:MM:SS`` in UTC, so ``1h``, ``2d`` and ISO timestamps mean the same on every host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..errors import CommandError, ConfigError
from ..fleet import run_on_hosts, select_hosts
from ..job import JobRun
from .audit_report import Report, SyscallNames, as_dict, text_lines

AUSEARCH_ENV = {"LC_ALL": "C", "TZ": "UTC"}
KEYWORDS = {"now", "recent", "boot", "today", "yesterday", "this-week", "week-ago", "this-month", "this-year"}
RELATIVE = re.compile(r"([0-9]+)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
LOCAL = "local"  # the HOST word for --file: invoke has no optional positional arguments
NO_MATCHES = "<no matches>"  # ausearch's stderr, exit 1, when nothing matched (with --raw: exit 1, silent)


def since_args(since: str, now: datetime | None = None) -> list[str]:
    """``--since`` as ausearch's ``-ts`` words: a keyword as it is, ``90m``/``1h``/``2d``/``1w`` before now,
    or an ISO 8601 time (no offset: UTC); one line naming ``--since`` otherwise."""
    if since in KEYWORDS:
        return ["-ts", since]
    relative = RELATIVE.fullmatch(since)
    if relative:
        start = (now or datetime.now(timezone.utc)) - timedelta(**{UNITS[relative.group(2)]: int(relative.group(1))})
    else:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise ConfigError(f"--since: {since!r} is not 1h, 2d, an ISO time like 2026-11-27T08:00 or one of "
                              f"{', '.join(sorted(KEYWORDS))}") from None
        start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    utc = start.astimezone(timezone.utc)
    return ["-ts", utc.strftime("%m/%d/%y"), utc.strftime("%H:%M:%S")]


def ausearch_argv(*, log: str | None = None, auid: int | None = None, since: str | None = None,
                  now: datetime | None = None) -> list[str]:
    """``ausearch --raw`` over ``log`` (default: the logs auditd.conf names), for one login uid, from a time."""
    argv = ["ausearch", "--raw", *(["-if", log] if log else ["--input-logs"])]
    if auid is not None:
        argv += ["-ul", str(auid)]
    if since:
        argv += since_args(since, now)
    return argv


def check_ausearch(status: int, stderr: str, argv: Sequence[str], where: str) -> None:
    """Exit 1 with nothing on stderr but ``<no matches>`` is an empty report (``--raw`` says nothing at all);
    exit 1 with a reason (``Error parsing start date``, ``stat: No such file``) or any other status fails."""
    if status == 0 or (status == 1 and not stderr.replace(NO_MATCHES, "").strip()):
        return
    raise CommandError(list(argv), status, stderr, where)


@contextmanager
def local_lines(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[Iterator[bytes]]:
    """``argv`` on this box, its stdout line by line; stderr kept in a temporary file (it cannot block)."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, bufsize=1024 * 1024)
        try:
            yield iter(process.stdout)
            while process.stdout.read(1024 * 1024):
                pass
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        errors.seek(0)
        check_ausearch(process.returncode, errors.read()[-4096:].decode("utf-8", "replace"), argv, "local")


def report_local(path: str | Path, *, auid: int | None = None, since: str | None = None) -> Report:
    """A log file on this box, through ausearch like a host's."""
    argv = ausearch_argv(log=str(path), auid=auid, since=since)
    report = Report(auid)
    with local_lines(argv, AUSEARCH_ENV) as lines:
        report.feed_all(lines)
    return report


def report_remote(remote, *, log: str | None = None, auid: int | None = None, since: str | None = None) -> Report:
    argv = ausearch_argv(log=log, auid=auid, since=since)
    report = Report(auid)
    try:
        with remote.stream_lines(argv, env=AUSEARCH_ENV) as lines:
            report.feed_all(lines)
    except CommandError as exc:
        check_ausearch(exc.returncode, exc.output, argv, remote.describe())
    return report


def audit_report(run: JobRun, host: str, *, auid: int | None = None, since: str | None = None,
                 json_path: str | None = None, log: str | None = None, file: str | None = None,
                 top: int = 20) -> Report:
    """The job: one fleet host (``log``: a file on it instead of its logs), or ``local`` and a ``file`` here; the seed's
    tables on stdout, the whole report in the run report and, with ``json_path``, in that file."""
    if (host == LOCAL) != bool(file):
        raise ConfigError(f"HOST: give a host from fleet.hosts, or {LOCAL} with --file LOG (a log on this box)")
    if since:
        since_args(since)  # a bad --since is a setting's error before any connection
    if file:
        report = report_local(file, auid=auid, since=since)
    else:
        hosts = select_hosts(run.section("fleet"), [host], option="HOST")
        if len(hosts) != 1:
            raise ConfigError(f"HOST: {host!r} is {len(hosts)} hosts; audit-report reads one host's log")
        results = run_on_hosts(run, hosts, lambda _h, remote: report_remote(remote, log=log, auid=auid,
                                                                          since=since), what="read audit log")
        results.raise_if_failed("read the audit log")
        report = results.succeeded[hosts[0].name]
    names = SyscallNames()
    for line in text_lines(report, top=top, names=names):
        run.echo(line)
    data = as_dict(report, top=top, names=names)
    run.report.summary.update({"events": report.events, "records": report.records, "audit": data})
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
    return report


__all__ = ["audit_report", "ausearch_argv", "local_lines", "report_local", "report_remote", "since_args"]
