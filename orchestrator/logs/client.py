"""The ``mariadb`` client on the log server: argv lists, SQL on stdin, values as hex literals.

Where it runs: this box (``logs.host`` empty) or the log server over SSH (``fleet.connect``). How it
connects: ``logs.socket`` or ``logs.address``/``port``, as ``logs.admin_user``, with
``--defaults-extra-file`` when ``logs.admin_defaults_file`` is set; never a password on the command line.
Every value we did not write ourselves reaches SQL as ``X'hex'`` (``literal``), which no quote, backslash
or SQL mode can break out of. Errors are one line with every password we know of scrubbed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..config.logs import LogsConfig
from ..errors import OrchestratorError
from ..run import Target

CLIENT_TIMEOUT_S = 120


def literal(value: str) -> str:
    """``value`` as a utf8mb4 string in SQL, whatever it holds."""
    return f"CONVERT(X'{value.encode().hex()}' USING utf8mb4)" if value else "''"


def identifier(name: str) -> str:
    """A database, table or column name in backticks (our config allows only letters, digits and _)."""
    return "`" + name.replace("`", "``") + "`"


def client_argv(logs: LogsConfig, *extra: str) -> list[str]:
    argv = [logs.client]
    if logs.admin_defaults_file:
        argv.append(f"--defaults-extra-file={logs.admin_defaults_file}")
    if logs.socket:
        argv.append(f"--socket={logs.socket}")
    elif logs.address:
        argv += [f"--host={logs.address}", f"--port={logs.port}", "--protocol=TCP"]
    return [*argv, f"--user={logs.admin_user}", "--batch", "--skip-column-names", *extra]


class Client:
    """Runs SQL as the admin on ``target``; ``scrub`` words never reach an error line."""

    def __init__(self, target: Target, logs: LogsConfig, scrub: Iterable[str] = ()):
        self.target = target
        self.logs = logs
        self.scrub = [form for word in scrub if word for form in (word, word.encode().hex())]

    def query(self, sql: str, *, raw: bool = False) -> list[str]:
        """Read-only SQL (runs under ``--dry`` too); the output lines."""
        return self._run(sql, mutates=False, raw=raw).splitlines()

    def change(self, sql: str) -> None:
        """SQL that changes the server; under ``--dry`` only the client's argv is printed, never the SQL."""
        self._run(sql, mutates=True)

    def _run(self, sql: str, *, mutates: bool, raw: bool = False) -> str:
        argv = client_argv(self.logs, *(["--raw"] if raw else []))
        result = self.target.run(argv, input=sql, check=False, mutates=mutates, timeout=CLIENT_TIMEOUT_S)
        if result.returncode:
            raise OrchestratorError(f"{self.target.describe()}: {self.logs.client} exited {result.returncode}: "
                                    f"{self._scrubbed(result.stderr or result.stdout)}")
        return result.stdout

    def _scrubbed(self, output: str) -> str:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        text = " | ".join(lines[-2:]) or "no output"
        for word in self.scrub:
            text = text.replace(word, "<password>")
        return text


@contextmanager
def log_server(run, logs: LogsConfig) -> Iterator[Target]:
    """This box's target, or an SSH connection to ``logs.host`` closed after the block."""
    if not logs.host:
        yield run.local()
        return
    from ..fleet.hosts import connect

    host = run.section("fleet").host(logs.host)  # strict config checked it is there
    with connect(run, host) as remote:
        yield remote


__all__ = ["Client", "client_argv", "identifier", "literal", "log_server"]
