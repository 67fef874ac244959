"""Checks made before any work starts: each problem is one line naming the setting."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..config import BackupConfig, human_size
from ..errors import ConfigError
from .codec import encrypt_argv


def check_backup(cfg: BackupConfig) -> None:
    """What only this machine can tell; the settings themselves were checked when the section was loaded."""
    check_directories(cfg.directories)
    check_tools(cfg)
    check_staging(cfg)
    check_recipients(cfg)


def check_directories(directories: list[str]) -> None:
    for i, path in enumerate(directories):
        key = f"backup.directories[{i}]"
        if not os.path.exists(path):
            raise ConfigError(f"{key}: {path} does not exist")
        if not os.path.isdir(path):
            raise ConfigError(f"{key}: {path} is not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"{key}: {path} is not readable by uid {os.getuid()}")


def check_tools(cfg: BackupConfig) -> None:
    needed = {"tar": "GNU tar", cfg.compression.codec: "backup.compression.codec"}
    if cfg.encryption.enabled:
        needed["gpg"] = "backup.encryption.recipients"
    for tool, why in needed.items():
        if shutil.which(tool) is None:
            raise ConfigError(f"{why}: {tool} is not installed (not on PATH)")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_staging(cfg: BackupConfig) -> None:
    existing = nearest_existing(cfg.staging_dir)
    if not existing.is_dir():
        raise ConfigError(f"backup.staging_dir: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"backup.staging_dir: {existing} is not writable")
    free = shutil.disk_usage(existing).free
    if free < cfg.min_free_space:
        raise ConfigError(
            f"backup.staging_dir: only {human_size(free)} free on {existing}, "
            f"backup.min_free_space asks for {human_size(cfg.min_free_space)}"
        )


def check_recipients(cfg: BackupConfig) -> None:
    """Encrypt a probe to every recipient: catches missing, expired and unusable keys."""
    if not cfg.encryption.enabled:
        return
    if cfg.encryption.gpg_home and not cfg.encryption.gpg_home.is_dir():
        raise ConfigError(f"backup.encryption.gpg_home: {cfg.encryption.gpg_home} is not a directory")
    for i, recipient in enumerate(cfg.encryption.recipients):
        probe = subprocess.run(
            encrypt_argv(cfg.encryption.__class__(recipients=[recipient], gpg_home=cfg.encryption.gpg_home)),
            input=b"probe",
            capture_output=True,
        )
        if probe.returncode != 0:
            reason = probe.stderr.decode(errors="replace").strip().splitlines()
            raise ConfigError(
                f"backup.encryption.recipients[{i}]: cannot encrypt to {recipient!r}"
                + (f": {reason[-1]}" if reason else "")
            )
