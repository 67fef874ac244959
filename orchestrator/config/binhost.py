"""Section ``binhost``: the build system that compiles once, how it is served, and its instances."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import MAX_WORKERS, Between, Port

CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # it names directories and log files


@dataclass(frozen=True)
class SigningConfig:
    """Key ``binhost.signing``: gpkg signatures (Portage's FEATURES=binpkg-signing).

    ``key`` empty: binary packages are not signed and clients get
    ``verify-signature = false``. Otherwise the key (id or fingerprint) must be
    in ``gpg_home``, a path inside the build system, without a passphrase or
    with a running agent; clients then verify (``verify-signature = true``) and
    get the public key in their Portage trust store.
    """

    key: str = ""
    gpg_home: str = "/etc/portage/gnupg-signing"  # the private keyring, inside the build system
    verify_home: str = "/etc/portage/gnupg"  # a public keyring Portage verifies with (there and on instances)

    def check(self, key: str) -> None:
        if self.enabled and self.verify_home.rstrip("/") == self.gpg_home.rstrip("/"):
            raise ConfigError(f"{key}.verify_home: must not be the signing keyring (gpg_home); it is made "
                              "readable by everyone")

    @property
    def enabled(self) -> bool:
        return bool(self.key)


@dataclass(frozen=True)
class ServeConfig:
    """Key ``binhost.serve``: how instances reach the tree (rsync) and PKGDIR (HTTP)."""

    public_host: str = ""  # the name instances use for the build box; "" = this host's name
    listen_address: str = "0.0.0.0"  # for `inv binhost.serve` and the rendered rsyncd.conf
    rsync_port: Port = 873
    http_port: Port = 80
    url_path: str = "/binpkgs"  # where PKGDIR appears on the web server
    hosts_allow: list[str] = field(default_factory=list)  # rsyncd "hosts allow" (addresses, CIDRs, name patterns)
    web_user: str = ""  # owner given to PKGDIR (the seed's chown); "" = leave ownership alone
    web_group: str = ""

    def check(self, key: str) -> None:
        if not self.url_path.startswith("/"):
            raise ConfigError(f"{key}.url_path: must start with /, got {self.url_path!r}")

    def host(self) -> str:
        return self.public_host or socket.gethostname()


@dataclass(frozen=True)
class ClientConfig:
    """One entry of ``binhost.clients``: an instance (image) that installs our binaries.

    ``host`` names an entry of ``fleet.hosts``, which says how to reach it (address, user, key); here is
    only what is the binhost's. The host's name is the client's name (its log files, its report key).
    """

    host: str  # the name of a fleet.hosts entry
    mode: Literal["direct", "tunnel", "tarball"] = "direct"
    eprefix: str = ""  # a Gentoo Prefix on the instance; "" = the instance's own /
    legacy_make_conf: bool = False  # also PORTAGE_BINHOST / SYNC in make.conf, for old Portage
    tunnel_rsync_port: Port = 873  # ports opened on the instance's loopback by `ssh -R`
    tunnel_http_port: Port = 80
    staging_dir: str = "/var/tmp/gentoo-ec2-orchestrator"  # tarball mode: unpacked here
    env: dict[str, str] = field(default_factory=dict)  # extra environment for emerge there
    timeout: Annotated[int, Between(1)] = 7200  # seconds for one emerge on the instance

    @property
    def name(self) -> str:
        """The client's name: its fleet host's name."""
        return self.host


@dataclass(frozen=True)
class BinhostConfig:
    """Key ``binhost``: the build system that compiles once for every instance."""

    mode: Literal["chroot", "prefix"] = "chroot"
    root: Path = Path("/srv/gentoo-binhost")  # the chroot (an unpacked stage3), or the EPREFIX
    repos: list[str] = field(default_factory=list)  # repositories to publish; [] = every one
    emerge_options: list[str] = field(default_factory=lambda: ["--keep-going=y"])
    quickpkg_jobs: Annotated[int, Between(0, MAX_WORKERS)] = 0  # 0: one per core
    output_dir: Path | None = None  # rendered configs; default <state_dir>/binhost
    timeout: Annotated[int, Between(1)] = 6 * 3600  # seconds for one stage's command
    prune: bool = False  # also run the prune stage in every full `inv binhost` (`inv binhost.prune` always can)
    keep_binpkgs: Annotated[int, Between(0, 1000)] = 1  # per package slot: builds older than the installed one kept
    signing: SigningConfig = field(default_factory=SigningConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    clients: list[ClientConfig] = field(default_factory=list)

    def check(self, key: str) -> None:
        seen: set[str] = set()
        for i, client in enumerate(self.clients):
            if not CLIENT_NAME_RE.fullmatch(client.host):
                raise ConfigError(f"{key}.clients[{i}].host: {client.host!r} is not the name of a fleet.hosts "
                                  "entry (letters, digits and . _ -)")
            if client.host in seen:
                raise ConfigError(f"{key}.clients[{i}].host: {client.host!r} is listed twice")
            seen.add(client.host)

    def check_hosts(self, fleet_names: list[str], key: str = "binhost") -> None:
        """Every client names a host of the inventory (checked with the whole config, see ``strict``)."""
        for i, client in enumerate(self.clients):
            if client.host not in fleet_names:
                known = ", ".join(fleet_names) or "none"
                raise ConfigError(f"{key}.clients[{i}].host: no host {client.host!r} in fleet.hosts (known: {known})")
