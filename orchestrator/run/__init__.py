"""Targets that steps run on: local, chroot and remote (SSH)."""

from .base import Result, Target
from .local import LocalTarget
from .remote import RemoteTarget

__all__ = ["LocalTarget", "RemoteTarget", "Result", "Target"]
