"""How the binhost is exposed to instances: rsyncd.conf for the ebuild tree,
an nginx or Apache snippet for PKGDIR.

Every value that reaches a rendered file comes from config or from the build
system's facts, so each one is checked here for the format it lands in: a
value that the format cannot carry safely (a newline, a quote, a variable
sigil) is a ``ConfigError`` naming where it came from, never a broken config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import BinhostConfig
from ..errors import ConfigError
from ..run.base import Target
from ..templating import check_value, render
from .facts import BinhostFacts, RepoFacts

FILES = {
    "rsyncd.conf": "rsyncd.conf.j2",
    "nginx-binhost.conf": "nginx-binhost.conf.j2",
    "apache-binhost.conf": "apache-binhost.conf.j2",
}
MAX_CONNECTIONS = 32
RSYNC_TIMEOUT_S = 600  # rsync's I/O timeout: a stalled client frees its slot
SETTINGS = {"address": "binhost.serve.listen_address", "hosts_allow": "binhost.serve.hosts_allow",
            "repos": "binhost.repos", "url_path": "binhost.serve.url_path", "pkgdir": "PKGDIR (binhost facts)"}

REPO_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_-]*")  # PMS 3.1.5, also a safe rsync module name
HOST_RE = re.compile(r"[A-Za-z0-9.:_-]+")
HOST_PATTERN_RE = re.compile(r"[A-Za-z0-9.:/*?_\[\]-]+")  # rsyncd "hosts allow": address, CIDR, wildcard name
URL_PATH_RE = re.compile(r"(/[A-Za-z0-9._~+-]+)+")
WEB_UNSAFE = set('"\\$*?[]')  # quote/escape/variable characters, and Apache <Directory> wildcards


@dataclass(frozen=True)
class PublishedRepo:
    name: str
    path: str  # on the build box


def render_exposure(cfg: BinhostConfig, facts: BinhostFacts, *, pid_file: Path | None = None,
                    lock_file: Path | None = None) -> dict[str, str]:
    """Render rsyncd.conf, the nginx snippet and the Apache snippet.

    ``lock_file`` defaults to rsync's own (/var/run/rsyncd.lock); a daemon
    started for one run passes its own so ``max connections`` slots are not
    shared with another daemon.
    """
    pkgdir = web_path(str(facts.pkgdir_host), "PKGDIR (binhost facts pkgdir_host)")
    values = {
        "address": host_value(cfg.serve.listen_address, "binhost.serve.listen_address"),
        "rsync_port": port_value(cfg.serve.rsync_port, "binhost.serve.rsync_port"),
        "pid_file": rsync_path(str(pid_file), "rsync pid file") if pid_file else None,
        "lock_file": rsync_path(str(lock_file), "rsync lock file") if lock_file else None,
        "max_connections": MAX_CONNECTIONS,
        "timeout": RSYNC_TIMEOUT_S,
        "hosts_allow": [host_pattern(h, f"binhost.serve.hosts_allow[{i}]")
                        for i, h in enumerate(cfg.serve.hosts_allow)],
        "repos": [PublishedRepo(r.name, rsync_path(str(r.host_path), f"binhost.repos: repository {r.name!r} path"))
                  for r in published_repos(cfg, facts)],
        "url_path": url_path(cfg.serve.url_path),
        "pkgdir": pkgdir,
    }
    return {name: render(template, values, settings=SETTINGS) for name, template in FILES.items()}


def published_repos(cfg: BinhostConfig, facts: BinhostFacts) -> list[RepoFacts]:
    """``binhost.repos`` in order, or every repository of the build system when it is empty."""
    names = list(dict.fromkeys(cfg.repos)) or [r.name for r in facts.repos]
    if not names:
        raise ConfigError("binhost.repos: the build system has no repositories to publish")
    for name in names:
        if not REPO_NAME_RE.fullmatch(name):
            raise ConfigError(f"binhost.repos: {name!r} is not a valid repository name")
    return [facts.repo(name) for name in names]


def url_path(value: str) -> str:
    """``/binpkgs`` (a trailing slash is dropped): plain URL segments only, no ``.``/``..``."""
    path = value.rstrip("/")
    segments = path.split("/")[1:]
    if not URL_PATH_RE.fullmatch(path) or any(s in (".", "..") for s in segments):
        raise ConfigError(f"binhost.serve.url_path: expected a path like /binpkgs "
                          f"(letters, digits, . _ ~ + -), got {value!r}")
    return path


def host_value(value: str, key: str) -> str:
    if not HOST_RE.fullmatch(value):
        raise ConfigError(f"{key}: expected an IP address or host name, got {value!r}")
    return value


def host_pattern(value: str, key: str) -> str:
    if not HOST_PATTERN_RE.fullmatch(value):
        raise ConfigError(f"{key}: expected an address, network (10.0.0.0/8) or host name pattern, got {value!r}")
    return value


def port_value(value: int, key: str) -> int:
    if not 0 < value < 65536:
        raise ConfigError(f"{key}: expected a TCP port 1-65535, got {value}")
    return value


def rsync_path(value: str, key: str) -> str:
    """rsyncd.conf takes the rest of the line verbatim (spaces included), trimmed.

    So only what the line format itself cannot carry is refused: control
    characters, surrounding blanks, and a trailing backslash (a continuation).
    ``%`` is escaped at render time (rsync expands ``%VAR%``).
    """
    _plain_path(value, key)
    if value.endswith("\\"):
        raise ConfigError(f"{key}: {value!r} ends with a backslash, which rsyncd.conf reads as a line continuation")
    return value


def web_path(value: str, key: str) -> str:
    """A path for a double-quoted nginx/Apache argument: no quote, escape, ``$`` or wildcard inside."""
    _plain_path(value, key)
    bad = sorted(set(value) & WEB_UNSAFE)
    if bad:
        raise ConfigError(f"{key}: {value!r} contains {' '.join(bad)}, which web server configs "
                          f"would read as quoting, variables or wildcards")
    return value.rstrip("/") or "/"


def _plain_path(value: str, key: str) -> None:
    check_value(value, key)
    if value != value.strip() or not value.startswith("/"):
        raise ConfigError(f"{key}: expected an absolute path without surrounding blanks, got {value!r}")


def write_rendered(files: dict[str, str], out_dir: Path, target: Target) -> list[str]:
    """Replace each file whose content differs (``Target.replace_file``); return the names that changed.

    The version each replaces is kept as ``.<name>.previous``: a dot file, which
    Portage skips when a rendered ``clients/<name>/...`` tree is baked into an image.
    """
    return [name for name, text in files.items() if target.replace_file(out_dir / name, text)]
