"""Targets that steps run on: local, chroot and remote (SSH)."""

from .base import Result, Target
from .chroot import ChrootTarget
from .local import LocalTarget

__all__ = ["ChrootTarget", "LocalTarget", "RemoteTarget", "Result", "Target"]


def __getattr__(name: str):
    """RemoteTarget on first use: paramiko's import costs every local job (backup, restore, verify) ~35 ms."""
    if name == "RemoteTarget":
        from .remote import RemoteTarget

        return RemoteTarget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
