"""A session on the build system: the chroot (or a Gentoo Prefix) where binaries and kernels are built.

In chroot mode every command runs through ``ChrootTarget`` (Handbook mounts in
a private namespace, one lock per chroot, leftovers named and ended), with a
clean environment (``env -i``), and the session's scripts from ``chroot/`` are
installed into the chroot first, where an admin finds them to run by hand. In
prefix mode the same scripts run on the build box with
``PORTAGE_OVERRIDE_EPREFIX`` set (how the tests drive real Portage from PyPI),
under a lock per prefix.

The lock belongs to the root, not to the kind of session: a binhost build and
a kernel build on the same chroot (or prefix) never run at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CommandError, ConfigError, OrchestratorError
from ..job import JobRun
from ..lock import held_lock
from ..run import ChrootTarget, LocalTarget
from ..run.base import Result, Target
from ..run.chroot import checked_root
from ..run.files import atomic_write
from ..streamlog import StreamLog

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "chroot"
INSIDE_DIR = PurePosixPath("/usr/local/libexec/gentoo-ec2-orchestrator")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MODES = ("chroot", "prefix")


@dataclass(frozen=True)
class SessionSpec:
    """One kind of build session: which ``chroot/`` scripts it runs, and which lines of their output
    are worth a line in cron mail or the Jenkins console (the rest goes to the script's log file)."""

    name: str  # "binhost", "kernel": for messages
    scripts: tuple[str, ...]
    notable: re.Pattern
    source: Path = SCRIPTS_DIR


@dataclass(frozen=True)
class BuildRoot:
    """Where a session runs, and the setting that names it (for errors)."""

    mode: str  # "chroot" or "prefix"
    root: Path
    setting: str  # e.g. "binhost.root"


class BuildSession:
    """Runs a spec's scripts in the build system and maps its paths to the build box."""

    def __init__(self, run: JobRun, spec: SessionSpec, where: BuildRoot, target: Target, *, log_dir: Path,
                 timeout: float, env: Mapping[str, str], log: StreamLog):
        self.run = run
        self.spec = spec
        self.where = where
        self.target = target
        self.log_dir = log_dir
        self.timeout = timeout
        self.env = dict(env)
        self.log = log  # the target's echo; .lines: the notable lines of the last streamed script

    @property
    def in_chroot(self) -> bool:
        return self.where.mode == "chroot"

    def host_path(self, inside: str) -> Path:
        """A path as the build system names it, seen from the build box."""
        if not self.in_chroot:
            return Path(inside)
        return self.where.root / PurePosixPath(inside).relative_to("/")

    def environment(self) -> dict[str, str]:
        """What every command gets: the spec's own variables; in a chroot, nothing of the build box's."""
        env = dict(self.env)
        if self.in_chroot:
            env.update(PATH=CHROOT_PATH, HOME="/root", TERM="dumb", LANG="C.UTF-8", NOCOLOR="true")
        else:
            env.update(PORTAGE_OVERRIDE_EPREFIX=str(self.where.root), NOCOLOR="true")
        return env

    def argv(self, script: str, args: Sequence[str], *, from_stdin: bool = False) -> list[str]:
        if not self.in_chroot:
            return [str(self.spec.source / script), *args]
        # env -i: the build box's environment (Jenkins' FEATURES, PORTAGE_*, MAKEFLAGS) must not leak in.
        assignments = [f"{k}={v}" for k, v in self.environment().items()]
        command = stdin_command((self.spec.source / script).read_text()) if from_stdin \
            else [str(INSIDE_DIR / script)]
        return ["/usr/bin/env", "-i", *assignments, *command, *args]

    def script(self, name: str, *args: str, stream: bool = False, mutates: bool = True) -> Result:
        """Run one of the spec's scripts; ``stream`` sends its output to ``<log_dir>/<name>.log`` and the
        notable lines to progress. A failure names the script (not the ``env -i`` wrapper) and its log."""
        if name not in self.spec.scripts:
            raise ValueError(f"{name} is not one of the {self.spec.name} session's scripts")
        env = None if self.in_chroot else self.environment()
        # --dry installs nothing in the chroot: a probe there runs the checkout's copy on stdin.
        from_stdin = self.in_chroot and self.target.dry and not mutates
        argv = self.argv(name, args, from_stdin=from_stdin)
        stdin = (self.spec.source / name).read_text() if from_stdin else None
        log_path = self.log_dir / f"{name}.log" if stream and not (self.target.dry and mutates) else None
        try:
            if log_path is None:
                return self.target.run(argv, env=env, input=stdin, timeout=self.timeout, mutates=mutates)
            with self.log.to(log_path, header=f"$ {shlex.join(argv)}\n"):
                return self.target.run(argv, env=env, timeout=self.timeout, stream=True, mutates=mutates)
        except CommandError as exc:
            output = exc.output.rstrip() + (f"\n(whole log: {log_path})" if log_path else "")
            raise CommandError([name, *args], exc.returncode, output, exc.where) from None

    def probe_json(self, name: str, *args: str) -> dict:
        """A read-only script that prints JSON (it runs under --dry too)."""
        result = self.script(name, *args, mutates=False)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise OrchestratorError(f"{self.target.describe()}: {name} printed no JSON: "
                                    f"{result.output[-300:]!r}") from None


def stdin_command(text: str) -> list[str]:
    """How to run a script fed on stdin: its ``#!`` interpreter (``env X`` unwrapped) reading the program
    from stdin (``python3 -``, ``sh -s --``), the script's own arguments following."""
    first = text.split("\n", 1)[0]
    words = first[2:].split() if first.startswith("#!") else ["/bin/sh"]
    if os.path.basename(words[0]) == "env":
        words = words[1:]
    if os.path.basename(words[0]).startswith("python"):
        return [*words, "-"]
    return [*words, "-s", "--"]


@contextmanager
def open_session(run: JobRun, spec: SessionSpec, where: BuildRoot, *, log_dir: Path, timeout: float,
                 env: Mapping[str, str] | None = None) -> Iterator[BuildSession]:
    """Open the build system for one job; everything is undone on the way out."""
    check_root(where)
    log = StreamLog(run, spec.notable)
    chroot = None
    try:
        with ExitStack() as stack:
            if where.mode == "chroot":
                chroot = ChrootTarget(where.root, lock_dir=run.general.state_dir / "locks", dry=run.dry, echo=log)
                target = stack.enter_context(chroot)
                install_scripts(target.root, spec, dry=run.dry, say=run.progress.say, setting=where.setting)
            else:
                if not run.dry:
                    stack.enter_context(held_lock(prefix_lock(run, where.root), f"build session in prefix {where.root}"))
                target = LocalTarget(dry=run.dry, echo=log)
            yield BuildSession(run, spec, where, target, log_dir=log_dir, timeout=timeout, env=env or {}, log=log)
    finally:
        if chroot is not None and chroot.leftover_processes:
            run.report.warnings.append("still running in the chroot at the end: "
                                       + ", ".join(map(str, chroot.leftover_processes)))


def check_root(where: BuildRoot) -> None:
    root = where.root
    if where.mode not in MODES:
        raise ConfigError(f"{where.setting}: mode {where.mode!r} is not one of {', '.join(MODES)}")
    if not root.is_dir():
        raise ConfigError(f"{where.setting}: {root} is not a directory"
                          + (" (unpack a stage3 there first)" if where.mode == "chroot" else ""))
    if where.mode == "chroot":
        try:
            checked_root(root, need_etc=True)
        except ConfigError as exc:
            raise ConfigError(f"{where.setting}: {exc}") from None
    elif not (root / "etc" / "portage").is_dir():
        raise ConfigError(f"{where.setting}: {root} has no etc/portage; not a Portage prefix")


def prefix_lock(run: JobRun, root: Path) -> Path:
    """One lock per prefix, whatever kind of session opens it (as ChrootTarget's one lock per chroot)."""
    digest = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:12]
    return run.general.state_dir / "locks" / f"prefix-{digest}.lock"


def install_scripts(root: Path, spec: SessionSpec, *, dry: bool, say: Callable[[str], None],
                    setting: str) -> list[str]:
    """Copy the spec's scripts into the chroot when they differ; returns the names copied."""
    inside = root / INSIDE_DIR.relative_to("/")
    real = os.path.realpath(inside)
    if real != str(inside) and not real.startswith(str(root).rstrip("/") + "/"):
        raise ConfigError(f"{setting}: {inside} resolves to {real}, outside the chroot; refusing to write there")
    changed = [name for name in spec.scripts if _differs(spec.source / name, inside / name)]
    if not changed:
        return []
    if dry:
        say(f"[dry-run] would install {', '.join(changed)} into {inside}")
        return changed
    inside.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in changed:
        atomic_write(inside / name, (spec.source / name).read_bytes(), mode=0o755)
    say(f"scripts: installed {', '.join(changed)} into {INSIDE_DIR}")
    return changed


def _differs(source: Path, dest: Path) -> bool:
    try:
        return dest.read_bytes() != source.read_bytes() or not os.access(dest, os.X_OK)
    except FileNotFoundError:
        return True
