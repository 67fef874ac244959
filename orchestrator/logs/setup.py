"""``inv logs.setup``: the ``Syslog`` database with rsyslog's schema, and one INSERT-only user per image.

pyinfra's way: one read-only probe of the server (schemas, tables, accounts, whether each stored password
is the account's, every privilege each account holds), then only the steps that are missing, each said in
a line that holds no password. A rerun finds everything in place and says so. An account holding more
than INSERT on ``SystemEvents`` loses the rest: a host's rsyslog must not be able to read or delete logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from ..config.guard import GuardConfig
from ..config.logs import LogsConfig
from ..errors import ConfigError, OrchestratorError
from ..job import JobRun
from ..security.secrets import Secret
from .client import Client, identifier, literal, log_server
from .passwords import PASSWORD, password_for

TABLES = ("SystemEvents", "SystemEventsProperties")
INSERT_TABLE = "SystemEvents"  # ommysql's default template (StdDBFmt) writes only here


def schema() -> str:
    """rsyslog's schema as shipped with this package (every statement ``IF NOT EXISTS``)."""
    return resources.files(__package__).joinpath("schema.sql").read_text()


@dataclass(frozen=True)
class Account:
    user: str
    host: str
    password: Secret
    images: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{literal_quoted(self.user)}@{literal_quoted(self.host)}"

    @property
    def grantee(self) -> str:
        """As information_schema writes it: ``'user'@'host'``."""
        return f"'{self.user}'@'{self.host}'"


def literal_quoted(value: str) -> str:
    """An account part in quotes; our config allows no quote or backslash in user names or host patterns."""
    return "'" + value + "'"


def password_literal(password: Secret) -> str:
    """``IDENTIFIED BY`` takes a plain string literal only; our passwords are letters, digits, - and _ (checked)."""
    text = password.reveal()
    if not PASSWORD.fullmatch(text):
        raise OrchestratorError("a stored database password holds characters other than letters, digits, - and _; "
                                "delete it from logs.passwords_file to have a new one made")
    return f"'{text}'"


@dataclass
class Facts:
    database: bool = False
    tables: set[str] = field(default_factory=set)
    accounts: dict[str, bool] = field(default_factory=dict)  # grantee -> stored password matches
    privileges: dict[str, set[str]] = field(default_factory=dict)  # grantee -> {"INSERT on db.table", ...}


def accounts(run: JobRun, logs: LogsConfig) -> list[Account]:
    """One account per user name of the images with ``syslog.enabled`` (images may share one)."""
    guard: GuardConfig = run.section("guard")
    by_user: dict[str, list[str]] = {}
    for image in guard.images:
        if image.syslog.enabled:
            by_user.setdefault(image.syslog.db_user(image.name), []).append(image.name)
    return [Account(user, logs.user_host, password_for(run, user), tuple(images)) for user, images in by_user.items()]


def probe(client: Client, logs: LogsConfig, wanted: list[Account]) -> Facts:
    db = literal(logs.database)
    facts = Facts()
    sql = [f"SELECT 'db', SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {db};",
           f"SELECT 'table', TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db};"]
    for account in wanted:
        sql.append(f"SELECT 'account', {literal(account.grantee)}, authentication_string = "
                   f"PASSWORD({password_literal(account.password)}) FROM mysql.user "
                   f"WHERE User = {literal(account.user)} AND Host = {literal(account.host)};")
    grantees = ", ".join(literal(a.grantee) for a in wanted) or "''"
    sql += [f"SELECT 'priv', GRANTEE, PRIVILEGE_TYPE, '*', '*' FROM information_schema.USER_PRIVILEGES "
            f"WHERE GRANTEE IN ({grantees}) AND PRIVILEGE_TYPE <> 'USAGE';",
            f"SELECT 'priv', GRANTEE, PRIVILEGE_TYPE, TABLE_SCHEMA, '*' FROM information_schema.SCHEMA_PRIVILEGES "
            f"WHERE GRANTEE IN ({grantees});",
            f"SELECT 'priv', GRANTEE, PRIVILEGE_TYPE, TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLE_PRIVILEGES "
            f"WHERE GRANTEE IN ({grantees});"]
    for line in client.query("\n".join(sql), raw=True):
        kind, *rest = line.split("\t")
        if kind == "db":
            facts.database = True
        elif kind == "table":
            facts.tables.add(rest[0])
        elif kind == "account":
            facts.accounts[rest[0]] = rest[1] == "1"
        elif kind == "priv":
            facts.privileges.setdefault(rest[0], set()).add(f"{rest[1]} on {rest[2]}.{rest[3]}")
    return facts


def plan(logs: LogsConfig, facts: Facts, wanted: list[Account]) -> list[tuple[str, str]]:
    """``(what, sql)`` for each missing piece; ``what`` is shown, ``sql`` may hold a password and never is."""
    db = identifier(logs.database)
    steps: list[tuple[str, str]] = []
    if not facts.database:
        steps.append((f"create database {logs.database}", f"CREATE DATABASE IF NOT EXISTS {db};"))
    missing = [t for t in TABLES if t not in facts.tables]
    if missing:
        steps.append((f"create tables {', '.join(missing)} (rsyslog's schema)", f"USE {db};\n{schema()}"))
    insert_only = {f"INSERT on {logs.database}.{INSERT_TABLE}"}
    for account in wanted:
        password = password_literal(account.password)
        if account.grantee not in facts.accounts:
            steps.append((f"create user {account.grantee} (images {', '.join(account.images)})",
                          f"CREATE USER {account.name} IDENTIFIED BY {password};"))
        elif not facts.accounts[account.grantee]:
            steps.append((f"set the password of {account.grantee} to the stored one",
                          f"ALTER USER {account.name} IDENTIFIED BY {password};"))
        held = facts.privileges.get(account.grantee, set())
        if held - insert_only:
            steps.append((f"revoke from {account.grantee}: {', '.join(sorted(held - insert_only))}",
                          f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account.name};"))
            held = set()
        if insert_only - held:
            steps.append((f"grant {account.grantee} INSERT on {logs.database}.{INSERT_TABLE} only",
                          f"GRANT INSERT ON {db}.{identifier(INSERT_TABLE)} TO {account.name};"))
    return steps


def setup(run: JobRun) -> None:
    """Probe, then apply what is missing (``--dry``: say it, change nothing); proven by a second probe."""
    logs: LogsConfig = run.section("logs")
    wanted = accounts(run, logs)
    if not wanted:
        raise ConfigError("guard.images: no image has syslog.enabled; nothing would log into the database")
    with log_server(run, logs) as target:
        client = Client(target, logs, scrub=[a.password.reveal() for a in wanted])
        steps = plan(logs, probe(client, logs, wanted), wanted)
        for what, sql in steps:
            run.echo(("would " if run.dry else "") + what)
            client.change(sql)
        if steps and not run.dry:
            left = plan(logs, probe(client, logs, wanted), wanted)
            if left:
                raise OrchestratorError(f"{target.describe()}: still missing after setup: {left[0][0]}")
    if not steps:
        run.echo(f"{logs.database} on {logs.host or 'this box'}: already set up, nothing to do")
    run.report.summary["database"] = f"{logs.database} on {logs.host or 'this box'}"
    run.report.summary["users"] = ", ".join(a.grantee for a in wanted)
    run.report.summary["changes"] = len(steps)


__all__ = ["Account", "Facts", "accounts", "plan", "probe", "schema", "setup"]
