"""A session on the build system: the chroot (or a Gentoo Prefix) where binaries are built.

In chroot mode every command runs through ``ChrootTarget`` (Handbook mounts in a
private namespace, a lock per chroot, leftovers named and ended), with a clean
environment, and our scripts from ``chroot/`` are installed into the chroot
first, where an admin finds them to run by hand. In prefix mode the same
scripts run on the build box with ``PORTAGE_OVERRIDE_EPREFIX`` set: that is
how the tests drive real Portage from PyPI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath

from ..config import BinhostConfig
from ..errors import CommandError, ConfigError, OrchestratorError
from ..job import JobRun
from ..lock import held_lock
from ..run import ChrootTarget, LocalTarget
from ..run.chroot import checked_root
from ..run.base import Result, Target
from .facts import BinhostFacts, RepoFacts
from .streamlog import StreamLog

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "chroot"
INSIDE_DIR = PurePosixPath("/usr/local/libexec/gentoo-ec2-orchestrator")
SCRIPTS = ("binhost-info", "binhost-stale", "binhost-binpkgs", "binhost-sync", "binhost-world", "binhost-package",
           "binhost-index", "binhost-publish")
FACTS_FILE = "facts.json"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Lines of emerge's output worth a line in cron mail or the Jenkins console; the rest goes to the log file.
NOTABLE = re.compile(r"^(>>> (Emerging|Installing|Completed|Syncing|Sync completed)|!!! |\s*\* (ERROR|Messages for)"
                     r"|binhost-package:|Action: sync)")


def output_dir(run: JobRun, cfg: BinhostConfig) -> Path:
    return cfg.output_dir or run.general.state_dir / "binhost"


class BuildSystem:
    """Runs our ``chroot/`` scripts in the build system and maps its paths to the build box."""

    def __init__(self, run: JobRun, cfg: BinhostConfig, target: Target, out_dir: Path, log: StreamLog):
        self.run = run
        self.cfg = cfg
        self.target = target
        self.out_dir = out_dir
        self.log_dir = out_dir / "logs"
        self.log = log  # the target's echo; .lines: the notable lines of the last streamed script

    @property
    def in_chroot(self) -> bool:
        return self.cfg.mode == "chroot"

    def host_path(self, inside: str) -> Path:
        """A path as the build system's Portage names it, seen from the build box."""
        if not self.in_chroot:
            return Path(inside)
        return self.cfg.root / PurePosixPath(inside).relative_to("/")

    def environment(self) -> dict[str, str]:
        """What every command gets: signing settings, job count; in a chroot, nothing of ours else."""
        env = {"QUICKPKG_JOBS": str(self.cfg.quickpkg_jobs or os.cpu_count() or 1)}
        signing = self.cfg.signing
        if signing.enabled:
            env.update(FEATURES="binpkg-signing", BINPKG_GPG_SIGNING_KEY=signing.key,
                       BINPKG_GPG_SIGNING_GPG_HOME=signing.gpg_home, BINPKG_GPG_VERIFY_GPG_HOME=signing.verify_home,
                       BINHOST_SIGNED="1")
        if self.in_chroot:
            env.update(PATH=CHROOT_PATH, HOME="/root", TERM="dumb", LANG="C.UTF-8", NOCOLOR="true")
        else:
            env.update(PORTAGE_OVERRIDE_EPREFIX=str(self.cfg.root), NOCOLOR="true")
        return env

    def argv(self, script: str, args: Sequence[str], *, from_stdin: bool = False) -> list[str]:
        if not self.in_chroot:
            return [str(SCRIPTS_DIR / script), *args]
        # env -i: the build box's environment (Jenkins' FEATURES, PORTAGE_*) must not leak in.
        assignments = [f"{k}={v}" for k, v in self.environment().items()]
        command = ["python3", "-"] if from_stdin else [str(INSIDE_DIR / script)]
        return ["/usr/bin/env", "-i", *assignments, *command, *args]

    def script(self, name: str, *args: str, stream: bool = False, mutates: bool = True) -> Result:
        """Run one of our scripts; ``stream`` sends its output to the stage log and notable lines to us.

        A failure names the script (not the ``env -i`` wrapper) and, when streamed, its log.
        """
        env = None if self.in_chroot else self.environment()
        # --dry installs nothing in the chroot: a probe there runs the checkout's copy on stdin.
        from_stdin = self.in_chroot and self.target.dry and not mutates
        argv = self.argv(name, args, from_stdin=from_stdin)
        stdin = (SCRIPTS_DIR / name).read_text() if from_stdin else None
        log_path = self.log_dir / f"{name}.log" if stream and not (self.target.dry and mutates) else None
        try:
            if log_path is None:
                return self.target.run(argv, env=env, input=stdin, timeout=self.cfg.timeout, mutates=mutates)
            return self._streamed(argv, log_path, env, mutates)
        except CommandError as exc:
            output = exc.output.rstrip() + (f"\n(whole log: {log_path})" if log_path else "")
            raise CommandError([name, *args], exc.returncode, output, exc.where) from None

    def _streamed(self, argv: list[str], log_path: Path, env, mutates: bool) -> Result:
        with self.log.to(log_path, header=f"$ {shlex.join(argv)}\n"):
            return self.target.run(argv, env=env, timeout=self.cfg.timeout, stream=True, mutates=mutates)

    def probe_json(self, name: str, *args: str) -> dict:
        result = self.script(name, *args, mutates=False)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise OrchestratorError(f"{self.target.describe()}: {name} printed no JSON: "
                                    f"{result.output[-300:]!r}") from None

    def save_facts(self, facts: BinhostFacts) -> None:
        """Kept for `inv binhost.serve` and client updates, which then need no chroot session."""
        if not self.target.dry:
            facts.save(self.out_dir / FACTS_FILE)

    def facts(self) -> BinhostFacts:
        info = self.probe_json("binhost-info")
        repos = tuple(RepoFacts(name, location, self.host_path(location))
                      for name, location in sorted(info["repos"].items()))
        return BinhostFacts(info["pkgdir"], self.host_path(info["pkgdir"]), repos)


@contextmanager
def build_system(run: JobRun, cfg: BinhostConfig) -> Iterator[BuildSystem]:
    """Open the build system for one job; everything is undone on the way out."""
    check_root(cfg)
    log = StreamLog(run, NOTABLE)
    chroot = None
    try:
        with ExitStack() as stack:
            if cfg.mode == "chroot":
                chroot = ChrootTarget(cfg.root, lock_dir=run.general.state_dir / "locks", dry=run.dry, echo=log)
                target = stack.enter_context(chroot)
                install_scripts(target.root, dry=run.dry, say=run.progress.say)
            else:
                if not run.dry:
                    stack.enter_context(held_lock(_prefix_lock(run, cfg), f"binhost prefix {cfg.root}"))
                target = LocalTarget(dry=run.dry, echo=log)
            yield BuildSystem(run, cfg, target, output_dir(run, cfg), log)
    finally:
        if chroot is not None and chroot.leftover_processes:
            run.report.warnings.append("still running in the chroot at the end: "
                                       + ", ".join(map(str, chroot.leftover_processes)))


def check_root(cfg: BinhostConfig) -> None:
    root = cfg.root
    if not root.is_dir():
        raise ConfigError(f"binhost.root: {root} is not a directory"
                          + (" (unpack a stage3 there first)" if cfg.mode == "chroot" else ""))
    if cfg.mode == "chroot":
        try:
            checked_root(root, need_etc=True)
        except ConfigError as exc:
            raise ConfigError(f"binhost.root: {exc}") from None
    elif not (root / "etc" / "portage").is_dir():
        raise ConfigError(f"binhost.root: {root} has no etc/portage; not a Portage prefix")


def _prefix_lock(run: JobRun, cfg: BinhostConfig) -> Path:
    digest = hashlib.sha256(os.fsencode(cfg.root.resolve())).hexdigest()[:12]
    return run.general.state_dir / "locks" / f"binhost-prefix-{digest}.lock"


def install_scripts(root: Path, *, dry: bool, say: Callable[[str], None]) -> list[str]:
    """Copy our scripts into the chroot when they differ; returns the names copied."""
    inside = root / INSIDE_DIR.relative_to("/")
    real = os.path.realpath(inside)
    if real != str(inside) and not real.startswith(str(root).rstrip("/") + "/"):
        raise ConfigError(f"binhost.root: {inside} resolves to {real}, outside the chroot; refusing to write there")
    changed = [name for name in SCRIPTS if _differs(SCRIPTS_DIR / name, inside / name)]
    if not changed:
        return []
    if dry:
        say(f"[dry-run] would install {', '.join(changed)} into {inside}")
        return changed
    inside.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in changed:
        tmp = inside / f".{name}.tmp"
        tmp.write_bytes((SCRIPTS_DIR / name).read_bytes())
        tmp.chmod(0o755)
        os.replace(tmp, inside / name)
    say(f"scripts: installed {', '.join(changed)} into {INSIDE_DIR}")
    return changed


def _differs(source: Path, dest: Path) -> bool:
    try:
        return dest.read_bytes() != source.read_bytes() or not os.access(dest, os.X_OK)
    except FileNotFoundError:
        return True
