"""Section ``ec2``: how the orchestrator reaches EC2 (snapshots before a kernel deploy, ``inv ami``).

``boot_mode`` defaults to ``legacy-bios``: the Gentoo instances this tool keeps boot
GRUB installed for BIOS (grub-pc, or the seed's ``/boot/grub/menu.lst``) from a
root volume with no EFI system partition. An image registered ``uefi`` or
``uefi-preferred`` from such a volume does not boot on a UEFI-capable instance
type (every current Nitro type): set ``uefi`` only for images that carry an ESP
and a UEFI GRUB, and for arm64 (Graviton boots UEFI only). ``inv ami --host``
warns when the instance itself reports another boot mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import Between


@dataclass(frozen=True)
class Ec2Config:
    """Key ``ec2``: region, endpoint and profile (empty: boto3's own chain), and how long to wait."""

    region: str = ""
    endpoint_url: str = ""
    profile: str = ""
    max_attempts: Annotated[int, Between(1)] = 10
    snapshot_wait_timeout: Annotated[int, Between(1)] = 3600  # seconds until a snapshot is completed
    image_wait_timeout: Annotated[int, Between(1)] = 3600  # seconds until a registered image is available
    poll_seconds: Annotated[int, Between(0)] = 15  # between two looks at a snapshot or image; 0 for tests
    boot_mode: Literal["legacy-bios", "uefi", "uefi-preferred"] = "legacy-bios"

    def check(self, key: str) -> None:
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.endpoint_url: expected an http:// or https:// URL, got {self.endpoint_url!r}")

    def settings(self, key: str = "ec2"):
        """The connection settings ``orchestrator.ec2`` takes, naming this section in errors."""
        from ..ec2 import Ec2Settings

        return Ec2Settings(region=self.region, endpoint_url=self.endpoint_url, profile=self.profile,
                           setting=key, max_attempts=self.max_attempts)
