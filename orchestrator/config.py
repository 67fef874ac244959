"""Typed, validated configuration on top of invoke's own config system.

invoke merges its levels (project ``invoke.yaml``, ``-f site.yaml``, ``INVOKE_*``
environment variables) into one tree; this module turns each of our sections of
that tree into frozen dataclasses.  Every problem is reported as one line that
names the dotted key and says why, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

MIB = 1024**2
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class Size(int):
    """A byte count written as ``33554432``, ``32M``, ``32MiB`` or ``1.5G``."""

    @classmethod
    def parse(cls, value: Any, key: str) -> "Size":
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a size like 32M, got {value!r}")
        if isinstance(value, int):
            return cls(value)
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
        if not match:
            raise ConfigError(f"{key}: expected a size like 32M or 1G, got {value!r}")
        number, unit = match.groups()
        return cls(int(float(number) * SIZE_UNITS[unit.upper()]))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class GeneralConfig:
    """Key ``orchestrator``: where state lives and how runs talk."""

    state_dir: Path = Path("/var/lib/gentoo-ec2-orchestrator")
    progress: Literal["auto", "bar", "plain", "quiet"] = "auto"
    catalog_timeout: int = 10  # seconds to wait for a catalog another process holds


@dataclass(frozen=True)
class CompressionConfig:
    codec: Literal["xz", "zstd"] = "xz"
    level: int = 9
    extreme: bool = True
    workers: int = 0  # 0: one per core

    def effective_workers(self) -> int:
        """One codec per core: the seed's CPUS+1 overlapped disk I/O with xz, which our
        streaming already does; a third xz -9 on two cores only thrashes caches (the bench
        measured 342 CPU-s with 3 workers against 290 with 2, same data)."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class EncryptionConfig:
    recipients: list[str] = field(default_factory=list)
    gpg_home: Path | None = None
    passphrase_file: Path | None = None  # for restore: unlocks the secret key; never logged

    @property
    def enabled(self) -> bool:
        return bool(self.recipients)


@dataclass(frozen=True)
class PriceConfig:
    """USD per GB-month by storage class, for the cost line (us-east-1 list prices, 2025)."""

    deep_archive: float = 0.00099
    glacier: float = 0.0036
    glacier_ir: float = 0.004
    standard_ia: float = 0.0125
    standard: float = 0.023
    vault: float = 0.004
    directory: float = 0.0


STORAGE_CLASSES = ("DEEP_ARCHIVE", "GLACIER", "GLACIER_IR", "STANDARD_IA", "STANDARD")
# Minimum storage duration AWS bills for, in days: deleting earlier costs the rest.
MIN_STORAGE_DAYS = {"DEEP_ARCHIVE": 180, "GLACIER": 90, "GLACIER_IR": 90, "STANDARD_IA": 30, "STANDARD": 0,
                    "vault": 90, "directory": 0}


@dataclass(frozen=True)
class StoreConfig:
    """Key ``backup.store``: where parts go. ``directory`` needs nothing from AWS."""

    type: Literal["directory", "s3", "glacier"] = "directory"
    path: Path = Path("/var/backups/gentoo-ec2-orchestrator/store")
    vault: str = "backups"
    bucket: str = ""
    prefix: str = "gentoo-ec2-orchestrator/"
    storage_class: Literal["DEEP_ARCHIVE", "GLACIER", "GLACIER_IR", "STANDARD_IA", "STANDARD"] = "DEEP_ARCHIVE"
    region: str = ""
    endpoint_url: str = ""
    profile: str = ""
    max_attempts: int = 10
    upload_workers: int = 4
    part_size: Size = Size(0)  # 0: chosen per archive (power of two MiB, <= 10,000 parts)
    retrieval_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    retrieval_days: int = 7
    poll_seconds: int = 900


@dataclass(frozen=True)
class RemoteRetentionConfig:
    """Key ``backup.remote_retention``: 0 means no limit of that kind."""

    keep_sets: int = 0
    max_age_days: int = 0


@dataclass(frozen=True)
class HookConfig:
    name: str
    argv: list[str]
    timeout: int = 3600
    cwd: Path | None = None


@dataclass(frozen=True)
class BackupConfig:
    """Key ``backup``: the seed's nightly script, as settings."""

    host: str = ""
    staging_dir: Path = Path("/var/tmp/gentoo-ec2-orchestrator")
    directories: list[str] = field(default_factory=lambda: ["/etc"])
    exclude: list[str] = field(default_factory=list)
    one_file_system: bool = True
    chunk_size: Size = Size(16 * 1024**2)
    queue_depth: int = 1
    full_every_days: int = 7
    keep_local_sets: int = 7
    on_inflight: Literal["resume", "discard"] = "resume"
    min_free_space: Size = Size(256 * 1024**2)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    remote_retention: RemoteRetentionConfig = field(default_factory=RemoteRetentionConfig)
    prices: PriceConfig = field(default_factory=PriceConfig)
    hooks: list[HookConfig] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return self.host or socket.gethostname()


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

    @property
    def enabled(self) -> bool:
        return bool(self.key)


@dataclass(frozen=True)
class ServeConfig:
    """Key ``binhost.serve``: how instances reach the tree (rsync) and PKGDIR (HTTP)."""

    public_host: str = ""  # the name instances use for the build box; "" = this host's name
    listen_address: str = "0.0.0.0"  # for `inv binhost.serve` and the rendered rsyncd.conf
    rsync_port: int = 873
    http_port: int = 80
    url_path: str = "/binpkgs"  # where PKGDIR appears on the web server
    hosts_allow: list[str] = field(default_factory=list)  # rsyncd "hosts allow"; [] = anyone
    web_user: str = ""  # owner given to PKGDIR (the seed's chown); "" = leave ownership alone
    web_group: str = ""

    def host(self) -> str:
        return self.public_host or socket.gethostname()


@dataclass(frozen=True)
class ClientConfig:
    """One entry of ``binhost.clients``: an instance (image) that installs our binaries."""

    name: str
    host: str
    user: str = "root"
    port: int = 22
    key_filename: Path | None = None
    known_hosts: Path | None = None  # None: accept any host key (fresh EC2 instances)
    connect_timeout: int = 15
    mode: Literal["direct", "tunnel", "tarball"] = "direct"
    eprefix: str = ""  # a Gentoo Prefix on the instance; "" = the instance's own /
    legacy_make_conf: bool = False  # also PORTAGE_BINHOST / SYNC in make.conf, for old Portage
    tunnel_rsync_port: int = 873  # ports opened on the instance's loopback by `ssh -R`
    tunnel_http_port: int = 80
    staging_dir: str = "/var/tmp/gentoo-ec2-orchestrator"  # tarball mode: unpacked here
    env: dict[str, str] = field(default_factory=dict)  # extra environment for emerge there
    timeout: int = 7200  # seconds for one emerge on the instance


@dataclass(frozen=True)
class BinhostConfig:
    """Key ``binhost``: the build system that compiles once for every instance."""

    mode: Literal["chroot", "prefix"] = "chroot"
    root: Path = Path("/srv/gentoo-binhost")  # the chroot (an unpacked stage3), or the EPREFIX
    repos: list[str] = field(default_factory=list)  # repositories to publish; [] = every one
    emerge_options: list[str] = field(default_factory=lambda: ["--keep-going=y"])
    quickpkg_jobs: int = 0  # 0: one per core
    output_dir: Path | None = None  # rendered configs; default <state_dir>/binhost
    timeout: int = 6 * 3600  # seconds for one stage's command
    prune: bool = False  # also run the prune stage in every full `inv binhost` (`inv binhost.prune` always can)
    keep_binpkgs: int = 1  # per package slot: builds older than the installed one kept for a rollback
    signing: SigningConfig = field(default_factory=SigningConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    clients: list[ClientConfig] = field(default_factory=list)


SECTIONS: dict[str, type] = {
    "orchestrator": GeneralConfig,
    "backup": BackupConfig,
    "binhost": BinhostConfig,
}


def plain(value: Any) -> Any:
    """invoke's DataProxy trees -> plain dicts and lists."""
    if isinstance(value, Mapping) or hasattr(value, "_config"):
        return {k: plain(value[k]) for k in value.keys()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def defaults() -> dict[str, dict]:
    """Every section's defaults as plain data, for ``Collection.configure``.

    invoke only maps ``INVOKE_*`` variables onto keys that already exist, so
    registering the defaults is what makes ``INVOKE_BACKUP_CHUNK_SIZE=64M`` work.
    Scalars are registered as text: invoke casts an environment value to the
    default's type itself, and would crash on ``64M`` for an int; our validator
    does the casting instead, with an error that names the key.
    """
    return {name: _dump(cls()) for name, cls in SECTIONS.items()}


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, (Path, int, float)):
        return str(obj)
    return obj


def load_section(name: str, raw: Any) -> Any:
    """Validate one top-level section (``backup``, ...) into its dataclass."""
    return _build(SECTIONS[name], plain(raw) if raw is not None else {}, name)


def check_store(store: StoreConfig) -> None:
    """Settings that only make sense together."""
    if store.type == "s3" and store.part_size and store.part_size < 5 * MIB:
        raise ConfigError(f"backup.store.part_size: S3 parts are at least 5M, got {store.part_size}")
    if store.type == "s3" and store.storage_class == "DEEP_ARCHIVE" and store.retrieval_tier == "Expedited":
        raise ConfigError("backup.store.retrieval_tier: DEEP_ARCHIVE has no Expedited retrievals (Standard or Bulk)")
    if store.type == "s3" and not store.bucket:
        raise ConfigError("backup.store.bucket: required when backup.store.type is s3")
    if store.type == "glacier" and not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", store.vault):
        raise ConfigError(f"backup.store.vault: {store.vault!r} is not a valid Glacier vault name")
    if store.part_size and (store.part_size % MIB or (store.part_size // MIB) & (store.part_size // MIB - 1)
                            or store.part_size > 4096 * MIB):
        raise ConfigError(f"backup.store.part_size: {store.part_size} is not a power of two MiB (1M .. 4G)")


def from_invoke(config: Any, name: str) -> Any:
    return load_section(name, config.get(name, {}) if hasattr(config, "get") else None)


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            close = _closest(str(name), fields)
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"{key}.{name}: unknown setting{hint}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{key}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{name}: required setting is missing")
    return cls(**values)


def _closest(name: str, choices) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, f"{key}"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is Size:
        return Size.parse(value, key)
    if hint is float:
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0:
            raise ConfigError(f"{key}: expected a non-negative number, got {value!r}")
        return number
    if hint is bool:
        return _bool(value, key)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {number}")
        return number
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise AssertionError(f"no coercion for {hint!r} at {key}")


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")
