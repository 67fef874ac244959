"""What the build system's Portage says about itself: PKGDIR and repositories.

Probed inside the build system (``chroot/binhost-info``) and saved beside the
rendered configs, so that serving and client updates need no chroot session.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from ..run.files import atomic_write


@dataclass(frozen=True)
class RepoFacts:
    name: str
    location: str  # as the build system's Portage sees it (inside the chroot)
    host_path: Path  # the same directory seen from the build box


@dataclass(frozen=True)
class BinhostFacts:
    pkgdir: str  # inside the build system
    pkgdir_host: Path  # seen from the build box
    repos: tuple[RepoFacts, ...]

    def repo(self, name: str) -> RepoFacts:
        for repo in self.repos:
            if repo.name == name:
                return repo
        raise ConfigError(f"binhost.repos: no repository named {name!r} in the build system "
                          f"(it has: {', '.join(r.name for r in self.repos) or 'none'})")

    def save(self, path: Path) -> None:
        data = {"pkgdir": self.pkgdir, "pkgdir_host": str(self.pkgdir_host),
                "repos": [{**asdict(r), "host_path": str(r.host_path)} for r in self.repos]}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BinhostFacts:
        data = json.loads(path.read_text())
        repos = tuple(RepoFacts(r["name"], r["location"], Path(r["host_path"])) for r in data["repos"])
        return cls(data["pkgdir"], Path(data["pkgdir_host"]), repos)
