"""Targets that steps run on: local, chroot and remote (SSH)."""

from .base import Result, Target
from .chroot import ChrootTarget
from .local import LocalTarget
from .remote import RemoteTarget

__all__ = ["ChrootTarget", "LocalTarget", "RemoteTarget", "Result", "Target"]
