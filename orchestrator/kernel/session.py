"""The build session for kernels: our ``chroot/kernel-*`` scripts in the binhost's build system.

The build system is the binhost's (``binhost.mode``, ``binhost.root``): the seed
built its EC2 kernel in the chroot it built packages in, and ``buildenv``'s one
lock per chroot keeps a kernel build and a binhost build from running at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..buildenv import BuildRoot, BuildSession, SessionSpec, open_session
from ..config import BinhostConfig
from ..errors import OrchestratorError
from ..job import JobRun

KERNEL = SessionSpec(
    name="kernel",
    scripts=("kernel-info", "kernel-sources", "kernel-config", "kernel-build", "kernel-initramfs"),
    # kbuild's own short lines (`  CC      fs/open.o`, `  LD      vmlinux`), errors, and the steps
    # of emerge, genkernel and dracut; everything else is only in the log file.
    notable=re.compile(r"^(\s{2}[A-Z][A-Z0-9_]*(\s\[M\])?\s+\S|Kernel: |.*\berror[:\s]|make(\[\d+\])?: \*\*\*"
                       r"|>>> (Emerging|Installing|Completed)|!!! |\s*\* (ERROR|Messages for|(kernel|initramfs): >> )"
                       r"|dracut(\[[A-Z]\])?: \*\*\* )", re.I),
)
SCRIPTS = KERNEL.scripts
NOTABLE = KERNEL.notable


class KernelSession:
    """Runs our kernel scripts in the build system; paths are as the build system sees them."""

    def __init__(self, build: BuildSession):
        self.build = build
        self.dry = build.target.dry

    @property
    def in_chroot(self) -> bool:
        return self.build.in_chroot

    @property
    def log_dir(self) -> Path:
        return self.build.log_dir

    @log_dir.setter
    def log_dir(self, path: Path) -> None:
        self.build.log_dir = path

    def inside(self, path: str) -> str:
        """A path of ours (``kernel.work_dir``, ``source.path``) as the scripts see it: under the EPREFIX in a prefix."""
        if self.in_chroot:
            return path
        return str(self.build.where.root / PurePosixPath(path).relative_to("/"))

    def host_path(self, inside: str) -> Path:
        """A path the scripts print, seen from the build box; never outside the chroot.

        We copy into, read from and delete under these paths from the build box: a symlink
        in the chroot pointing at the host's own directories must not take us there.
        """
        path = self.build.host_path(inside)
        if self.in_chroot:
            root = os.path.realpath(self.build.where.root)
            real = os.path.realpath(path)
            if real != root and not real.startswith(root.rstrip("/") + "/"):
                raise OrchestratorError(f"{inside} in the chroot resolves to {real}, outside {root}; "
                                        "refusing to touch it (check kernel.work_dir)")
        return path

    def probe(self, name: str, *args: str) -> dict:
        return self.build.probe_json(name, *args)

    def step(self, name: str, *args: str, echo: Callable[[str], None]) -> dict:
        """Run a script that changes things; its whole output goes to its log, the notable lines to us.

        Under ``--dry`` the script runs with ``--dry`` (it runs nothing, it prints each
        command as ``$ ...``) and ``echo`` gets those commands.
        """
        if self.dry:
            result = self.build.script(name, *args, "--dry", mutates=False)
            for line in result.stdout.splitlines():
                if line.startswith("$ "):
                    echo(f"[dry-run] {self.build.target.describe()}: {line[2:]}")
        else:
            result = self.build.script(name, *args, stream=True)
        return _last_json(name, result.stdout)


@contextmanager
def open_build_session(run: JobRun, cfg: BinhostConfig, *, log_dir: Path, timeout: int) -> Iterator[KernelSession]:
    """The binhost's build system (chroot or prefix, its lock), with our kernel scripts in it."""
    where = BuildRoot(cfg.mode, cfg.root, "binhost.root")
    with open_session(run, KERNEL, where, log_dir=log_dir, timeout=timeout) as build:
        yield KernelSession(build)


def _last_json(name: str, stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise OrchestratorError(f"{name} printed no JSON at the end: {stdout[-300:]!r}") from None
