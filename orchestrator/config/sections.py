"""The top-level sections we own, their defaults for invoke, and loading one of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .backup import BackupConfig, StoreConfig
from .binhost import BinhostConfig
from .ec2 import Ec2Config
from .fleet import FleetConfig
from .general import GeneralConfig
from .guard import GuardConfig
from .kernel import KernelConfig
from .logs import LogsConfig
from .validator import _build, plain

SECTIONS: dict[str, type] = {
    "orchestrator": GeneralConfig,
    "backup": BackupConfig,
    "binhost": BinhostConfig,
    "kernel": KernelConfig,
    "ec2": Ec2Config,
    "fleet": FleetConfig,
    "guard": GuardConfig,
    "logs": LogsConfig,
}


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
    """Validate one top-level section (``backup``, ...) into its dataclass, cross-field checks included."""
    return _build(SECTIONS[name], plain(raw) if raw is not None else {}, name)


def from_invoke(config: Any, name: str) -> Any:
    return load_section(name, config.get(name, {}) if hasattr(config, "get") else None)


def check_store(store: StoreConfig) -> None:
    """The store's cross-field checks (``StoreConfig.check``); kept importable for older callers."""
    store.check("backup.store")
