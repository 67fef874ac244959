"""A real MariaDB and a real rsyslogd for the logs tests and bench, never the system services.

* ``MariaDB``: ``mariadb-install-db --no-defaults`` into a scratch data directory once, then ``mariadbd
  --no-defaults`` with its own unix socket, a free loopback port, pid file and error log; ``up()`` and
  ``down()`` start and stop it (the same data directory), each run held by ``daemons.running`` (its own
  process group, stopped on every path). ``root`` talks to it over the socket with argv lists, SQL on stdin.
* ``Rsyslog``: ``rsyslogd -n`` with a main config of ours: imuxsock on a test socket (rate limit off),
  its own work directory and pid file, and our rendered snippet included; ``send`` writes datagrams to that
  socket (a full socket blocks the sender, so nothing is dropped on our side); every message also goes to
  ``all.log`` by omfile, which ``taken`` uses as a barrier (and the bench as a baseline).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from contextlib import ExitStack
from pathlib import Path

from children import wait_until
from daemons import free_port, running

ADMIN = ["mariadb", "--no-defaults", "--batch", "--skip-column-names"]


class MariaDB:
    """One scratch server: ``up()``/``down()`` any number of times on the same data."""

    def __init__(self, root: Path, bind: str = "127.0.0.1"):
        self.root = root
        self.bind = bind  # the address rsyslog reaches it on (a lab host's: our end of its veth pair)
        self.datadir = root / "data"
        self.socket = root / "db.sock"
        self.log = root / "db.err"
        self.port = free_port()
        self._run = ExitStack()
        self.install()

    def install(self) -> None:
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)

    def argv(self) -> list[str]:
        return ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", f"--bind-address={self.bind}", "--user=root", f"--pid-file={self.root}/db.pid",
                f"--log-error={self.log}", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2"]

    def up(self) -> "MariaDB":
        self._run.enter_context(running(self.argv(), what="mariadbd", ready=self.answers, log=self.root / "db.out",
                                        timeout=60))
        return self

    def down(self) -> None:
        self._run.close()
        self._run = ExitStack()

    def answers(self) -> bool:
        return subprocess.run(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
                              capture_output=True).returncode == 0

    def root_sql(self, sql: str, database: str = "") -> str:
        """``sql`` as root over the socket; the output (tab-separated, no headers)."""
        argv = [*ADMIN, f"--socket={self.socket}", "-uroot", *([database] if database else [])]
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise AssertionError(f"SQL failed: {done.stderr.strip()}")
        return done.stdout

    def count(self, where: str = "1", database: str = "Syslog") -> int:
        return int(self.root_sql(f"SELECT count(*) FROM SystemEvents WHERE {where};", database).strip())

    def as_user(self, user: str, password: str, sql: str, database: str = "Syslog") -> subprocess.CompletedProcess:
        """``sql`` as ``user`` over TCP (how a host's rsyslog connects); the password via a 0600 option file."""
        option = self.root / f"{user}.cnf"
        option.write_text(f"[client]\npassword={password}\n")
        option.chmod(0o600)
        argv = ["mariadb", f"--defaults-file={option}", "--batch", "-h127.0.0.1", f"-P{self.port}", f"-u{user}",
                database]
        return subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)

    def close(self) -> None:
        self.down()


MAIN_CONF = """\
global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" RateLimit.Interval="0" CreatePath="on")
include(file="{snippet}")
action(type="omfile" file="{all}")
"""


class Rsyslog:
    """rsyslogd with our snippet; ``up()``/``down()`` keep the work directory (the disk queue lives there)."""

    def __init__(self, root: Path, snippet: Path, main: str = MAIN_CONF):
        self.root = root
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.sock = root / "log.sock"
        self.conf = root / "rsyslog.conf"
        self.all = root / "all.log"
        self.conf.write_text(main.format(work=self.work, sock=self.sock, snippet=snippet, all=self.all))
        self.log = root / "rsyslogd.log"
        self._run = ExitStack()
        self._out: socket.socket | None = None
        self._markers = 0

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(["rsyslogd", "-N1", "-f", str(self.conf)], capture_output=True, text=True, timeout=60)

    def up(self) -> "Rsyslog":
        self.sock.unlink(missing_ok=True)
        argv = ["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.root / "rsyslogd.pid")]
        self.proc = self._run.enter_context(running(argv, what="rsyslogd", ready=self.sock.exists, log=self.log))
        return self

    def down(self) -> None:
        if self._out:
            self._out.close()
            self._out = None
        self._run.close()
        self._run = ExitStack()

    def send(self, tag: str, messages: list[str], facility_severity: int = 14) -> None:
        """One datagram per message, as ``logger`` would write it (<PRI>TAG: MSG)."""
        if self._out is None:
            self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._out.connect(str(self.sock))
        for message in messages:
            self._out.send(f"<{facility_severity}>{tag}: {message}".encode())

    def taken(self, tag: str = "barrier") -> None:
        """Until rsyslogd's main queue has handed every message sent so far to the actions: a marker sent now
        reaches ``all.log`` (one worker, in order) only after every earlier message was enqueued for ommysql."""
        marker = f"{tag}-{id(self)}-{self._markers}"
        self._markers += 1
        self.send(tag, [marker])
        wait_until(lambda: self.all.exists() and marker in self.all.read_text(errors="replace"),
                   f"rsyslogd wrote {marker} to all.log", poll=0.02)

    def close(self) -> None:
        self.down()


def rows_reach(db: MariaDB, where: str, count: int, timeout: float = 60, what=lambda: "") -> None:
    """Until ``count`` rows match ``where`` (an event: the rows are there), or fail naming how many came."""
    wait_until(lambda: db.count(where) >= count, lambda: f"{db.count(where)} of {count} rows where {where} {what()}",
               timeout=timeout, poll=0.1)


def schema_sql(database: str = "Syslog") -> str:
    """The schema as our package ships it (``logs.setup`` uses the same text)."""
    from orchestrator.logs.setup import schema

    return f"CREATE DATABASE IF NOT EXISTS `{database}`; USE `{database}`;\n" + schema()


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("mariadbd", "mariadb", "mariadb-install-db", "rsyslogd"))
