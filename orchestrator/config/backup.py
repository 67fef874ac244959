"""Section ``backup``: the seed's nightly script as settings, and where its parts are stored."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import MAX_WORKERS, MIB, Between, Size

#: compression levels each codec takes (zstd's 20-22 need --ultra and a lot of memory)
LEVELS = {"xz": (0, 9), "zstd": (1, 19)}
STORAGE_CLASSES = ("DEEP_ARCHIVE", "GLACIER", "GLACIER_IR", "STANDARD_IA", "STANDARD")
# Minimum storage duration AWS bills for, in days: deleting earlier costs the rest.
MIN_STORAGE_DAYS = {"DEEP_ARCHIVE": 180, "GLACIER": 90, "GLACIER_IR": 90, "STANDARD_IA": 30, "STANDARD": 0,
                    "vault": 90, "directory": 0}
S3_MIN_PART_SIZE = 5 * MIB
S3_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
GLACIER_VAULT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


@dataclass(frozen=True)
class CompressionConfig:
    codec: Literal["xz", "zstd"] = "xz"
    level: int = 9
    extreme: bool = True
    workers: Annotated[int, Between(0, MAX_WORKERS)] = 0  # 0: one per core

    def check(self, key: str) -> None:
        """xz reads ``-42e`` as ``-2e``: a level outside the codec's range is refused, not guessed."""
        low, high = LEVELS[self.codec]
        if not low <= self.level <= high:
            raise ConfigError(f"{key}.level: must be {low}-{high} for {self.codec}, got {self.level}")

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
    max_attempts: Annotated[int, Between(1)] = 10
    upload_workers: Annotated[int, Between(1, MAX_WORKERS)] = 4
    part_size: Size = Size(0)  # 0: chosen per archive (power of two MiB, <= 10,000 parts)
    retrieval_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    retrieval_days: Annotated[int, Between(1)] = 7
    poll_seconds: int = 900  # 0: poll again at once (tests)

    def check(self, key: str) -> None:
        """Settings that only make sense together (the ones that need AWS are the store's to find)."""
        if self.type == "s3":
            self._check_s3(key)
        if self.type == "glacier" and not GLACIER_VAULT_NAME.fullmatch(self.vault):
            raise ConfigError(f"{key}.vault: {self.vault!r} is not a valid Glacier vault name")
        mib, rest = divmod(self.part_size, MIB)
        if self.part_size and (rest or mib & (mib - 1) or self.part_size > 4096 * MIB):
            raise ConfigError(f"{key}.part_size: {self.part_size} is not a power of two MiB (1M .. 4G)")

    def _check_s3(self, key: str) -> None:
        if not self.bucket:
            raise ConfigError(f"{key}.bucket: required when {key}.type is s3")
        if not (S3_BUCKET_NAME.fullmatch(self.bucket) or self.bucket.startswith("arn:")):
            raise ConfigError(f"{key}.bucket: {self.bucket!r} is not a valid S3 bucket name")
        if self.part_size and self.part_size < S3_MIN_PART_SIZE:
            raise ConfigError(f"{key}.part_size: S3 parts are at least 5M, got {self.part_size}")
        if self.storage_class == "DEEP_ARCHIVE" and self.retrieval_tier == "Expedited":
            raise ConfigError(f"{key}.retrieval_tier: DEEP_ARCHIVE has no Expedited retrievals (Standard or Bulk)")


@dataclass(frozen=True)
class RemoteRetentionConfig:
    """Key ``backup.remote_retention``: 0 means no limit of that kind."""

    keep_sets: int = 0
    max_age_days: int = 0


@dataclass(frozen=True)
class HookConfig:
    name: str
    argv: list[str]
    timeout: Annotated[int, Between(1)] = 3600
    cwd: Path | None = None

    def check(self, key: str) -> None:
        if not self.argv:
            raise ConfigError(f"{key}.argv: empty command for hook {self.name!r}")


@dataclass(frozen=True)
class BackupConfig:
    """Key ``backup``: the seed's nightly script, as settings."""

    host: str = ""
    staging_dir: Path = Path("/var/tmp/gentoo-ec2-orchestrator")
    directories: list[str] = field(default_factory=lambda: ["/etc"])
    exclude: list[str] = field(default_factory=list)
    one_file_system: bool = True
    chunk_size: Size = Size(16 * 1024**2)
    queue_depth: Annotated[int, Between(0, MAX_WORKERS)] = 1
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

    def check(self, key: str) -> None:
        """What the settings alone can tell; whether the directories exist is preflight's to find."""
        if not self.directories:
            raise ConfigError(f"{key}.directories: no directories to back up")
        for i, path in enumerate(self.directories):
            if not os.path.isabs(path):
                raise ConfigError(f"{key}.directories[{i}]: {path!r} is not an absolute path")
        if self.chunk_size < MIB:
            raise ConfigError(f"{key}.chunk_size: {self.chunk_size} bytes is below the 1M minimum")

    @property
    def hostname(self) -> str:
        return self.host or socket.gethostname()
