"""Point instances at the binhost and update them from binaries only, over SSH.

Three ways, as in the seed:

direct   the instance reaches the build box's rsync daemon and web server itself
tunnel   ``ssh -R``: the instance's loopback ports lead back to the build box,
         rsync and HTTP through one SSH session (one dispatching handler; see
         RemoteTarget.forward_remote_many)
tarball  the published trees and PKGDIR are shipped as one tar and unpacked on
         the instance; Portage then syncs and fetches from ``file://``

Every way ends the same: our repos.conf / binrepos.conf (and, for old Portage,
a marked make.conf block) are validated and replaced on the instance
(``Target.replace_file``); then ``emerge --sync`` and
``emerge -uDNGK @world``. What was installed, and what a source build would
still update (skipped for lack of a binary package), is reported per instance.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BinhostConfig, ClientConfig, FleetConfig, HostConfig
from ..errors import CommandError, ConfigError
from ..job import JobRun
from ..portage_conf import ClientUris, legacy_make_conf_block, merge_make_conf, render_client_configs
from ..fleet import run_on_hosts
from ..run import RemoteTarget
from . import signing
from .exposure import published_repos, url_path
from .facts import BinhostFacts
from .system import FACTS_FILE, output_dir
from ..streamlog import StreamLog

INSTALLED = re.compile(r"^>>> Emerging binary \(\d+ of \d+\) (\S+?)(?:::\S+)?\s*$")
PRETEND = re.compile(r"^\[(ebuild|binary)[^\]]*\]\s+(\S+?)(?:::\S+)?(?:\s|$)")
NOTABLE = re.compile(r"^(>>> (Emerging|Installing|Syncing|Sync completed)|!!! |\s*\* (ERROR|Messages for)"
                     r"|Action: sync)")
TARBALL = "binhost.tar.zst"
MODES = ("direct", "tunnel", "tarball")


@dataclass
class ClientOutcome:
    name: str
    mode: str
    dry: bool = False
    configs_written: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.mode}, installed {len(self.installed)}"
        if self.installed:
            text += f" ({', '.join(self.installed)})"
        text += f"; no binary package for {len(self.skipped)}"
        if self.skipped:
            text += f" ({', '.join(self.skipped)})"
        if not self.configs_written:
            return f"{text}; configs unchanged"
        return f"{text}; {'would write' if self.dry else 'wrote'} {len(self.configs_written)} config file(s)"


def update_clients(run: JobRun, only: list[str] | None = None, mode: str | None = None) -> None:
    """Update every selected instance, ``fleet.parallel`` at a time (``run_on_hosts``); one failing
    instance does not stop the others. Each one's outcome is in the report under its name."""
    cfg: BinhostConfig = run.section("binhost")
    fleet: FleetConfig = run.section("fleet")
    clients = {client.host: client for client in select_clients(cfg, only)}
    cfg.check_hosts(fleet.names)
    facts = saved_facts(run, cfg)
    logs = {name: StreamLog(run, NOTABLE, prefix=f"{name}: ") for name in clients}

    def update(host: HostConfig, remote: RemoteTarget) -> ClientOutcome:
        client = clients[host.name]
        run.progress.say(f"{host.name}: updating ({mode or client.mode})")
        return update_client(run, cfg, facts, client, mode or client.mode, remote, logs[host.name])

    results = run_on_hosts(run, [fleet.host(name) for name in clients], update, what="update from the binhost",
                           echo_for=lambda host: logs[host.name])
    for name in clients:
        if name in results.failed:
            run.report.summary[name] = f"FAILED: {results.failed[name]}"
            continue
        outcome = results.succeeded[name]
        run.report.summary[name] = outcome.line()
        run.report.summary.setdefault("clients", {})[name] = {
            "mode": outcome.mode, "installed": outcome.installed, "skipped": outcome.skipped,
            "configs_written": outcome.configs_written}
    results.raise_if_failed("update from the binhost")


def select_clients(cfg: BinhostConfig, only: list[str] | None) -> list[ClientConfig]:
    if not cfg.clients:
        raise ConfigError("binhost.clients: no instances configured")
    if not only:
        return list(cfg.clients)
    known = {client.host: client for client in cfg.clients}
    missing = [name for name in only if name not in known]
    if missing:
        raise ConfigError(f"--only: no instance named {missing[0]!r} in binhost.clients "
                          f"(known: {', '.join(known)})")
    return [known[name] for name in dict.fromkeys(only)]


def saved_facts(run: JobRun, cfg: BinhostConfig) -> BinhostFacts:
    path = output_dir(run, cfg) / FACTS_FILE
    if not path.exists():
        raise ConfigError(f"{path}: no build-system facts yet; run `inv binhost` first")
    return BinhostFacts.load(path)


def update_client(run: JobRun, cfg: BinhostConfig, facts: BinhostFacts, client: ClientConfig, mode: str,
                  remote: RemoteTarget, log: StreamLog) -> ClientOutcome:
    """One instance, over ``remote`` (whose echo is ``log``): configs, ``emerge --sync``, ``emerge -uDNGK``."""
    outcome = ClientOutcome(client.name, mode, run.dry)
    repos = [repo.name for repo in published_repos(cfg, facts)]
    log_dir = output_dir(run, cfg) / "logs"
    with _reachable(run, cfg, facts, client, remote, mode, repos) as uris:
        if cfg.signing.enabled:
            _trust_binhost_key(run, cfg, client, remote)
        outcome.configs_written = write_configs(remote, client, repos, uris, cfg.signing.enabled)
        _emerge(remote, client, ["--sync"], log, log_dir / f"{client.name}-sync.log")
        _emerge(remote, client, ["--ask=n", "--verbose", "--update", "--deep", "--newuse", "--getbinpkgonly",
                                 "--usepkgonly", "@world"], log, log_dir / f"{client.name}-update.log")
        outcome.installed = [m.group(1) for line in log.lines if (m := INSTALLED.match(line))]
        outcome.skipped = still_outdated(remote, client)
    return outcome


def _trust_binhost_key(run: JobRun, cfg: BinhostConfig, client: ClientConfig, remote: RemoteTarget) -> None:
    key = signing.load(output_dir(run, cfg) / signing.KEY_FILE)
    home = client.env.get("BINPKG_GPG_VERIFY_GPG_HOME") or f"{client.eprefix}{cfg.signing.verify_home}"
    if signing.ensure_trusted(remote, home, key):
        run.progress.say(f"{client.name}: {home} now trusts the binhost key {key.fingerprint}")


def still_outdated(remote: RemoteTarget, client: ClientConfig) -> list[str]:
    """What ``-uDN @world`` would still do from source: the updates skipped for lack of a binary package."""
    if remote.dry:
        return []
    result = remote.run(["emerge", "--pretend", "--color=n", "--quiet", "--update", "--deep", "--newuse",
                         "@world"], env=client.env or None, timeout=client.timeout, mutates=False)
    return [m.group(2) for line in result.stdout.splitlines() if (m := PRETEND.match(line.strip()))]


def _emerge(remote: RemoteTarget, client: ClientConfig, args: list[str], log: StreamLog, path: Path) -> None:
    """emerge on the instance, its whole output in ``path``; a failure names that file."""
    argv = ["emerge", "--color=n", *args]
    if remote.dry:
        remote.run(argv, env=client.env or None)  # printed, not run; no log file
        return
    with log.to(path):
        try:
            remote.run(argv, env=client.env or None, timeout=client.timeout, stream=True)
        except CommandError as exc:
            raise CommandError(exc.argv, exc.returncode, f"{exc.output.rstrip()}\n(whole log: {path})",
                               exc.where) from None


# --- configuration files on the instance ----------------------------------


def write_configs(remote: RemoteTarget, client: ClientConfig, repos: list[str], uris: ClientUris,
                  signed: bool) -> list[str]:
    """Write what differs (``Target.replace_file``: atomic, the old file kept as ``.<name>.previous``,
    a dot file Portage skips in its .conf directories). Every file was validated with Portage's
    own parsers when it was rendered. Returns the paths written (or, under --dry, that would be)."""
    files = render_client_configs(client, repos, uris, verify_signature=signed)
    if client.legacy_make_conf:
        make_conf = f"{client.eprefix}/etc/portage/make.conf"
        current = remote.read_file(make_conf) or ""
        files[make_conf] = merge_make_conf(current, legacy_make_conf_block(uris, repos), make_conf)
    return [path for path, text in files.items() if remote.replace_file(path, text)]


# --- how the instance reaches the binhost ---------------------------------


@contextmanager
def _reachable(run: JobRun, cfg: BinhostConfig, facts: BinhostFacts, client: ClientConfig,
               remote: RemoteTarget, mode: str, repos: list[str]) -> Iterator[ClientUris]:
    if mode == "direct":
        yield planned_uris(cfg, client, repos, mode)
    elif mode == "tunnel":
        pairs = [(client.tunnel_rsync_port, cfg.serve.rsync_port), (client.tunnel_http_port, cfg.serve.http_port)]
        with remote.forward_remote_many(pairs) as ports:
            yield planned_uris(cfg, client, repos, mode, tunnel_ports=tuple(ports))
    elif mode == "tarball":
        ship_tarball(run, cfg, facts, client, remote, repos)
        yield planned_uris(cfg, client, repos, mode)
    else:
        raise ConfigError(f"binhost.clients[{client.name}].mode: {mode!r} is not one of direct, tunnel, tarball")


def planned_uris(cfg: BinhostConfig, client: ClientConfig, repos: list[str], mode: str,
                 tunnel_ports: tuple[int, int] | None = None) -> ClientUris:
    """Where the instance finds the trees and binaries in ``mode``."""
    prefix = url_path(cfg.serve.url_path)
    if mode == "tunnel":
        rsync_port, http_port = tunnel_ports or (client.tunnel_rsync_port, client.tunnel_http_port)
        return ClientUris({name: f"rsync://127.0.0.1:{rsync_port}/{name}" for name in repos},
                          f"http://127.0.0.1:{http_port}{prefix}")
    if mode == "tarball":
        current = _tarball_dirs(client)[0]
        return ClientUris({name: f"file://{current}/tree/{name}/" for name in repos}, f"file://{current}/binpkgs")
    host = cfg.serve.host()
    rsync = host if cfg.serve.rsync_port == 873 else f"{host}:{cfg.serve.rsync_port}"
    http = host if cfg.serve.http_port == 80 else f"{host}:{cfg.serve.http_port}"
    return ClientUris({name: f"rsync://{rsync}/{name}" for name in repos}, f"http://{http}{prefix}")


def _tarball_dirs(client: ClientConfig) -> tuple[str, str, str]:
    """The unpacked copy in use, the one being unpacked, and the tarball itself."""
    staging = client.staging_dir.rstrip("/")
    return f"{staging}/binhost", f"{staging}/binhost.incoming", f"{staging}/{TARBALL}"


def ship_tarball(run: JobRun, cfg: BinhostConfig, facts: BinhostFacts, client: ClientConfig,
                 remote: RemoteTarget, repos: list[str]) -> None:
    """One tar (zstd) of the published trees and PKGDIR, unpacked beside the copy in use, then swapped in."""
    current, incoming, remote_tarball = _tarball_dirs(client)
    with tempfile.TemporaryDirectory(prefix="binhost-tarball-") as scratch:
        tarball = Path(scratch) / TARBALL
        _make_tarball(run, cfg, facts, repos, tarball)
        remote.run(["rm", "-rf", "--", incoming])
        remote.run(["mkdir", "-p", "--", incoming])
        remote.put(tarball, remote_tarball)
    try:
        remote.run(["tar", "--zstd", "-xf", remote_tarball, "-C", incoming], timeout=client.timeout)
    finally:
        remote.run(["rm", "-f", "--", remote_tarball])
    remote.run(["rm", "-rf", "--", f"{current}.old"])
    remote.run(["sh", "-c", 'if [ -e "$1" ]; then mv -- "$1" "$2"; fi', "sh", current, f"{current}.old"])
    remote.run(["mv", "--", incoming, current])
    remote.run(["rm", "-rf", "--", f"{current}.old"])


def _make_tarball(run: JobRun, cfg: BinhostConfig, facts: BinhostFacts, repos: list[str], tarball: Path) -> None:
    """``tree/<repo>/...`` and ``binpkgs/...``; no distfiles or packages dirs, as Gentoo's rsync mirrors."""
    argv = ["tar", "--zstd", "-cf", str(tarball)]
    for name in repos:
        repo = facts.repo(name).host_path
        argv += ["--exclude", f"{repo.name}/distfiles", "--exclude", f"{repo.name}/packages",
                 f"--transform=s,^{re.escape(repo.name)}\\(/\\|$\\),tree/{name}\\1,",
                 "-C", str(repo.parent), repo.name]
    pkgdir = facts.pkgdir_host
    argv += [f"--transform=s,^{re.escape(pkgdir.name)}\\(/\\|$\\),binpkgs\\1,", "-C", str(pkgdir.parent), pkgdir.name]
    started = time.monotonic()
    run.local().run(argv, timeout=cfg.timeout)
    if not run.dry:
        run.progress.say(f"tarball: {tarball.stat().st_size // 1024} KiB in {time.monotonic() - started:.1f} s")


__all__ = ["ClientOutcome", "planned_uris", "select_clients", "ship_tarball", "update_clients"]
