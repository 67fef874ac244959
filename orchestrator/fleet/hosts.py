"""The host inventory: choosing hosts by name or ``@group``, and connecting to one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import FleetConfig, HostConfig
from ..errors import ConfigError
from ..job import JobRun
from ..run import RemoteTarget

ALL = "@all"


def select_hosts(cfg: FleetConfig, names: Sequence[str], *, option: str = "HOST") -> list[HostConfig]:
    """The hosts ``names`` mean, in inventory order, each once: a word is a host's name or ``@group``;
    no words (or ``@all``) mean every host. An unknown word is one line naming it and what is known."""
    if not cfg.hosts:
        raise ConfigError("fleet.hosts: no hosts configured")
    if not names:
        return list(cfg.hosts)
    wanted: set[str] = set()
    for word in names:
        wanted |= _expand(cfg, word, option)
    return [host for host in cfg.hosts if host.name in wanted]


def _expand(cfg: FleetConfig, word: str, option: str) -> set[str]:
    if word == ALL:
        return set(cfg.names)
    if word.startswith("@"):
        members = {host.name for host in cfg.hosts if word[1:] in host.groups}
        if members:
            return members
        known = ", ".join(f"@{group}" for group in cfg.groups) or "none"
        raise ConfigError(f"{option}: no group {word!r} in fleet.hosts (groups: {known}, {ALL})")
    if cfg.host(word) is None:
        raise ConfigError(f"{option}: no host {word!r} in fleet.hosts (known: {', '.join(cfg.names)})")
    return {word}


def connect(run: JobRun, host: HostConfig, *, echo: Callable[[str], None] | None = None,
            banner_timeout: float | None = None) -> RemoteTarget:
    """A ``RemoteTarget`` for ``host`` (use it as a context manager: it connects on first use and closes on
    exit), with the run's ``--dry`` and ``fleet.command_timeout`` as its default command timeout.

    A host behind a guard (``guard.images``) is knocked on (or sent its SPA packet) before every new
    connection, and its sshd's banner waited for (``banner_timeout``, default ``access.BANNER_TIMEOUT_S``):
    once hardened, that is the only way in, for every job."""
    from ..security.access import open_way  # the guard builds on the fleet, not the other way round

    cfg: FleetConfig = run.section("fleet")
    return RemoteTarget(host.host, user=host.user, port=host.port, key_filename=host.key_filename,
                        connect_timeout=host.connect_timeout, known_hosts=host.known_hosts, dry=run.dry,
                        echo=echo or run.echo, command_timeout=cfg.command_timeout,
                        before_connect=lambda: open_way(run, host, banner_timeout))


__all__ = ["ALL", "connect", "select_hosts"]
