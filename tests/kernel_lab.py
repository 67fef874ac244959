"""A build system with a real toolchain for `inv build-kernel`, and real kernel sources.

The chroot is an overlay of this machine's own root: the lower layer is ``/`` (read only
through the overlay), writes go to an upper directory under the test's temp dir. So
the chroot has Debian's gcc, make, bc, flex, bison, dracut and depmod, everything a
kernel build needs, and nothing the build does inside reaches the host. The overlay is
mounted by each `inv` child inside a mount namespace of its own (``unshare --mount``),
so it is in no host mount table and vanishes with the child, even after ``kill -9``; the
upper directory persists between runs, so the kernel's build directory is reused as it
is on a real build box.

The sources are Debian's ``linux-source-6.1`` tarball, unpacked once per session.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from children import TAG, Finished, finished, new_tag, no_tagged_left

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "kernel"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
INV = Path(sys.executable).parent / "inv"
BUILD_TIMEOUT_S = 1500.0  # only turns a hang into a failure: a tinyconfig build takes ~2 min on 2 idle cores
MOUNT_THEN_EXEC = 'mount -t overlay overlay -o "lowerdir=/,upperdir=$1,workdir=$2" "$3" && shift 3 && exec "$@"'


def unpack_sources(dest: Path) -> Path:
    """Debian's kernel sources, unpacked into ``dest``; returns the tree."""
    if not SOURCE_TARBALL.is_file():
        raise FileNotFoundError(f"{SOURCE_TARBALL} not found: install linux-source-6.1 (sh scripts/install-deps --test)")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(dest)], check=True)
    (tree,) = [p for p in dest.iterdir() if p.is_dir()]
    return tree


class KernelLab:
    """One build system (the overlay), one config dir, one state dir; `inv build-kernel` runs against them."""

    def __init__(self, base: Path, sources: Path):
        self.base = base
        self.sources = sources
        self.upper, self.work, self.root = base / "upper", base / "work", base / "root"
        for directory in (self.upper, self.work, self.root):
            directory.mkdir(parents=True, exist_ok=True)
        self.state = base / "state"
        self.config_dir = base / "kernel-configs"
        self.runs = 0
        self.config = {
            "orchestrator": {"state_dir": str(self.state), "progress": "plain"},
            "binhost": {"mode": "chroot", "root": str(self.root)},
            "kernel": {"config_dir": str(self.config_dir), "images": []},
        }

    def add_image(self, name: str, files: dict[str, str], **settings) -> dict:
        """An image whose config files (``name -> text``) are in the lab's config dir."""
        (self.config_dir / name).mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            (self.config_dir / name / file_name).write_text(text)
        image = {"name": name, "source": {"path": str(self.sources)}, **settings}
        self.config["kernel"]["images"].append(image)
        return image

    def image_dir(self, name: str) -> Path:
        return self.state / "kernels" / name

    def log_dir(self, name: str) -> Path:
        return self.state / "kernels" / "logs" / name

    def inv(self, *args: str, config: dict | None = None, env: dict | None = None) -> Finished:
        """``inv -f <site> <args>`` in a mount namespace where the overlay is the chroot; waits for its end."""
        self.runs += 1
        site = self.base / f"site-{self.runs}.json"
        site.write_text(json.dumps(config or self.config))
        tag = new_tag("kernel-lab")
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", MOUNT_THEN_EXEC, "sh",
                str(self.upper), str(self.work), str(self.root), str(INV), "-f", str(site), *args]
        result = finished(argv, what=f"inv {' '.join(args)}", out_dir=self.base / f"run-{self.runs}",
                          env={**os.environ, TAG: tag, **(env or {})}, cwd=REPO_ROOT, timeout=BUILD_TIMEOUT_S)
        no_tagged_left(tag, f"inv {' '.join(args)}")
        return result

    def variant(self) -> dict:
        return copy.deepcopy(self.config)


INIT = """#!/bin/sh
echo "geo-init: up on $(/bin/busybox uname -r)"
exec /bin/busybox sleep 3600
"""
INIT_MARKER = "geo-init: up on "


def busybox_initramfs(dest: Path, init: str = INIT, name: str = "initramfs.cpio.gz") -> Path:
    """A gzip'd newc cpio ``dest/name``: busybox-static as /bin/sh, /dev/console, and ``init`` as /init
    (by default one that says the release)."""
    tree = dest / f"{name}.tree"
    for directory in ("bin", "dev", "proc"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")
    os.mknod(tree / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    (tree / "init").write_text(init)
    (tree / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "--create", "--format=newc", "--quiet"], cwd=tree, input=names,
                             capture_output=True, check=True).stdout
    image = dest / name
    image.write_bytes(gzip.compress(archive, compresslevel=1))
    return image


def console_text(log: Path) -> str:
    """The serial console as text: CRs and ANSI escapes gone (FIELD-NOTES)."""
    raw = log.read_bytes().decode(errors="replace") if log.exists() else ""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", raw).replace("\r", "")


def qemu_argv(kernel: Path, initrd: Path) -> list[str]:
    return ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1", "-nographic", "-no-reboot", "-monitor", "none"]
