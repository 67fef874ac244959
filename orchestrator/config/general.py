"""Section ``orchestrator``: what every task shares (state, progress, catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class GeneralConfig:
    """Key ``orchestrator``: where state lives and how runs talk."""

    state_dir: Path = Path("/var/lib/gentoo-ec2-orchestrator")
    progress: Literal["auto", "bar", "plain", "quiet"] = "auto"
    catalog_timeout: int = 10  # seconds to wait for a catalog another process holds
