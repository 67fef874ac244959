"""The binhost's build system: a build session (``orchestrator.buildenv``) with the binhost's scripts,
its environment (signing, quickpkg jobs) and the facts its Portage reports about itself."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..buildenv import BuildRoot, BuildSession, SessionSpec, open_session
from ..config import BinhostConfig
from ..job import JobRun
from .facts import BinhostFacts, RepoFacts

BINHOST = SessionSpec(
    name="binhost",
    scripts=("binhost-info", "binhost-stale", "binhost-binpkgs", "binhost-sync", "binhost-world", "binhost-package",
             "binhost-index", "binhost-publish"),
    # emerge's lines worth a line in cron mail or the Jenkins console; the rest goes to the log file.
    notable=re.compile(r"^(>>> (Emerging|Installing|Completed|Syncing|Sync completed)|!!! |\s*\* (ERROR|Messages for)"
                       r"|binhost-package:|Action: sync)"),
)
FACTS_FILE = "facts.json"


def output_dir(run: JobRun, cfg: BinhostConfig) -> Path:
    return cfg.output_dir or run.general.state_dir / "binhost"


@dataclass
class BuildSystem:
    """One ``inv binhost`` session: the build session, the settings and where results go."""

    run: JobRun
    cfg: BinhostConfig
    session: BuildSession
    out_dir: Path

    @property
    def target(self):
        return self.session.target

    def save_facts(self, facts: BinhostFacts) -> None:
        """Kept for `inv binhost.serve` and client updates, which then need no chroot session."""
        if not self.target.dry:
            facts.save(self.out_dir / FACTS_FILE)

    def facts(self) -> BinhostFacts:
        info = self.session.probe_json("binhost-info")
        repos = tuple(RepoFacts(name, location, self.session.host_path(location))
                      for name, location in sorted(info["repos"].items()))
        return BinhostFacts(info["pkgdir"], self.session.host_path(info["pkgdir"]), repos)


def environment(cfg: BinhostConfig) -> dict[str, str]:
    """What every binhost script gets on top of the session's own: job count and signing settings."""
    env = {"QUICKPKG_JOBS": str(cfg.quickpkg_jobs or os.cpu_count() or 1)}
    signing = cfg.signing
    if signing.enabled:
        env.update(FEATURES="binpkg-signing", BINPKG_GPG_SIGNING_KEY=signing.key,
                   BINPKG_GPG_SIGNING_GPG_HOME=signing.gpg_home, BINPKG_GPG_VERIFY_GPG_HOME=signing.verify_home,
                   BINHOST_SIGNED="1")
    return env


@contextmanager
def build_system(run: JobRun, cfg: BinhostConfig) -> Iterator[BuildSystem]:
    """Open the binhost's build system for one job; everything is undone on the way out."""
    out = output_dir(run, cfg)
    where = BuildRoot(cfg.mode, cfg.root, "binhost.root")
    with open_session(run, BINHOST, where, log_dir=out / "logs", timeout=cfg.timeout,
                      env=environment(cfg)) as session:
        yield BuildSystem(run, cfg, session, out)
