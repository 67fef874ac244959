"""fail2ban-server with our rendered jail.local, in a throwaway network namespace (its bans are iptables
rules there, never on the host), reading a temp auth log with ``backend = polling``.

The config directory is a copy of the system's /etc/fail2ban plus our jail.local; one test-only file,
``jail.d/zz-test.local`` (read after jail.local), points the recidive jail's log at the temp directory
instead of /var/log/fail2ban.log. That a line did NOT ban is proven by an event: fail2ban reads the log
in order, so once a later address is banned, the lines before it were judged.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from children import wait_until
from guard_lab import rendered
from netns import checked_namespaces
from orchestrator.security import render

MAXRETRY = 3
IGNORED_NET = "198.51.100.0/24"
OLD = "{stamp} gentoo sshd[{pid}]: Failed password for root from {ip} port 40022 ssh2"
NEW = "{stamp} gentoo sshd-session[{pid}]: Failed password for invalid user bob from {ip} port 50522 ssh2"


class Fail2ban:
    def __init__(self, ns, tmp: Path):
        self.ns, self.tmp = ns, tmp
        self.log = tmp / "auth.log"
        self.log.write_text("")
        guard = rendered(tmp, fail2ban={"backend": "polling", "logpath": str(self.log), "maxretry": MAXRETRY,
                                        "ignoreip": [IGNORED_NET]})
        self.conf = tmp / "etc-fail2ban"
        shutil.copytree("/etc/fail2ban", self.conf)
        shutil.copy(guard.path(render.JAIL_LOCAL), self.conf / "jail.local")
        (tmp / "fail2ban.log").write_text("")
        (self.conf / "jail.d" / "zz-test.local").write_text(f"[recidive]\nlogpath = {tmp}/fail2ban.log\n")
        (self.conf / "fail2ban.local").write_text(f"[Definition]\ndbfile = {tmp}/fail2ban.sqlite3\n")
        self.pid = 100

    def start(self) -> None:
        subprocess.run(["fail2ban-client", "-c", str(self.conf), "-t"], check=True, capture_output=True)
        out, sock = self.tmp / "server.out", self.tmp / "f2b.sock"
        self.ns.running(["fail2ban-server", "-f", "-x", "-c", str(self.conf), "-s", str(sock),
                         "-p", str(self.tmp / "f2b.pid"), "--logtarget", str(self.tmp / "fail2ban.log")],
                        what="fail2ban-server", log=out, timeout=30, ready=lambda: self.jail_up())

    def jail_up(self) -> bool:
        """Its own log says the jail started (the iptables chain appears only with the first ban)."""
        return "Jail 'sshd' started" in (self.tmp / "fail2ban.log").read_text()

    def fail(self, ip: str, form: str, times: int) -> None:
        with self.log.open("a") as log:
            for _ in range(times):
                self.pid += 1
                log.write(form.format(stamp=time.strftime("%b %d %H:%M:%S"), pid=self.pid, ip=ip) + "\n")

    def banned(self) -> set[str]:
        rules = self.ns.run("iptables", "-S", "f2b-sshd", check=False).stdout.splitlines()
        return {line.split()[3].split("/")[0] for line in rules if line.startswith("-A f2b-sshd -s ")}

    def wait_banned(self, ip: str) -> None:
        wait_until(lambda: ip in self.banned(), lambda: f"{ip} not banned; banned: {self.banned()}", timeout=20)


@pytest.fixture
def f2b(tmp_path):
    with checked_namespaces() as new:
        made = Fail2ban(new(), tmp_path)
        made.start()
        yield made


@pytest.mark.parametrize("form", [OLD, NEW], ids=["sshd", "sshd-session"])
def test_maxretry_fresh_failures_ban_in_the_old_and_new_openssh_formats(f2b, form):
    f2b.fail("203.0.113.9", form, MAXRETRY - 1)
    f2b.fail("203.0.113.50", form, MAXRETRY)  # the event: a later address banned, so the lines above were read
    f2b.wait_banned("203.0.113.50")
    assert "203.0.113.9" not in f2b.banned()  # one short of maxretry
    f2b.fail("203.0.113.9", form, 1)
    f2b.wait_banned("203.0.113.9")


def test_an_ignoreip_address_is_never_banned(f2b):
    f2b.fail("198.51.100.7", OLD, MAXRETRY * 2)
    f2b.fail("198.51.100.7", NEW, MAXRETRY * 2)
    f2b.fail("203.0.113.77", NEW, MAXRETRY)
    f2b.wait_banned("203.0.113.77")
    assert f2b.banned() == {"203.0.113.77"}
