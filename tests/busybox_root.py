"""A tiny real root filesystem for chroot tests: busybox-static and its applets."""

from __future__ import annotations

import shutil
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "cat", "echo", "ls", "mount", "umount", "sleep", "ps", "pwd", "readlink",
    "grep", "test", "true", "false", "env", "id", "kill", "touch", "mkdir", "rm",
)
DIRECTORIES = ("bin", "proc", "sys", "dev", "run", "etc", "tmp", "root")


def make_busybox_root(path: Path) -> Path:
    """Build a chrootable tree at ``path`` (created if missing) and return it.

    ``/bin/busybox`` must be the statically linked build (Debian's
    ``busybox-static``): the tree holds no shared libraries.
    """
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} not found: install busybox-static")
    for name in DIRECTORIES:
        (path / name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    return path
