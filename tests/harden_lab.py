"""A host to harden for real: an sshd in a throwaway network namespace with a private copy of the system.

The sshd (``netns_lab``) starts in a mount namespace of its own where ``/etc``, ``/var/lib``, ``/var/log``,
``/var/spool``, ``/run`` and ``/dev`` are overlays on this machine's: everything ``inv harden`` writes over
SSH (knockd.conf, jail.local, rules-save, the dead-man switch's jobs, rsyslog's queue) and every daemon's
pid file and socket (rsyslog's ``/dev/log`` too) land in the lab's upper directories (``LabHost.path``),
never in this machine's own. The firewall is the namespace's.

OpenRC cannot run here, so ``/usr/local/sbin`` (first on root's PATH) holds small stand-ins:
``rc-service NAME start|stop|restart|status`` runs the real knockd, fwknopd and fail2ban-server, and
``rc-update add NAME default`` makes the ``/etc/runlevels/default/NAME`` link OpenRC's would. Every
process they start is in the namespace, so it goes with it (``netns_lab`` kills the namespace's pids).

The kernel's audit is not namespaced: rules loaded in a test would be this machine's. So ``augenrules``
and ``auditctl`` are stand-ins too: ``augenrules --load`` runs the real augenrules WITHOUT ``--load``
(it only merges rules.d into the lab's /etc/audit/audit.rules) and then "loads" the merged rule lines
into a file, the lab's kernel; ``auditctl -l`` lists that file ("No rules" when empty), ``-s`` says
``enabled 2`` once a loaded file held ``-e 2`` (or ``/run/lab-audit-locked`` exists), else 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netns_lab import SSH_PORT, NetnsHost, netns_host

OVERLAID = ("etc", "var/lib", "var/log", "var/spool", "run", "dev")

MOUNTS = r"""
set -e
lab=$1; shift
for d in etc var/lib var/log var/spool run dev; do
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$lab/upper/$d,workdir=$lab/work/$d" "/$d"
done
mount --bind "$lab/sbin" /usr/local/sbin
exec "$@"
"""

RC_SERVICE = r"""#!/bin/sh
# The harden lab's stand-in for OpenRC's rc-service: the real daemons, started and stopped by pid file.
name=$1 action=$2
pidfile=/run/lab-$name.pid
alive() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
start() {
    case $name in
        knock) knockd -d -c /etc/knockd.conf -p "$pidfile" -g /var/log/knockd.log ;;
        fwknopd) fwknopd -p "$pidfile" ;;
        fail2ban) fail2ban-client -x start >/dev/null && sed -n 1p /run/fail2ban/fail2ban.pid > "$pidfile" ;;
        rsyslog) rsyslogd -i "$pidfile" ;;
        *) echo "rc-service: no service $name" >&2; exit 1 ;;
    esac
    n=0
    until alive; do n=$((n + 1)); [ "$n" -gt 100 ] && { echo "$name did not start" >&2; exit 1; }; sleep 0.05; done
}
stop() {
    alive || return 0
    pid=$(cat "$pidfile")
    if [ "$name" = fail2ban ]; then fail2ban-client stop >/dev/null 2>&1 || kill "$pid"; else kill "$pid"; fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$pidfile"
}
case $action in
    start) alive || start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) alive ;;
    *) echo "rc-service: unknown action $action" >&2; exit 1 ;;
esac
"""

AUGENRULES = r"""#!/bin/sh
# The harden lab's augenrules: the real one merges (never --load: that would be this machine's kernel).
[ "$1" = --load ] || { echo "lab augenrules: only --load" >&2; exit 1; }
[ -e /run/lab-audit-locked ] && { echo "lab augenrules: rules are locked" >&2; exit 1; }
/usr/sbin/augenrules >/dev/null || exit 1
grep -E '^-(a|A|w) ' /etc/audit/audit.rules > /run/lab-audit.loaded || true
grep -qE '^-e 2' /etc/audit/audit.rules && : > /run/lab-audit-locked
exit 0
"""

AUDITCTL = r"""#!/bin/sh
# The harden lab's auditctl: answers -l and -s from the lab's "kernel" (files under /run); nothing else.
case $1 in
    -l) if [ -s /run/lab-audit.loaded ]; then cat /run/lab-audit.loaded; else echo "No rules"; fi ;;
    -s) if [ -e /run/lab-audit-locked ]; then echo "enabled 2"; else echo "enabled 1"; fi ;;
    *) echo "lab auditctl: only -l and -s" >&2; exit 1 ;;
esac
"""

# A host's own rsyslog.conf for the lab: no imklog (it would read this machine's kernel log), /dev/log in
# the lab's own /dev, and the snippets harden installs.
RSYSLOG_CONF = """\
global(workDirectory="/var/spool/rsyslog")
module(load="imuxsock")
include(file="/etc/rsyslog.d/*.conf" mode="optional")
*.* action(type="omfile" file="/var/log/lab-syslog")
"""

RC_UPDATE = r"""#!/bin/sh
# The harden lab's stand-in for OpenRC's rc-update add NAME RUNLEVEL: the runlevel link, as OpenRC makes it.
[ "$1" = add ] || { echo "rc-update: only add" >&2; exit 1; }
mkdir -p "/etc/runlevels/$3" && ln -sfn "/etc/init.d/$2" "/etc/runlevels/$3/$2"
"""


@dataclass(frozen=True)
class LabHost:
    net: NetnsHost
    lab: Path

    def path(self, host_path: str) -> Path:
        """Where a file the host wrote is, seen from here (its overlay's upper directory)."""
        return self.lab / "upper" / host_path.lstrip("/")

    def fleet_entry(self, name: str) -> dict:
        server = self.net.server
        return {"name": name, "host": server.host, "port": server.port, "user": server.user,
                "key_filename": server.key_filename, "known_hosts": server.known_hosts, "connect_timeout": 5}

    def image(self, name: str, hosts: list[str], **settings) -> dict:
        """A ``guard.images`` entry that fits this host (its SSH port; its interface is eth0, the default)."""
        return {"name": name, "hosts": hosts, "ssh_port": SSH_PORT, "firewall": {"confirm_window": 8}, **settings}


@contextmanager
def lab_host(tmp: Path, files: dict[str, str] | None = None) -> Iterator[LabHost]:
    """The host; ``files`` (host path -> text, under the overlaid trees) are there from the start."""
    lab = tmp / "lab"
    for d in OVERLAID:
        (lab / "upper" / d).mkdir(parents=True)
        (lab / "work" / d).mkdir(parents=True)
    (lab / "upper/var/log/auth.log").write_text("")
    for path, text in (files or {}).items():
        (lab / "upper" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (lab / "upper" / path.lstrip("/")).write_text(text)
    sbin = lab / "sbin"
    sbin.mkdir()
    stand_ins = {"rc-service": RC_SERVICE, "rc-update": RC_UPDATE, "augenrules": AUGENRULES, "auditctl": AUDITCTL}
    for name, text in stand_ins.items():
        (sbin / name).write_text(text)
        (sbin / name).chmod(0o755)
    wrap = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", MOUNTS, "sh", str(lab)]
    with netns_host(tmp, wrap=wrap, ns_if="eth0") as net:
        yield LabHost(net, lab)
