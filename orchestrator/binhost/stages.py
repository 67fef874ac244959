"""The stages of ``inv binhost``, in order. Each looks first and says so when there is nothing to do.

sync     emerge --sync; reports which trees changed
world    emerge -uDN --buildpkg @world; reports what was built
package  quickpkg --include-config=y only packages whose binary package is missing or stale
prune    remove superseded binary packages and those no ebuild or installed package matches (see
         prune.py); only in a full run when binhost.prune is true
index    emaint binhost --fix, only when Packages does not match PKGDIR
publish  egencache --write-timestamp, only for trees changed since they were last published
owner    chown PKGDIR for the web server user, only what differs
configs  render rsyncd.conf, the nginx and Apache snippets and every instance's Portage
         configuration into the output directory, only what differs
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..buildenv import BuildSession
from ..config import human_size
from ..errors import ConfigError, OrchestratorError
from ..portage_conf import render_client_configs
from .clients import planned_uris
from .exposure import published_repos, render_exposure, write_rendered
from . import prune as pruning
from .facts import BinhostFacts, RepoFacts
from .system import BuildSystem
from .tree import FingerprintStore, index_state, tree_fingerprint, unreadable_by_others, wrong_owner

STAGES = ("sync", "world", "package", "prune", "index", "publish", "owner", "configs")
OPT_IN = {"prune": "prune"}  # stage -> the binhost setting that puts it into every full run
EMERGING = re.compile(r"^>>> Emerging \(\d+ of \d+\) (\S+?)(?:::\S+)?\s*$")


@dataclass
class StageContext:
    system: BuildSystem
    facts: BinhostFacts
    fingerprints: FingerprintStore
    warnings: list[str] = field(default_factory=list)
    tree_prints: dict[str, str] = field(default_factory=dict)  # no stage after sync changes a tree but publish

    def refresh_facts(self) -> None:
        self.facts = self.system.facts()
        self.system.save_facts(self.facts)

    @property
    def session(self) -> BuildSession:
        return self.system.session

    @property
    def dry(self) -> bool:
        return self.system.target.dry

    def fingerprint(self, repo: RepoFacts, *, fresh: bool = False) -> str:
        """The tree's fingerprint, walked once per run unless ``fresh`` (a stage just changed it)."""
        if fresh or repo.name not in self.tree_prints:
            self.tree_prints[repo.name] = tree_fingerprint(repo.host_path) if repo.host_path.exists() else ""
        return self.tree_prints[repo.name]

    def published(self) -> list[RepoFacts]:
        return published_repos(self.system.cfg, self.facts)


def sync(ctx: StageContext) -> str:
    before = {repo.name: ctx.fingerprint(repo, fresh=True) for repo in ctx.facts.repos}
    ctx.session.script("binhost-sync", stream=True)
    if ctx.dry:
        return "would sync every repository with a sync-uri"
    ctx.refresh_facts()  # a first sync creates trees Portage did not list before
    changed = [repo.name for repo in ctx.facts.repos if ctx.fingerprint(repo, fresh=True) != before.get(repo.name)]
    return f"updated {', '.join(changed)}" if changed else "nothing new: every tree is as it was"


def world(ctx: StageContext) -> str:
    ctx.session.script("binhost-world", *ctx.system.cfg.emerge_options, stream=True)
    if ctx.dry:
        return "would update @world with --buildpkg"
    built = [m.group(1) for line in ctx.session.log.lines if (m := EMERGING.match(line))]
    if not built:
        return "nothing to do: @world is up to date"
    return f"built {len(built)}: {_short_list(built)}"


def package(ctx: StageContext) -> str:
    signed = ["--signed"] if ctx.system.cfg.signing.enabled else []
    found = ctx.session.probe_json("binhost-stale", "--json", *signed)
    stale = found["stale"]
    if not stale:
        return f"nothing to do: all {found['installed']} installed packages have a current binary package"
    atoms = [entry["atom"] for entry in stale]
    ctx.session.script("binhost-package", *atoms, stream=True)
    if ctx.dry:
        return f"would quickpkg {len(atoms)} of {found['installed']}: {_short_list(atoms)}"
    still = ctx.session.probe_json("binhost-stale", "--json", *signed)["stale"]
    if still:
        raise OrchestratorError(f"quickpkg left {len(still)} package(s) without a current binary package: "
                                f"{_short_list([e['atom'] for e in still])}")
    reasons = sorted({entry["why"] for entry in stale})
    return f"packaged {len(atoms)} of {found['installed']} ({', '.join(reasons)}): {_short_list(atoms)}"


def index(ctx: StageContext) -> str:
    pkgdir = ctx.facts.pkgdir_host
    state = index_state(pkgdir)
    if state.current:
        return f"nothing to do: Packages lists all {state.files} binary packages"
    ctx.session.script("binhost-index", stream=True)
    if ctx.dry:
        return f"would rewrite Packages ({state.describe()})"
    after = index_state(pkgdir)
    if not after.current:
        unusable = f" ({_short_list(list(after.unlisted), 3)}: broken or partial files Portage skips? remove them)" \
            if after.unlisted else ""
        raise OrchestratorError(f"{pkgdir}/Packages still does not match PKGDIR after emaint: "
                                f"{after.describe()}{unusable}")
    return f"rewrote Packages ({state.describe()}); it lists {after.files} binary packages"


def prune(ctx: StageContext) -> str:
    """Remove what the policy in prune.py gives up, then rewrite Packages; --dry lists it with the bytes."""
    keep = ctx.system.cfg.keep_binpkgs
    repos = [repo.name for repo in ctx.published()]
    found = ctx.session.probe_json("binhost-binpkgs", "--json", *[f"--repo={name}" for name in repos])
    pkgdir = ctx.facts.pkgdir_host
    doomed = pruning.locate(pkgdir, pruning.plan(found["slots"], keep))
    total = found["binpkgs"]
    if not doomed:
        return _reindex_leftovers(ctx, total) or (
            f"nothing to do: all {total} binary packages are kept (installed builds, up to {keep} older "
            f"build(s) per package, or still in {', '.join(repos)})")
    freed = sum(d.size for d in doomed)
    what = f"{len(doomed)} of {total} binary packages, {freed} bytes ({human_size(freed)})"
    verb = "would remove" if ctx.dry else "removed"
    for d in doomed:
        if not ctx.dry:
            pruning.remove(d, pkgdir)
        ctx.system.run.echo(f"{'[dry-run] ' if ctx.dry else ''}prune: {verb} {d.removal.path} "
                            f"({d.size} bytes, {d.removal.why})")
    if ctx.dry:
        return f"would remove {what}: {_short_list([d.removal.path for d in doomed])}"
    after = _rewrite_index(ctx)
    return f"removed {what}: {_short_list([d.removal.path for d in doomed])}; Packages lists {after.files}"


def _reindex_leftovers(ctx: StageContext, total: int) -> str:
    """A prune cut short between removing files and re-indexing left entries without a file: fix them."""
    gone = index_state(ctx.facts.pkgdir_host).gone
    if not gone:
        return ""
    if ctx.dry:
        return f"nothing to remove; would rewrite Packages ({len(gone)} index entries without a file)"
    after = _rewrite_index(ctx)
    return f"nothing to remove; rewrote Packages ({len(gone)} index entries without a file); it lists {after.files}"


def _rewrite_index(ctx: StageContext):
    ctx.session.script("binhost-index", stream=True)
    after = index_state(ctx.facts.pkgdir_host)
    if not after.current:
        raise OrchestratorError(f"{ctx.facts.pkgdir_host}/Packages does not match PKGDIR after pruning and emaint: "
                                f"{after.describe()}")
    return after


def publish(ctx: StageContext) -> str:
    """Make each changed tree servable over rsync: a metadata cache and metadata/timestamp.chk.

    A tree synced from a mirror with its cache is served as it came: its Manifests
    (verified by clients' gemato) cover metadata/, and its timestamp must stay the
    mirror's, or the next sync fails with "SERVER OUT OF DATE". A mirrored tree
    without a cache gets one and keeps the timestamp; any other tree gets both.
    """
    stale = [repo for repo in ctx.published() if not _published(ctx, repo)]
    if not stale:
        return "nothing to do: " + ", ".join(r.name for r in ctx.published()) + " unchanged since last published"
    mirrored = [repo for repo in stale if _mirror_stamp(ctx, repo)]
    as_synced = [repo for repo in mirrored if (repo.host_path / "metadata" / "md5-cache").is_dir()]
    cache_only = [repo for repo in mirrored if repo not in as_synced]
    ours = [repo for repo in stale if repo not in mirrored]
    for group, args in ((cache_only, ["--keep-timestamp"]), (ours, [])):
        if group:
            ctx.session.script("binhost-publish", *args, *[repo.name for repo in group], stream=True)
    if ctx.dry:
        return f"would publish {', '.join(r.name for r in stale)}"
    for repo in stale:
        chk = repo.host_path / "metadata" / "timestamp.chk"
        if not chk.is_file():
            raise OrchestratorError(f"egencache wrote no metadata/timestamp.chk in {repo.host_path}")
        if repo in ours:
            ctx.fingerprints.put(_stamp_key(repo), chk.read_text())
        ctx.fingerprints.put(_publish_key(repo), ctx.fingerprint(repo, fresh=True))
    notes = [f"{r.name} (as synced: the mirror's cache and timestamp)" for r in as_synced]
    notes += [f"{r.name} (metadata cache, mirror's timestamp kept)" for r in cache_only]
    notes += [f"{r.name} (metadata cache, new timestamp.chk)" for r in ours]
    return "published " + ", ".join(notes)


def _mirror_stamp(ctx: StageContext, repo: RepoFacts) -> bool:
    """True when timestamp.chk came with the sync (a mirror's), not from our last publish."""
    chk = repo.host_path / "metadata" / "timestamp.chk"
    return chk.is_file() and chk.read_text() != ctx.fingerprints.get(_stamp_key(repo))


def owner(ctx: StageContext) -> str:
    serve = ctx.system.cfg.serve
    pkgdir = ctx.facts.pkgdir_host
    if not (serve.web_user or serve.web_group):
        hidden = unreadable_by_others(pkgdir) if pkgdir.exists() else 0
        if hidden:
            ctx.warnings.append(f"{hidden} file(s) or directories in {pkgdir} are not readable by other users"
                                " (quickpkg --include-config=y writes 0640): a web server running as its own"
                                " user cannot serve them; set binhost.serve.web_group")
        return "nothing to do: binhost.serve.web_user and web_group are not set"
    uid, gid = _ids(serve.web_user, serve.web_group)
    wrong = wrong_owner(pkgdir, uid, gid)
    who = f"{serve.web_user or '-'}:{serve.web_group or '-'}"
    if not wrong:
        return f"nothing to do: PKGDIR is owned by {who}"
    if ctx.dry:
        return f"would chown {len(wrong)} path(s) in {pkgdir} to {who}"
    for path in wrong:
        os.lchown(path, uid, gid)
    return f"chowned {len(wrong)} path(s) in {pkgdir} to {who}"


STAGE_DOCS = {
    "sync": "Sync the build system's repositories (emerge --sync); says which trees changed.",
    "world": "emerge -uDN --buildpkg @world in the build system, without questions.",
    "package": "quickpkg --include-config=y the installed packages whose binary package is missing or stale.",
    "prune": "Remove binary packages superseded beyond binhost.keep_binpkgs or without ebuild and installed package.",
    "index": "Rewrite PKGDIR/Packages (emaint binhost --fix) when it does not match the binary packages.",
    "publish": "egencache --write-timestamp the published trees that changed since they were last published.",
    "owner": "chown PKGDIR to binhost.serve.web_user/web_group where it differs.",
    "configs": "Render rsyncd.conf, nginx/Apache snippets and every instance's repos.conf/binrepos.conf.",
}

def configs(ctx: StageContext) -> str:
    """What the admin installs by hand (web server, rsyncd) or bakes into images, kept current."""
    cfg = ctx.system.cfg
    files = render_exposure(cfg, ctx.facts)
    repos = [repo.name for repo in ctx.published()]
    for client in cfg.clients:
        uris = planned_uris(cfg, client, repos, client.mode)
        for path, text in render_client_configs(client, repos, uris, verify_signature=cfg.signing.enabled).items():
            files[f"clients/{client.name}/{path.lstrip('/')}"] = text
    out = ctx.system.out_dir
    changed = write_rendered(files, out, ctx.system.run.local())
    if not changed:
        return f"nothing to do: the {len(files)} rendered files in {out} are current"
    return f"{'would write' if ctx.dry else 'wrote'} {len(changed)} of {len(files)} into {out}: {_short_list(changed)}"


RUNNERS: dict[str, Callable[[StageContext], str]] = {
    "sync": sync, "world": world, "package": package, "prune": prune, "index": index, "publish": publish,
    "owner": owner, "configs": configs,
}


def _publish_key(repo: RepoFacts) -> str:
    return f"published:{repo.name}:{repo.host_path}"


def _stamp_key(repo: RepoFacts) -> str:
    return f"stamp:{repo.name}:{repo.host_path}"


def _published(ctx: StageContext, repo: RepoFacts) -> bool:
    if not (repo.host_path / "metadata" / "timestamp.chk").is_file():
        return False
    return ctx.fingerprints.get(_publish_key(repo)) == ctx.fingerprint(repo)


def _ids(user: str, group: str) -> tuple[int, int]:
    """Names resolved on the build box, where the web server runs."""
    try:
        uid = pwd.getpwnam(user).pw_uid if user else -1
    except KeyError:
        raise ConfigError(f"binhost.serve.web_user: no user {user!r} on this host") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError:
        raise ConfigError(f"binhost.serve.web_group: no group {group!r} on this host") from None
    return uid, gid


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
