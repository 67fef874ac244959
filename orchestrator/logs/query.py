"""``inv logs``: rows of ``SystemEvents`` as a table (or JSON lines), newest last.

Read as the admin (``logs`` section), never as a host's INSERT-only user. Filters reach SQL only as hex
literals (``client.literal``), so a ``--grep`` holding quotes, backslashes or ``;`` is just a pattern.
``--since``: ``90s``, ``30m``, ``1h``, ``2d``, ``1w`` (relative to the server's clock, the clock rsyslog's
timestamps were converted with) or an ISO date/time (the server's local time, as stored).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from ..config.logs import LogsConfig
from ..errors import ConfigError
from ..job import JobRun
from .client import Client, identifier, literal, log_server

RELATIVE = re.compile(r"([0-9]{1,7})([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_LIMIT = 100_000
COLUMNS = ("ID", "ReceivedAt", "FromHost", "SysLogTag", "Message")


@dataclass(frozen=True)
class Filters:
    host: str = ""
    since: str = ""
    grep: str = ""
    limit: int = 50


def since_condition(since: str) -> str:
    """``ReceivedAt >= ...`` for ``--since``; a bad value is one line naming the flag."""
    match = RELATIVE.fullmatch(since.strip())
    if match:
        seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
        return f"ReceivedAt >= NOW() - INTERVAL {seconds} SECOND"
    try:
        moment = datetime.fromisoformat(since.strip())
    except ValueError:
        raise ConfigError(f"--since: {since!r} is not a duration like 1h or 2d, nor a date like 2026-11-27T10:00")
    return f"ReceivedAt >= '{moment.strftime('%Y-%m-%d %H:%M:%S')}'"


def select_sql(logs: LogsConfig, filters: Filters) -> str:
    """The newest ``limit`` matching rows, oldest first, one JSON object per line."""
    if not 0 < filters.limit <= MAX_LIMIT:
        raise ConfigError(f"--limit: {filters.limit} is not between 1 and {MAX_LIMIT}")
    where = ["1"]
    if filters.host:
        where.append(f"FromHost = {literal(filters.host)}")
    if filters.since:
        where.append(since_condition(filters.since))
    if filters.grep:
        where.append(f"TRIM(LEADING ' ' FROM Message) REGEXP {literal(filters.grep)}")  # ^ at the message's start
    row = ", ".join(f"'{c}', {c}" for c in COLUMNS)
    table = f"{identifier(logs.database)}.{identifier('SystemEvents')}"
    return (f"SELECT j FROM (SELECT ID, JSON_OBJECT({row}) AS j FROM {table} WHERE {' AND '.join(where)} "
            f"ORDER BY ID DESC LIMIT {filters.limit}) AS newest ORDER BY ID;")


def fetch(client: Client, logs: LogsConfig, filters: Filters) -> list[dict]:
    rows = [json.loads(line) for line in client.query(select_sql(logs, filters), raw=True) if line.strip()]
    for row in rows:
        row["Message"] = (row.get("Message") or "").lstrip(" ")  # rsyslog stores the space after the tag
    return rows


def table(rows: list[dict]) -> list[str]:
    """Fixed columns; the message last and whole (control characters shown escaped)."""
    shown = [[_cell(row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(COLUMNS[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS[:-1], widths)) + "  " + COLUMNS[-1]]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in shown]
    return lines


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.encode("unicode_escape").decode("ascii") if any(ord(ch) < 32 for ch in text) else text


def show(run: JobRun, filters: Filters, as_json: bool = False) -> None:
    """Print the rows (stdout); the count goes to the summary."""
    logs: LogsConfig = run.section("logs")
    with log_server(run, logs) as target:
        rows = fetch(Client(target, logs), logs, filters)
    for line in ([json.dumps(row, sort_keys=True) for row in rows] if as_json else table(rows)):
        run.echo(line)
    run.report.summary["rows"] = len(rows)


__all__ = ["Filters", "fetch", "select_sql", "show", "since_condition", "table"]
