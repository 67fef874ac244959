"""Small kernel sets published as build-kernel publishes them (``artifacts.publish``), without a kernel build.

Run as a script, it publishes one set in a child process, for the tests that kill it at a crash point
(they set ``GEO_TEST_CRASH_AT``). Usage: python kernel_sets.py DIRECTORY RELEASE BUILT TMP
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.kernel import artifacts


def publish(directory: Path, release: str, built: str, tmp: Path) -> Path:
    """A small set as build-kernel publishes it, built at ``built`` (its files say so too), staged under ``tmp``."""
    stage = tmp / f"stage-{release}"
    (stage / "boot").mkdir(parents=True)
    for name in ("vmlinuz", "System.map", "config"):
        (stage / "boot" / name).write_text(f"{name} of {release}, built {built}\n")
    (stage / "lib" / "modules" / release).mkdir(parents=True)

    def pack(dest: Path) -> None:
        subprocess.run(["tar", "--zstd", "-cf", str(dest), "-C", str(stage), f"lib/modules/{release}"], check=True)

    return artifacts.publish(directory, release, stage, {"release": release, "built": built}, pack)


if __name__ == "__main__":
    publish(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]))
