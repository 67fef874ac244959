"""Section ``guard``: per image, what guards sshd (knockd or fwknop), the default-drop firewall and fail2ban.

Every value here ends up on a line of knockd.conf, a fwknop file, a rule set or
jail.local on a host with no console: a value that could end a line or open
a section (a newline, a control character, ``[``) is refused here, with one
line naming ``guard.images[i].key``, before anything is rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from ..errors import ConfigError
from .audit import AuditConfig
from .syslog import SyslogConfig
from .validator import Between, Cidr, Port, check_unique_names, find_named

IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HOST_WORD = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._-]*")
INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ 16 with the NUL
KNOCK = re.compile(r"([0-9]{1,5})(?::(tcp|udp))?")
TCPFLAG = re.compile(r"!?(fin|syn|rst|psh|ack|urg)")
DURATION = re.compile(r"(?:[0-9]+(?:s|m|h|d|w|mo|y)?)+")  # fail2ban's abbreviations: 3600, 1h, 1h30m, 1w
EMAIL = re.compile(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+")  # no % (fail2ban interpolates it)
HOST_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
LOGPATH = re.compile(r"/[A-Za-z0-9._/*+-]*")  # no spaces, %, [ or newlines: one path (or glob) on a line
INJECTING = re.compile(r"[\x00-\x1f\x7f\[\]]")


SECRET_NOT_SHOWN = "value not shown: knock sequences are secret"


class Knock(NamedTuple):
    """One knock: a port and its protocol."""

    port: int
    proto: Literal["tcp", "udp"] = "tcp"

    def __str__(self) -> str:
        return f"{self.port}:{self.proto}"


def parse_knock(text: object, key: str) -> Knock:
    """``7000``, ``7000:tcp`` or ``7000:udp`` -> ``Knock``; anything else one line naming ``key``."""
    match = KNOCK.fullmatch(str(text)) if isinstance(text, (str, int)) and not isinstance(text, bool) else None
    if not match:
        raise ConfigError(f"{key}: not a knock like 7000:tcp or 7000:udp ({SECRET_NOT_SHOWN})")
    port = int(match.group(1))
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port out of range, must be 1-65535 ({SECRET_NOT_SHOWN})")
    return Knock(port, match.group(2) or "tcp")  # type: ignore[arg-type]


class KnockSpec(str):
    """A knock as written in the config (``7000``, ``"7000:udp"``), kept normalised as ``7000:tcp``."""

    @classmethod
    def parse(cls, value: object, key: str) -> "KnockSpec":
        return cls(str(parse_knock(value, key)))

    def __repr__(self) -> str:  # a config dump or a traceback shows no sequence
        return "'<knock>'"


def plain_text(value: str, key: str) -> None:
    """Refuse what would end a line or open a section in an ini-like file: control characters, ``[``, ``]``."""
    found = INJECTING.search(value)
    if found:
        what = {"\n": "a newline", "\r": "a carriage return", "[": "'['", "]": "']'"}.get(
            found.group(), f"a control character ({found.group()!r})")
        raise ConfigError(f"{key}: {_shown(value)} contains {what}, which would start a new line or section; refused")


def _shown(value: object) -> str:
    """A value for an error line: repr (so a newline shows as \\n), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class KnockConfig:
    """Key ``guard.images[].knock``: the knock sequences (empty = generated from a CSPRNG) and knockd's timings."""

    open: list[KnockSpec] = field(default_factory=list)
    close: list[KnockSpec] = field(default_factory=list)
    seq_timeout: Annotated[int, Between(1, 300)] = 5
    cmd_timeout: Annotated[int, Between(1, 86400)] = 10
    tcpflags: str = "syn"
    one_time: bool = False
    one_time_count: Annotated[int, Between(4, 10000)] = 50

    def check(self, key: str) -> None:
        self.open_knocks(key)
        self.close_knocks(key)
        if self.open and self.open_knocks(key) == self.close_knocks(key):
            raise ConfigError(f"{key}.close: the same sequence as {key}.open; the close sequence must differ")
        plain_text(self.tcpflags, f"{key}.tcpflags")
        if not all(TCPFLAG.fullmatch(flag) for flag in self.tcpflags.split(",")):
            raise ConfigError(f"{key}.tcpflags: {_shown(self.tcpflags)} is not a list of fin,syn,rst,psh,ack,urg "
                              "(each may start with !)")

    def open_knocks(self, key: str = "knock") -> list[Knock]:
        return _knocks(self.open, f"{key}.open")

    def close_knocks(self, key: str = "knock") -> list[Knock]:
        return _knocks(self.close, f"{key}.close")


def _knocks(items: list, key: str) -> list[Knock]:
    knocks = [parse_knock(item, f"{key}[{i}]") for i, item in enumerate(items)]
    if len(knocks) == 1:
        raise ConfigError(f"{key}: one knock is no sequence; give at least 2 (or none to have 3 generated)")
    return knocks


@dataclass(frozen=True)
class FirewallConfig:
    """Key ``guard.images[].firewall``: the default-drop rule set (iptables-restore files, or one nftables table)."""

    backend: Literal["iptables", "nftables"] = "iptables"
    ipv6: bool = True  # serve the image's ports over IPv6 too (False: IPv6 gets loopback and replies only)
    allow_ping: bool = True
    confirm_window: Annotated[int, Between(5, 3600)] = 60  # inv harden: seconds until the host reverts by itself


SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._-]{0,63}")
MANAGER_SERVICES = {  # what Gentoo's packages install, per init system
    "openrc": {"knockd": "knock", "fwknopd": "fwknopd", "fail2ban": "fail2ban", "rsyslog": "rsyslog",
               "iptables": "iptables", "ip6tables": "ip6tables", "nft": "nftables"},
    "systemd": {"knockd": "knockd", "fwknopd": "fwknopd", "fail2ban": "fail2ban", "rsyslog": "rsyslog",
                "iptables": "iptables-restore", "ip6tables": "ip6tables-restore", "nft": "nftables-restore"},
}


@dataclass(frozen=True)
class ServicesConfig:
    """Key ``guard.images[].services``: how ``inv harden`` restarts the guard's daemons and has the firewall
    loaded at boot. ``manager: auto`` asks the host (systemd when ``/run/systemd/system`` exists, else OpenRC's
    ``rc-service``); a name left empty is the one Gentoo's package installs (``MANAGER_SERVICES``)."""

    manager: Literal["auto", "openrc", "systemd"] = "auto"
    knockd: str = ""
    fwknopd: str = ""
    fail2ban: str = ""

    def check(self, key: str) -> None:
        for name in ("knockd", "fwknopd", "fail2ban"):
            value = getattr(self, name)
            if value and not SERVICE_NAME.fullmatch(value):
                raise ConfigError(f"{key}.{name}: {_shown(value)} is not a service name (letters, digits, @ . _ -)")

    def name(self, manager: str, daemon: str) -> str:
        """The service that runs ``daemon`` (knockd, fwknopd, fail2ban, iptables, ip6tables, nft) under ``manager``."""
        return getattr(self, daemon, "") or MANAGER_SERVICES[manager][daemon]


@dataclass(frozen=True)
class Fail2banConfig:
    """Key ``guard.images[].fail2ban``: jail.local; ``banaction`` follows the firewall backend."""

    bantime: str = "1h"
    findtime: str = "10m"
    maxretry: Annotated[int, Between(1, 1000)] = 5
    increment: bool = True  # bantime.increment: repeat offenders are banned longer each time
    recidive: bool = True
    ignoreip: list[Cidr] = field(default_factory=list)  # 127.0.0.1/8 and ::1 are always added
    backend: Literal["auto", "systemd", "polling"] = "auto"
    logpath: str = "/var/log/auth.log"  # read with backend auto or polling (OpenRC hosts)
    mail: Literal["none", "each", "digest"] = "none"
    destemail: str = "root@localhost"
    sender: str = "fail2ban@localhost"

    def check(self, key: str) -> None:
        for name in ("bantime", "findtime"):
            value = getattr(self, name)
            plain_text(value, f"{key}.{name}")
            if not DURATION.fullmatch(value):
                raise ConfigError(f"{key}.{name}: {_shown(value)} is not a duration like 3600, 10m, 1h or 1w")
        plain_text(self.logpath, f"{key}.logpath")
        if not LOGPATH.fullmatch(self.logpath):
            raise ConfigError(f"{key}.logpath: {_shown(self.logpath)} is not one absolute path "
                              "(letters, digits, . _ - + / *; no spaces or %)")
        for name in ("destemail", "sender"):
            value = getattr(self, name)
            plain_text(value, f"{key}.{name}")
            if not EMAIL.fullmatch(value):
                raise ConfigError(f"{key}.{name}: {_shown(value)} is not a mail address like root@example.com")

    @property
    def bantime_seconds(self) -> int:
        return duration_seconds(self.bantime)


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000, "y": 31536000, "": 1}


def duration_seconds(text: str) -> int:
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"([0-9]+)(mo|[smhdwy]?)", text))


PAM_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # a file name in /etc/pam.d
NEVER_LOGINUID = re.compile(r"(su|sudo|runuser|doas|pkexec|ksu)(-[A-Za-z0-9._+-]*)?", re.IGNORECASE)


def never_loginuid(service: str) -> bool:
    """su, sudo and their kin (su-l, sudo-i, runuser-l, sudo-rs): pam_loginuid there would overwrite the login
    uid of the admin who escalates with the target user's, the very trail it exists to keep."""
    return bool(NEVER_LOGINUID.fullmatch(service))


@dataclass(frozen=True)
class LoginuidConfig:
    """Key ``guard.images[].loginuid``: the login services whose PAM session stack must run
    ``session required pam_loginuid.so`` (Debian names cron ``cron``; Gentoo's cronie ``crond``)."""

    enabled: bool = True
    services: list[str] = field(default_factory=lambda: ["sshd", "crond", "atd"])

    def check(self, key: str) -> None:
        for i, name in enumerate(self.services):
            if not PAM_SERVICE.fullmatch(name):
                raise ConfigError(f"{key}.services[{i}]: {_shown(name)} is not a PAM service (a file name in "
                                  "/etc/pam.d: letters, digits, . _ + -)")
            if never_loginuid(name):
                raise ConfigError(f"{key}.services[{i}]: {name}: loginuid must never be set there (su/sudo would "
                                  "overwrite the login uid); list login services only, like sshd, crond, atd")
            if self.services.index(name) != i:
                raise ConfigError(f"{key}.services[{i}]: {name} is listed twice")


@dataclass(frozen=True)
class GuardImage:
    """One entry of ``guard.images``: a named set of fleet hosts and how each guards its sshd.

    ``guard``: ``knockd`` (port knocking), ``fwknop`` (single packet
    authorization, the recommended one: HMAC and replay detection) or ``none``
    (SSH open to all, fail2ban only). ``tcp_ports``/``udp_ports``: what the
    image serves to everyone; the SSH port is opened by the guard, or always
    with ``guard: none``, so it is not listed there.
    """

    name: str
    hosts: list[str] = field(default_factory=list)
    guard: Literal["knockd", "fwknop", "none"] = "knockd"
    ssh_port: Port = 22
    interface: str = "eth0"
    tcp_ports: list[Port] = field(default_factory=list)
    udp_ports: list[Port] = field(default_factory=list)
    knock: KnockConfig = field(default_factory=KnockConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    fail2ban: Fail2banConfig = field(default_factory=Fail2banConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    loginuid: LoginuidConfig = field(default_factory=LoginuidConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)  # audit.rules (config/audit.py)
    syslog: SyslogConfig = field(default_factory=SyslogConfig)  # rsyslog -> MariaDB (section logs)

    def check(self, key: str) -> None:
        plain_text(self.name, f"{key}.name")
        if not IMAGE_NAME.fullmatch(self.name):
            raise ConfigError(f"{key}.name: {_shown(self.name)} is not a name (letters, digits, . _ -)")
        for i, word in enumerate(self.hosts):
            plain_text(word, f"{key}.hosts[{i}]")
            if not HOST_WORD.fullmatch(word):
                raise ConfigError(f"{key}.hosts[{i}]: {_shown(word)} is not a host name or @group")
        plain_text(self.interface, f"{key}.interface")
        if not INTERFACE.fullmatch(self.interface):
            raise ConfigError(f"{key}.interface: {_shown(self.interface)} is not an interface name like eth0")
        self._check_served(key)
        self._check_knocks(key)
        if self.guard == "fwknop" and self.firewall.backend == "nftables":
            raise ConfigError(f"{key}.firewall.backend: fwknopd 2.6 drives iptables only, and its ACCEPT would not "
                              "pass the nftables table's drop; use backend iptables with guard fwknop")

    def _check_served(self, key: str) -> None:
        for proto in ("tcp", "udp"):
            ports = getattr(self, f"{proto}_ports")
            for i, port in enumerate(ports):
                if ports.index(port) != i:
                    raise ConfigError(f"{key}.{proto}_ports[{i}]: {port} is listed twice")
        if self.ssh_port in self.tcp_ports:
            i = self.tcp_ports.index(self.ssh_port)
            raise ConfigError(f"{key}.tcp_ports[{i}]: {self.ssh_port} is the SSH port (ssh_port), which the guard "
                              "opens per client (or guard: none opens to all); do not serve it to everyone")

    def _check_knocks(self, key: str) -> None:
        served = self.served()
        for which in ("open", "close"):
            for i, knock in enumerate(_knocks(getattr(self.knock, which), f"{key}.knock.{which}")):
                if knock.port == self.ssh_port:
                    raise ConfigError(f"{key}.knock.{which}[{i}]: {knock.port} is the SSH port; a knock must "
                                      "not touch it")
                if knock in served:
                    raise ConfigError(f"{key}.knock.{which}[{i}]: {knock} is a port the image serves; a knock "
                                      "there would reach the service")

    def served(self) -> set[Knock]:
        """Every port open to all, as ``Knock`` pairs (the SSH port counted as served for both protocols'
        sake: a knock there is refused)."""
        return {Knock(p, "tcp") for p in self.tcp_ports} | {Knock(p, "udp") for p in self.udp_ports}

    @property
    def forbidden_ports(self) -> set[int]:
        """Ports a generated knock never uses: the SSH port and every served port (either protocol)."""
        return {self.ssh_port, *self.tcp_ports, *self.udp_ports}


@dataclass(frozen=True)
class GuardConfig:
    """Key ``guard``: the images, the secrets file (mode 0600) and where rendered trees go."""

    images: list[GuardImage] = field(default_factory=list)
    secrets_file: Path | None = None  # default: <orchestrator.state_dir>/guard/secrets.json
    output_dir: Path | None = None  # default: <orchestrator.state_dir>/guard/rendered; one tree per image
    host_state_dir: str = "/var/lib/gentoo-ec2-orchestrator/guard"  # on each host: the dead-man switch's jobs

    def check(self, key: str) -> None:
        check_unique_names((image.name for image in self.images), f"{key}.images")
        if not HOST_PATH.fullmatch(self.host_state_dir) or "/../" in self.host_state_dir + "/":
            raise ConfigError(f"{key}.host_state_dir: {_shown(self.host_state_dir)} is not an absolute path "
                              "(letters, digits, . _ - /)")

    def check_hosts(self, names: list[str], groups: list[str]) -> None:
        """Every ``hosts`` word names a ``fleet.hosts`` entry or an ``@group`` of them."""
        for i, image in enumerate(self.images):
            for j, word in enumerate(image.hosts):
                known = word[1:] in groups or word == "@all" if word.startswith("@") else word in names
                if not known:
                    what = "group" if word.startswith("@") else "host"
                    raise ConfigError(f"guard.images[{i}].hosts[{j}]: no {what} {word!r} in fleet.hosts")

    def image(self, name: str) -> GuardImage:
        return find_named(self.images, name, "guard.images")

    def index(self, name: str) -> int:
        return [i.name for i in self.images].index(name)
