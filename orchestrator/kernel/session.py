"""The build session for kernels: our ``chroot/kernel-*`` scripts in the binhost's build system.

``open_build_session`` is the one place that knows where the build session
comes from. Today that is ``binhost.session`` (made for binhost's scripts and
emerge's lines); once the session has a room of its own (``buildenv``, taking
the scripts and the lines worth showing as parameters) only this module changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..binhost import session as buildenv
from ..config import BinhostConfig
from ..errors import ConfigError, OrchestratorError
from ..job import JobRun

SCRIPTS = ("kernel-info", "kernel-sources", "kernel-config", "kernel-build", "kernel-initramfs")
# kbuild's own short lines (`  CC      fs/open.o`, `  LD      vmlinux`), errors, and the steps
# of emerge, genkernel and dracut; everything else is only in the log file.
NOTABLE = re.compile(r"^(\s{2}[A-Z][A-Z0-9_]*(\s\[M\])?\s+\S|Kernel: |.*\berror[:\s]|make(\[\d+\])?: \*\*\*"
                     r"|>>> (Emerging|Installing|Completed)|!!! |\s*\* (ERROR|Messages for|(kernel|initramfs): >> )"
                     r"|dracut(\[[A-Z]\])?: \*\*\* )", re.I)


class KernelSession:
    """Runs our kernel scripts in the build system; paths are as the build system sees them."""

    def __init__(self, system: buildenv.BuildSystem, log_dir: Path):
        self.system = system
        self.system.log_dir = log_dir
        self.dry = system.target.dry

    @property
    def in_chroot(self) -> bool:
        return self.system.in_chroot

    def inside(self, path: str) -> str:
        """A path of ours (``kernel.work_dir``, ``source.path``) as the scripts see it: under the EPREFIX in a prefix."""
        if self.in_chroot:
            return path
        return str(self.system.cfg.root / PurePosixPath(path).relative_to("/"))

    def host_path(self, inside: str) -> Path:
        """A path the scripts print, seen from the build box; never outside the chroot.

        We copy into, read from and delete under these paths from the build box: a symlink
        in the chroot pointing at the host's own directories must not take us there.
        """
        path = self.system.host_path(inside)
        if self.in_chroot:
            root = os.path.realpath(self.system.cfg.root)
            real = os.path.realpath(path)
            if real != root and not real.startswith(root.rstrip("/") + "/"):
                raise OrchestratorError(f"{inside} in the chroot resolves to {real}, outside {root}; "
                                        "refusing to touch it (check kernel.work_dir)")
        return path

    def probe(self, name: str, *args: str) -> dict:
        return self.system.probe_json(name, *args)

    def step(self, name: str, *args: str, echo: Callable[[str], None]) -> dict:
        """Run a script that changes things; its whole output goes to its log, the notable lines to us.

        Under ``--dry`` the script runs with ``--dry`` (it runs nothing, it prints each
        command as ``$ ...``) and ``echo`` gets those commands.
        """
        if self.dry:
            result = self.system.script(name, *args, "--dry", mutates=False)
            for line in result.stdout.splitlines():
                if line.startswith("$ "):
                    echo(f"[dry-run] {self.system.target.describe()}: {line[2:]}")
        else:
            result = self.system.script(name, *args, stream=True)
        return _last_json(name, result.stdout)


@contextmanager
def open_build_session(run: JobRun, cfg: BinhostConfig, *, log_dir: Path, timeout: int) -> Iterator[KernelSession]:
    """The binhost's build system (chroot or prefix, its lock), with our kernel scripts in it."""
    with buildenv.build_system(run, dataclasses.replace(cfg, timeout=timeout)) as system:
        system.log.notable = NOTABLE
        if system.in_chroot:
            install_scripts(system.target.root, dry=run.dry, say=run.progress.say)
        yield KernelSession(system, log_dir)


def install_scripts(root: Path, *, dry: bool, say: Callable[[str], None]) -> list[str]:
    """Copy our kernel scripts into the chroot beside binhost's when they differ; returns the names copied."""
    inside = root / buildenv.INSIDE_DIR.relative_to("/")
    real = os.path.realpath(inside)
    if real != str(inside) and not real.startswith(str(root).rstrip("/") + "/"):
        raise ConfigError(f"binhost.root: {inside} resolves to {real}, outside the chroot; refusing to write there")
    changed = [name for name in SCRIPTS if _differs(buildenv.SCRIPTS_DIR / name, inside / name)]
    if not changed:
        return []
    if dry:
        say(f"[dry-run] would install {', '.join(changed)} into {inside}")
        return changed
    inside.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in changed:
        tmp = inside / f".{name}.tmp"
        tmp.write_bytes((buildenv.SCRIPTS_DIR / name).read_bytes())
        tmp.chmod(0o755)
        os.replace(tmp, inside / name)
    say(f"scripts: installed {', '.join(changed)} into {buildenv.INSIDE_DIR}")
    return changed


def _differs(source: Path, dest: Path) -> bool:
    try:
        return dest.read_bytes() != source.read_bytes() or not os.access(dest, os.X_OK)
    except FileNotFoundError:
        return True


def _last_json(name: str, stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise OrchestratorError(f"{name} printed no JSON at the end: {stdout[-300:]!r}") from None
