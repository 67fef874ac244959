"""``inv backup``: tar -> split -> compress (parallel) -> encrypt -> inflight -> store -> complete.

One streaming pass per directory: the splitter reads tar's stdout into pooled
buffers, compress workers turn each buffer into a part file while tar keeps
reading, and an uploader stores each part as soon as it exists.  The set moves
from ``inflight/`` to ``complete/`` with one rename, after its manifest is stored.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BackupConfig, GeneralConfig, human_size
from ..errors import OrchestratorError
from ..progress import Progress
from ..run import Target
from ..run.files import atomic_write
from ..faults import crash_point
from . import codec, metadata
from .catalog import Catalog
from .chunks import BufferPool, ChildProcesses, compress_to_file, fill, widen_pipe
from .hooks import run_hooks
from .layout import Layout, id_order, new_set_id, part_name, unique_slugs
from .preflight import check_backup
from .resume import adopt_manifest, move_to_complete, part_description_of, promote_snapshots, settle_leftovers
from .retention import prune_local, prune_snapshots
from .snar import SnapshotFormatError, neutralize_renames
from .stores import Store
from .tarindex import StreamIndex, UnrestorableStream
from .treehash import file_hashes

TAR_WARNING = 1  # GNU tar: "some files differ" (changed while read): the archive is still usable


def tar_create_argv(path: str, snapshot: Path, cfg: BackupConfig, protected: list[Path] = ()) -> list[str]:
    """GNU tar keeping modes, owners, ACLs, xattrs and holes; relative to ``/`` like the seed's."""
    member = os.path.relpath(path, "/")
    argv = [
        "tar", "--create", "--file=-", "--format=posix", "--directory=/",
        "--acls", "--xattrs", "--xattrs-include=*", "--sparse",
        "--pax-option=delete=atime,delete=ctime",  # reading changes atime: keep headers to what restores
        "--warning=no-rename-directory",  # renames are expected: snar.neutralize_renames dumps them whole
        f"--listed-incremental={snapshot}",
    ]
    if cfg.one_file_system:
        argv.append("--one-file-system")
    return argv + exclude_argv(cfg.exclude, protected) + ["--", member]


def exclude_argv(patterns: list[str], protected: list[Path] = ()) -> list[str]:
    """``--exclude`` options meaning what an admin writes.

    tar runs with ``-C /`` and member names without the leading slash, so an
    absolute pattern (``/srv/www/cache``, ``/var/log/*.gz``) is matched anchored
    at the start of the member name; a pattern without a slash (``*.tmp``,
    ``.cache``) matches a name at any depth, as in GNU tar. ``protected`` paths
    (our own staging, state and store) are excluded literally, wildcards off.

    ``--wildcards`` is never given explicitly: GNU tar 1.34 then also takes the
    member name for a pattern and, with ``--listed-incremental``, leaves every
    directory (and its dumpdir) out of the archive.
    """
    argv = []
    for pattern in patterns:
        if pattern.startswith("/"):
            argv += ["--anchored", f"--exclude={pattern.lstrip('/')}", "--no-anchored"]
        else:
            argv.append(f"--exclude={pattern}")
    if protected:
        argv.append("--no-wildcards")
    for path in protected:
        argv += ["--anchored", f"--exclude={os.path.relpath(path, '/')}", "--no-anchored"]
    return argv


def protected_paths(cfg: BackupConfig, general: GeneralConfig) -> list[tuple[Path, str]]:
    """Our own directories that lie inside a backed-up directory: never back them up into themselves."""
    ours = [(cfg.staging_dir, "backup.staging_dir"), (general.state_dir, "orchestrator.state_dir")]
    if cfg.store.type == "directory":
        ours.append((cfg.store.path, "backup.store.path"))
    found = []
    for path, key in ours:
        resolved = Path(os.path.realpath(path))
        if any(resolved == Path(os.path.realpath(d)) or Path(os.path.realpath(d)) in resolved.parents
               for d in cfg.directories):
            found.append((resolved, key))
    return found


@dataclass
class DirProgress:
    """Counts a directory's parts in flight; it is done when tar ended and all parts are recorded."""

    slug: str
    outstanding: int = 0
    tar_rc: int | None = None
    bytes_in: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class SetPlan:
    set_id: str
    kind: str
    parent_id: str | None
    chain_id: str
    directories: list[tuple[str, str]]


class BackupRun:
    def __init__(self, cfg: BackupConfig, general: GeneralConfig, catalog: Catalog, store: Store,
                 target: Target, progress: Progress, dry: bool = False):
        self.cfg = cfg
        self.catalog = catalog
        self.store = store
        self.target = target
        self.progress = progress
        self.dry = dry
        self.layout = Layout(cfg.staging_dir, general.state_dir, cfg.hostname)
        self.suffix = codec.part_suffix(cfg.compression.codec, cfg.encryption.enabled)
        self.compress_argv = codec.compress_argv(cfg.compression)
        self.encrypt_argv = codec.encrypt_argv(cfg.encryption) if cfg.encryption.enabled else None
        self.children = ChildProcesses()
        self.protected = protected_paths(cfg, general)
        self.warnings: list[str] = []
        self._futures: list[Future] = []
        self._uploads: list[Future] = []

    # the whole run ----------------------------------------------------------------------
    def execute(self) -> dict:
        started = time.monotonic()
        if self.dry:
            return self.print_plan()
        self.layout.ensure()
        self.store.ensure()
        resumed = settle_leftovers(self)
        run_hooks(self.cfg.hooks, self.target, self.progress)
        plan = resumed or self.new_set()
        self.progress.say(
            f"set {plan.set_id}: {plan.kind}" + (f" on top of {plan.parent_id}" if plan.parent_id else "")
            + (" (resumed)" if resumed else "")
        )
        try:
            self.archive_all(plan)
            self.commit(plan)
        except BaseException as exc:
            self.catalog.set_error(plan.set_id, str(exc) or type(exc).__name__)
            raise
        removed = prune_local(self.catalog, self.layout, self.cfg.keep_local_sets)
        prune_snapshots(self.catalog, self.layout)
        return self.summary(plan, time.monotonic() - started, removed, bool(resumed))

    def new_set(self) -> SetPlan:
        kind, parent_id, chain_id = self.choose_kind()
        known = [r["id"] for r in self.catalog.sets()] + [self.catalog.meta("last_set_id") or ""]
        set_id = new_set_id(max(filter(None, known), default=None, key=id_order))
        self.catalog.set_meta("last_set_id", set_id)
        directories = unique_slugs(self.cfg.directories)
        self.catalog.new_set(
            set_id=set_id, host=self.cfg.hostname, kind=kind, parent_id=parent_id, chain_id=chain_id or set_id,
            store=self.store.name, codec=self.cfg.compression.codec, encrypted=self.cfg.encryption.enabled,
            directories=directories,
        )
        (self.layout.inflight / set_id).mkdir(parents=True)
        return SetPlan(set_id, kind, parent_id, chain_id or set_id, directories)

    def choose_kind(self) -> tuple[str, str | None, str | None]:
        """A full set every ``full_every_days``; otherwise an incremental on the newest complete set."""
        last = self.catalog.latest_complete(self.cfg.hostname)
        if self.cfg.full_every_days == 0 or last is None or last["store"] != self.store.name:
            return "full", None, None
        chain_start = self.catalog.get_set(last["chain_id"])
        if time.time() - chain_start["created"] >= self.cfg.full_every_days * 86400:
            return "full", None, None
        if not self.layout.snapshot_dir(last["id"]).is_dir():
            self.warnings.append(f"no tar snapshot for set {last['id']}: taking a full set")
            return "full", None, None
        return "incremental", last["id"], last["chain_id"]

    # streaming --------------------------------------------------------------------------
    def archive_all(self, plan: SetPlan) -> None:
        workers = self.cfg.compression.effective_workers()
        pool = BufferPool(workers + self.cfg.queue_depth, self.cfg.chunk_size)
        snapshots = self.layout.snapshot_dir(plan.set_id, partial=True)
        snapshots.mkdir(parents=True, exist_ok=True)
        pending = {row["slug"] for row in self.catalog.dirs(plan.set_id) if row["status"] == "pending"}
        with ThreadPoolExecutor(workers, thread_name_prefix="compress") as compressors, \
                ThreadPoolExecutor(1, thread_name_prefix="upload") as uploader:
            self._uploader = uploader
            try:
                self.upload_local_parts(plan)
                for slug, path in plan.directories:
                    if slug in pending:
                        self.archive_directory(plan, slug, path, snapshots, pool, compressors)
                self._wait(self._futures)
                self._wait(self._uploads)
            except BaseException:
                self.abort()
                raise

    def archive_directory(self, plan, slug, path, snapshots: Path, pool: BufferPool, compressors) -> None:
        snapshot = self.prepare_snapshot(plan, slug, path, snapshots)
        argv = tar_create_argv(path, snapshot, self.cfg, [p for p, _ in self.protected])
        state = DirProgress(slug)
        index = StreamIndex(path)
        self.progress.say(f"{slug}: tar {path}")
        with tempfile.TemporaryFile() as tar_err:
            tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=tar_err, stdin=subprocess.DEVNULL, bufsize=0)
            try:
                widen_pipe(tar.stdout)
                self.split(plan, state, tar.stdout, pool, compressors, index)
                rc = tar.wait()
            finally:
                index.feed_end()
                if tar.poll() is None:
                    tar.kill()
                    tar.wait()
                tar.stdout.close()
            tar_err.seek(0)
            self.check_tar(path, rc, tar_err.read().decode(errors="replace"))
        self.record_index(plan, slug, path, index)
        self.dir_tar_finished(plan, state, rc)

    def record_index(self, plan: SetPlan, slug: str, path: str, index: StreamIndex) -> None:
        """The directory's file index, read from its stream; a stream we could not read back fails the set."""
        try:
            entries = index.finish()
        except UnrestorableStream as exc:
            raise OrchestratorError(f"set {plan.set_id}: {exc}") from None
        top = os.fsencode(os.path.relpath(path, "/"))
        if not any(e.path == top and e.type == "d" for e in entries):
            raise OrchestratorError(f"set {plan.set_id}: tar's stream of {path} holds no entry for the directory "
                                    "itself, so an incremental restore could not delete what was removed")
        self.catalog.add_files(plan.set_id, slug, entries)
        crash_point("dir-indexed")

    def split(self, plan, state: DirProgress, stream, pool: BufferPool, compressors, index: StreamIndex) -> None:
        idx = 0
        with self.progress.counter(state.slug, unit="B") as counter:
            while True:
                buf = self._take_buffer(pool)
                length = fill(stream, buf)
                if length == 0 and idx > 0:
                    pool.give(buf)
                    return
                index.feed(memoryview(buf)[:length])
                with state.lock:
                    state.outstanding += 1
                    state.bytes_in += length
                counter.update(length)
                self._futures.append(compressors.submit(self.compress_part, plan, state, idx, buf, length, pool))
                crash_point("tar-running")
                idx += 1
                if length < len(buf):
                    return

    def _take_buffer(self, pool: BufferPool) -> bytearray:
        """Block for a free buffer (backpressure), but notice a failed worker at once."""
        while True:
            self._raise_failed(self._futures + self._uploads)
            buf = pool.take(timeout=0.2)
            if buf is not None:
                return buf

    def compress_part(self, plan, state: DirProgress, idx: int, buf: bytearray, length: int, pool: BufferPool):
        name = part_name(state.slug, idx, self.suffix)
        try:
            done = compress_to_file(memoryview(buf)[:length], self.layout.inflight / plan.set_id / name,
                                    self.compress_argv, self.encrypt_argv, self.children)
        finally:
            pool.give(buf)
        crash_point("part-written")
        sha256, tree_hash, size, leaves = file_hashes(done.path)
        self.catalog.add_part(set_id=plan.set_id, slug=state.slug, idx=idx, name=name, plain_size=done.plain_size,
                              plain_sha256=done.plain_sha256, size=size, sha256=sha256, tree_hash=tree_hash,
                              leaves=leaves)
        crash_point("part-recorded")
        self._uploads.append(self._uploader.submit(self.upload_part, plan.set_id, state.slug, idx))
        with state.lock:
            state.outstanding -= 1
            finished = state.tar_rc is not None and state.outstanding == 0
        if finished:
            self.catalog.dir_done(plan.set_id, state.slug, state.tar_rc, state.bytes_in)

    def dir_tar_finished(self, plan, state: DirProgress, rc: int) -> None:
        with state.lock:
            state.tar_rc = rc
            finished = state.outstanding == 0
        if finished:
            self.catalog.dir_done(plan.set_id, state.slug, rc, state.bytes_in)

    def check_tar(self, path: str, rc: int, stderr: str) -> None:
        lines = [line for line in stderr.splitlines() if line.strip()]
        if rc == TAR_WARNING:
            self.warnings.append(f"{path}: files changed while read (tar exit 1): " + " | ".join(lines[-3:]))
        elif rc != 0:
            raise OrchestratorError(f"tar of {path} failed (exit {rc}): " + " | ".join(lines[-3:]))

    def prepare_snapshot(self, plan: SetPlan, slug: str, path: str, snapshots: Path) -> Path:
        """The tar snapshot this set starts from: the parent's copy, or none for a full dump.

        Directories renamed since the parent are made to look new to tar, so they
        are dumped whole instead of as a rename record (see :mod:`.snar`).
        """
        snapshot = snapshots / f"{slug}.snar"
        snapshot.unlink(missing_ok=True)
        if plan.parent_id:
            parent = self.layout.snapshot_dir(plan.parent_id) / f"{slug}.snar"
            if parent.exists():
                atomic_write(snapshot, parent.read_bytes())
                try:
                    renamed = neutralize_renames(snapshot, Path(path), self.cfg.one_file_system)
                except SnapshotFormatError as exc:
                    raise OrchestratorError(f"tar snapshot {parent}: {exc}") from None
                if renamed:
                    self.progress.say(f"{slug}: {len(renamed)} renamed or replaced director"
                                      f"{'y' if len(renamed) == 1 else 'ies'} taken in full")
        return snapshot

    # storing ----------------------------------------------------------------------------
    def upload_local_parts(self, plan: SetPlan) -> None:
        """On resume: parts compressed before the crash but never stored."""
        for part in self.catalog.parts(plan.set_id):
            if part["status"] != "stored":
                self._uploads.append(self._uploader.submit(self.upload_part, plan.set_id, part["slug"], part["idx"]))

    def upload_part(self, set_id: str, slug: str, idx: int) -> None:
        part = self.catalog.get_part(set_id, slug, idx)
        if part["status"] == "stored":
            return
        description = part_description_of(self.catalog, part)
        self.catalog.part_uploading(set_id, slug, idx, self.store.name)
        archive_id = self.store.put(self.layout.inflight / set_id / part["name"], description=description,
                                    sha256=part["sha256"], tree_hash=part["tree_hash"],
                                    journal=self.catalog.upload_journal(set_id, slug, idx))
        crash_point("part-uploaded")
        self.catalog.part_stored(set_id, slug, idx, archive_id, self.store.name)
        crash_point("part-stored")

    def commit(self, plan: SetPlan) -> None:
        """Manifest, snapshots, catalog, then one rename: a set is complete everywhere or nowhere.

        Each step looks first, so a rerun after a kill at any point finishes the
        commit without storing a second manifest or tripping over its own rename.
        """
        dirs = self.catalog.dirs(plan.set_id)
        parts = self.catalog.parts(plan.set_id)
        unfinished = [d["slug"] for d in dirs if d["status"] != "done"]
        unstored = [p["name"] for p in parts if p["status"] != "stored"]
        if unfinished or unstored:
            raise OrchestratorError(f"set {plan.set_id} incomplete: dirs {unfinished} parts {unstored[:3]}")
        manifest_id = self.store_manifest(plan, dirs, parts)
        promote_snapshots(self.layout, plan.set_id)
        crash_point("snapshot-promoted")
        self.catalog.finish_set(plan.set_id, manifest_id)
        crash_point("set-committed")
        move_to_complete(self.catalog, self.layout, plan.set_id)

    def store_manifest(self, plan: SetPlan, dirs, parts) -> str:
        """Store the set's manifest once: a manifest an earlier, killed attempt stored is adopted."""
        row = self.catalog.get_set(plan.set_id)
        if row["manifest_id"]:
            return row["manifest_id"]
        journal = self.catalog.meta_journal(f"manifest:{plan.set_id}")
        manifest_id = adopt_manifest(self.store, row, journal)
        if manifest_id is None:
            files = {d["slug"]: self.catalog.files(plan.set_id, d["slug"]) for d in dirs}
            doc = metadata.build_manifest(row, dirs, parts, files)
            manifest_id = self.store.put_bytes(metadata.encode_manifest(doc, self.cfg.encryption),
                                               description=metadata.manifest_description(host=row["host"],
                                                                                         set_id=row["id"]),
                                               journal=journal)
            crash_point("manifest-stored")
        self.catalog.set_manifest(plan.set_id, manifest_id)
        journal.clear()
        crash_point("manifest-recorded")
        return manifest_id

    # failure ----------------------------------------------------------------------------
    def abort(self) -> None:
        """Stop every codec now; the executors then drain quickly and the set stays inflight."""
        self.children.kill_all()
        for fut in self._futures + self._uploads:
            fut.cancel()

    def _wait(self, futures: list[Future]) -> None:
        while True:
            snapshot = list(futures)
            done, not_done = wait(snapshot, return_when=FIRST_EXCEPTION)
            self._raise_failed(snapshot)
            if not not_done and len(futures) == len(snapshot):
                return

    @staticmethod
    def _raise_failed(futures: list[Future]) -> None:
        for fut in list(futures):
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()

    # reporting --------------------------------------------------------------------------
    def print_plan(self) -> dict:
        check_backup(self.cfg)
        out = self.target.echo
        for hook in self.cfg.hooks:
            out(f"[dry-run] hook {hook.name}: {shlex.join(hook.argv)}")
        chain = " | " + shlex.join(self.encrypt_argv) if self.encrypt_argv else ""
        for path, key in self.protected:
            out(f"[dry-run] excluding {shlex.quote(str(path))} ({key}): it lies inside a backed-up directory")
        for slug, path in unique_slugs(self.cfg.directories):
            snap = self.layout.snapshot_dir("<set>", partial=True) / f"{slug}.snar"
            part = self.layout.inflight / "<set>" / part_name(slug, 0, self.suffix)
            out(f"[dry-run] {shlex.join(tar_create_argv(path, snap, self.cfg, [p for p, _ in self.protected]))}")
            out(f"[dry-run]   | split every {human_size(self.cfg.chunk_size)}, per chunk: "
                f"{shlex.join(self.compress_argv)}{chain} > {shlex.quote(str(part))}")
        out(f"[dry-run] store each part in {self.store.name}; then move the set to "
            f"{shlex.quote(str(self.layout.complete))}/<set>")
        return {"planned_directories": len(self.cfg.directories)}

    def summary(self, plan: SetPlan, elapsed: float, removed: list[str], resumed: bool) -> dict:
        totals = self.catalog.set_totals(plan.set_id)
        ratio = totals["stored"] / totals["plain"] if totals["plain"] else 0.0
        return {
            "set": plan.set_id,
            "kind": plan.kind + (" (resumed)" if resumed else ""),
            "parent": plan.parent_id or "-",
            "directories": len(plan.directories),
            "parts": totals["parts"],
            "read": human_size(totals["plain"]),
            "stored": f"{human_size(totals['stored'])} ({ratio:.1%})",
            "rate": f"{human_size(totals['plain'] / elapsed if elapsed else 0)}/s",
            "store": self.store.name,
            "local_sets_pruned": ", ".join(removed) or "none",
            "bytes": {"read": totals["plain"], "stored": totals["stored"]},  # exact, for monitoring (JSON only)
        }
