"""Key ``guard.images[].syslog``: how an image's hosts send syslog to MariaDB (rsyslog's ommysql).

Every value lands inside a double-quoted RainerScript string (or a backtick ``cat`` of a path) in
``/etc/rsyslog.d/``: a quote, a backslash, a backtick, a ``$`` or a control character would end the
string or run something, so each string is held to a strict pattern and refused in one line naming
``guard.images[i].syslog.key``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import Between, Port, Size

SERVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")  # a DNS name, an IPv4 or an IPv6 address
DB_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")  # MariaDB allows 80 characters
HOST_FILE = re.compile(r"/[A-Za-z0-9._/-]+")
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
UNSAFE = re.compile(r"[\x00-\x1f\x7f\"'`\\$]")


def refuse_unsafe(value: str, key: str) -> None:
    """A character that would end a RainerScript (or SQL) string or start a command: refused, naming it."""
    found = UNSAFE.search(value)
    if found:
        char = found.group()
        what = {"\n": "a newline", "\r": "a carriage return", '"': "a double quote", "'": "a quote",
                "`": "a backtick", "\\": "a backslash", "$": "'$'"}.get(char, f"a control character ({char!r})")
        raise ConfigError(f"{key}: {_shown(value)} contains {what}, which would break out of a quoted value; refused")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def host_path(value: str, key: str) -> None:
    refuse_unsafe(value, key)
    if not HOST_FILE.fullmatch(value) or "/../" in value + "/" or value.endswith("/."):
        raise ConfigError(f"{key}: {_shown(value)} is not an absolute path (letters, digits, . _ - /)")


@dataclass(frozen=True)
class SyslogConfig:
    """Key ``guard.images[].syslog``: rsyslog on the image's hosts sends to ``server``'s MariaDB (``logs``).

    ``user`` (default ``syslog_<image>``) may only INSERT; its password (made by ``inv logs.setup`` or the
    first render) is read by rsyslog from ``password_file`` (mode 0600). Messages wait out a database
    outage in a disk-assisted queue under ``queue_dir``, at most ``queue_max_disk`` on disk.
    ``queue_batch``: messages per INSERT transaction; also what rsyslog 8.2302 loses when it is stopped
    while the database is down (the batch being retried), so 1 by default. ``queue_size``: messages held in
    memory (rsyslog's default, 1000) before the queue spills to disk, so a long outage is on disk early.
    """

    enabled: bool = False
    server: str = ""
    port: Port = 3306
    user: str = ""
    severity: Literal["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"] = "info"
    password_file: str = "/etc/rsyslog-ommysql.pwd"
    queue_dir: str = "/var/spool/rsyslog"
    queue_max_disk: Size = Size(1024**3)
    queue_size: Annotated[int, Between(100, 1_000_000)] = 1000  # in memory; beyond 90% spills to disk
    queue_batch: Annotated[int, Between(1, 1024)] = 1
    resume_interval: Annotated[int, Between(1, 3600)] = 10

    def check(self, key: str) -> None:
        for name in ("server", "user"):
            refuse_unsafe(getattr(self, name), f"{key}.{name}")
        if self.enabled and not self.server:
            raise ConfigError(f"{key}.server: required when syslog is enabled (the log server's address)")
        if self.server and not SERVER.fullmatch(self.server):
            raise ConfigError(f"{key}.server: {_shown(self.server)} is not a host name or an address")
        if self.user and not DB_USER.fullmatch(self.user):
            raise ConfigError(f"{key}.user: {_shown(self.user)} is not a database user name "
                              "(letters, digits, _ . -; at most 80)")
        host_path(self.password_file, f"{key}.password_file")
        host_path(self.queue_dir, f"{key}.queue_dir")
        if self.queue_max_disk < 1024**2:
            raise ConfigError(f"{key}.queue_max_disk: {self.queue_max_disk} bytes is less than 1M; "
                              "an outage would drop messages at once")

    def db_user(self, image: str) -> str:
        """The INSERT-only user: ``user``, or ``syslog_<image>`` (dots and dashes made underscores)."""
        return self.user or "syslog_" + re.sub(r"[^A-Za-z0-9_]", "_", image)

    @property
    def severity_number(self) -> int:
        return SEVERITIES[self.severity]


__all__ = ["SEVERITIES", "SyslogConfig", "host_path", "refuse_unsafe"]
