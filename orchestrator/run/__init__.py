"""Targets that steps run on: local, chroot and remote (SSH)."""

from .base import Result, Target
from .local import LocalTarget

__all__ = ["LocalTarget", "Result", "Target"]
