"""Section ``fleet``: the hosts we reach over SSH, one inventory for every task that works on hosts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from ..errors import ConfigError
from .validator import Between, Port, check_unique_names

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a host name names log files and report keys
INSTANCE_ID_RE = re.compile(r"i-[0-9a-f]{8,17}")


@dataclass(frozen=True)
class HostConfig:
    """One entry of ``fleet.hosts``."""

    name: str  # plain name (letters digits . _ -), unique; names logs and report keys
    host: str  # address or DNS name
    user: str = "root"
    port: Port = 22
    key_filename: Path | None = None
    known_hosts: Path | None = None  # None: accept any host key (fresh EC2 instances)
    connect_timeout: Annotated[int, Between(1)] = 15
    groups: list[str] = field(default_factory=list)  # plain names
    instance_id: str = ""  # EC2 instance id (i-...); "" = learn it from the host (facts)
    region: str = ""  # "" = the AWS default chain's region
    root: str = "/"  # the host's system root as seen over SSH (an image mounted elsewhere; the tests' temp dirs)

    def check(self, key: str) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ConfigError(f"{key}.name: {self.name!r} is not a name of letters, digits and . _ - "
                              "(it names log files and report keys)")
        if not self.host:
            raise ConfigError(f"{key}.host: must not be empty")
        for i, group in enumerate(self.groups):
            if not NAME_RE.fullmatch(group) or group == "all":
                raise ConfigError(f"{key}.groups[{i}]: {group!r} is not a group name of letters, digits and . _ -"
                                  + (" ('all' means every host)" if group == "all" else ""))
        if self.instance_id and not INSTANCE_ID_RE.fullmatch(self.instance_id):
            raise ConfigError(f"{key}.instance_id: {self.instance_id!r} is not an EC2 instance id "
                              "(i- and 8 to 17 hex digits)")
        if not self.root.startswith("/"):
            raise ConfigError(f"{key}.root: must be an absolute path, got {self.root!r}")


@dataclass(frozen=True)
class FleetConfig:
    """Key ``fleet``: the host inventory, and how many hosts are worked on at once."""

    hosts: list[HostConfig] = field(default_factory=list)
    parallel: Annotated[int, Between(1, 256)] = 8  # hosts worked on at once
    command_timeout: Annotated[int, Between(1)] = 3600  # default seconds for one remote command

    def check(self, key: str) -> None:
        check_unique_names(self.names, f"{key}.hosts")
        names = set(self.names)
        for i, host in enumerate(self.hosts):
            for j, group in enumerate(host.groups):
                if group in names:
                    raise ConfigError(f"{key}.hosts[{i}].groups[{j}]: {group!r} is also a host's name")

    def host(self, name: str) -> HostConfig | None:
        return next((host for host in self.hosts if host.name == name), None)

    @property
    def names(self) -> list[str]:
        return [host.name for host in self.hosts]

    @property
    def groups(self) -> list[str]:
        """Every group name, in the order first seen."""
        return list(dict.fromkeys(group for host in self.hosts for group in host.groups))
