"""Section ``logs``: the log server, where rsyslog's MariaDB database lives, and how we administer it.

``inv logs.setup`` and ``inv logs`` run the ``mariadb`` client on the log server: this box when ``host``
is empty, else that ``fleet.hosts`` entry over SSH. The admin connection never carries a password on a
command line: over the server's unix socket, root is let in by ``unix_socket`` authentication (Debian's
and Gentoo's default), or ``admin_defaults_file`` names an option file on the log server (mode 0600,
``[client]`` with ``password=``) that the client reads itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .syslog import SERVER, _shown, host_path, refuse_unsafe
from .validator import Port

IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}")
ADMIN_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
USER_HOST = re.compile(r"[A-Za-z0-9.%_:-]{1,255}")
CLIENT = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class LogsConfig:
    """Key ``logs``: the log server's database and the admin connection ``logs.setup`` and ``inv logs`` use.

    ``user_host``: the host part of each image's INSERT-only account (``%``: any; ``10.0.%``: the VPC).
    ``passwords_file``: the INSERT-only users' passwords (mode 0600; default ``<state_dir>/logs/passwords.json``).
    """

    host: str = ""
    client: str = "mariadb"
    socket: str = ""
    address: str = ""
    port: Port = 3306
    admin_user: str = "root"
    admin_defaults_file: str = ""
    database: str = "Syslog"
    user_host: str = "%"
    passwords_file: Path | None = None

    def check(self, key: str) -> None:
        for name in ("host", "client", "address", "admin_user", "database", "user_host"):
            refuse_unsafe(getattr(self, name), f"{key}.{name}")
        for name in ("socket", "admin_defaults_file"):
            if getattr(self, name):
                host_path(getattr(self, name), f"{key}.{name}")
        rules = {"database": (IDENTIFIER, "a database name (letters, digits, _)"),
                 "admin_user": (ADMIN_USER, "a database user name"),
                 "user_host": (USER_HOST, "a MariaDB host pattern like % or 10.0.%"),
                 "client": (CLIENT, "a client program like mariadb or /usr/bin/mysql")}
        for name, (pattern, what) in rules.items():
            if not pattern.fullmatch(getattr(self, name)):
                raise ConfigError(f"{key}.{name}: {_shown(getattr(self, name))} is not {what}")
        if self.address and not SERVER.fullmatch(self.address):
            raise ConfigError(f"{key}.address: {_shown(self.address)} is not a host name or an address")

    def check_hosts(self, names: list[str]) -> None:
        if self.host and self.host not in names:
            raise ConfigError(f"logs.host: no host {self.host!r} in fleet.hosts")


__all__ = ["LogsConfig"]
