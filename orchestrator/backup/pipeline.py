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
from . import codec, metadata
from .catalog import Catalog
from .chunks import BufferPool, ChildProcesses, compress_to_file, fill, widen_pipe
from .hooks import run_hooks
from .layout import Layout, id_order, new_set_id, part_name, unique_slugs
from .preflight import check_backup
from .resume import settle_leftovers
from .retention import prune_local, prune_snapshots
from .stores import Store
from .treehash import file_hashes

TAR_WARNING = 1  # GNU tar: "some files differ" (changed while read): the archive is still usable


def tar_create_argv(path: str, snapshot: Path, cfg: BackupConfig) -> list[str]:
    """GNU tar keeping modes, owners, ACLs, xattrs and holes; relative to ``/`` like the seed's."""
    member = os.path.relpath(path, "/")
    argv = [
        "tar", "--create", "--file=-", "--format=posix", "--directory=/",
        "--acls", "--xattrs", "--xattrs-include=*", "--sparse",
        "--pax-option=delete=atime,delete=ctime",  # reading changes atime: keep headers to what restores
        f"--listed-incremental={snapshot}",
    ]
    if cfg.one_file_system:
        argv.append("--one-file-system")
    argv += [f"--exclude={pattern}" for pattern in cfg.exclude]
    return argv + ["--", member]


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
        snapshot = self.prepare_snapshot(plan, slug, snapshots)
        argv = tar_create_argv(path, snapshot, self.cfg)
        state = DirProgress(slug)
        self.progress.say(f"{slug}: tar {path}")
        with tempfile.TemporaryFile() as tar_err:
            tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=tar_err, stdin=subprocess.DEVNULL, bufsize=0)
            try:
                widen_pipe(tar.stdout)
                self.split(plan, state, tar.stdout, pool, compressors)
                rc = tar.wait()
            finally:
                if tar.poll() is None:
                    tar.kill()
                    tar.wait()
                tar.stdout.close()
            tar_err.seek(0)
            self.check_tar(path, rc, tar_err.read().decode(errors="replace"))
        self.dir_tar_finished(plan, state, rc)

    def split(self, plan, state: DirProgress, stream, pool: BufferPool, compressors) -> None:
        idx = 0
        with self.progress.counter(state.slug, unit="B") as counter:
            while True:
                buf = self._take_buffer(pool)
                length = fill(stream, buf)
                if length == 0 and idx > 0:
                    pool.give(buf)
                    return
                with state.lock:
                    state.outstanding += 1
                    state.bytes_in += length
                counter.update(length)
                self._futures.append(compressors.submit(self.compress_part, plan, state, idx, buf, length, pool))
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
        sha256, tree_hash, size, leaves = file_hashes(done.path)
        self.catalog.add_part(set_id=plan.set_id, slug=state.slug, idx=idx, name=name, plain_size=done.plain_size,
                              plain_sha256=done.plain_sha256, size=size, sha256=sha256, tree_hash=tree_hash,
                              leaves=leaves)
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

    def prepare_snapshot(self, plan: SetPlan, slug: str, snapshots: Path) -> Path:
        """The tar snapshot this set starts from: the parent's copy, or none for a full dump."""
        snapshot = snapshots / f"{slug}.snar"
        snapshot.unlink(missing_ok=True)
        if plan.parent_id:
            parent = self.layout.snapshot_dir(plan.parent_id) / f"{slug}.snar"
            if parent.exists():
                snapshot.write_bytes(parent.read_bytes())
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
        description = metadata.part_description(host=self.cfg.hostname, set_id=set_id, slug=slug, idx=idx,
                                                sha256=part["sha256"], plain_size=part["plain_size"])
        self.catalog.part_uploading(set_id, slug, idx, self.store.name)
        archive_id = self.store.put(self.layout.inflight / set_id / part["name"], description=description,
                                    sha256=part["sha256"], tree_hash=part["tree_hash"],
                                    journal=self.catalog.upload_journal(set_id, slug, idx))
        self.catalog.part_stored(set_id, slug, idx, archive_id, self.store.name)

    def commit(self, plan: SetPlan) -> None:
        """Manifest, snapshots, catalog, then one rename: a set is complete everywhere or nowhere."""
        dirs = self.catalog.dirs(plan.set_id)
        parts = self.catalog.parts(plan.set_id)
        unfinished = [d["slug"] for d in dirs if d["status"] != "done"]
        unstored = [p["name"] for p in parts if p["status"] != "stored"]
        if unfinished or unstored:
            raise OrchestratorError(f"set {plan.set_id} incomplete: dirs {unfinished} parts {unstored[:3]}")
        manifest = metadata.build_manifest(self.catalog.get_set(plan.set_id), dirs, parts)
        manifest_id = self.store.put_bytes(
            manifest, description=metadata.manifest_description(host=self.cfg.hostname, set_id=plan.set_id))
        partial = self.layout.snapshot_dir(plan.set_id, partial=True)
        if partial.exists():
            os.replace(partial, self.layout.snapshot_dir(plan.set_id))
        self.catalog.finish_set(plan.set_id, manifest_id)
        os.replace(self.layout.inflight / plan.set_id, self.layout.complete / plan.set_id)
        self.catalog.set_local_state(plan.set_id, "complete")

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
        for slug, path in unique_slugs(self.cfg.directories):
            snap = self.layout.snapshot_dir("<set>", partial=True) / f"{slug}.snar"
            out(f"[dry-run] {shlex.join(tar_create_argv(path, snap, self.cfg))}")
            out(f"[dry-run]   | split every {human_size(self.cfg.chunk_size)}, per chunk: "
                f"{shlex.join(self.compress_argv)}{chain} > {self.layout.inflight}/<set>/{part_name(slug, 0, self.suffix)}")
        out(f"[dry-run] store each part in {self.store.name}; then move the set to {self.layout.complete}/<set>")
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
            "bytes_read": totals["plain"],
            "bytes_stored": totals["stored"],
        }
