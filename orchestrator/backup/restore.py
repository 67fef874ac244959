"""``inv restore``: list sets, and restore a set (its whole incremental chain) into a directory.

Every part's sha256 is checked against the catalog before it is decrypted or
decoded (a part from the store is fetched by the decoder that needs it, so
downloads overlap decoding); each chunk's plaintext is checked again after
decompression.  Unpacking happens in a hidden sibling directory that is renamed
into place only when every directory of every set in the chain went in cleanly,
so a failed restore never leaves a tree that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..config import EncryptionConfig, human_size
from ..errors import OrchestratorError
from ..faults import crash_point
from ..progress import Progress
from . import codec
from .catalog import Catalog
from .download import download_verified
from .retrieval import forget, readable_jobs
from .layout import Layout, remove_tree
from .stores import Store
from .treehash import file_sha256

TAR_EXTRACT = [
    "tar", "--extract", "--file=-", "--listed-incremental=/dev/null",
    "--acls", "--xattrs", "--xattrs-include=*", "--same-owner", "--preserve-permissions",
]


@dataclass
class PartSource:
    set_id: str
    name: str
    path: Path
    codec: str
    encrypted: bool
    plain_sha256: str
    plain_size: int
    remote: object = None  # the catalog row of a part still to be fetched from the store (path is then None)


def resolve_set(catalog: Catalog, host: str, wanted: str | None):
    if wanted in (None, "latest"):
        row = catalog.latest_complete(host)
        if row is None:
            raise OrchestratorError(f"no complete backup set for host {host} in catalog {catalog.path}")
        return row
    row = catalog.get_set(wanted)
    if row is None:
        raise OrchestratorError(f"set {wanted}: not in catalog {catalog.path} (see inv restore --list)")
    if row["status"] != "complete":
        raise OrchestratorError(f"set {wanted} is {row['status']}, not complete: it cannot be restored")
    return row


def describe_sets(catalog: Catalog, host: str | None) -> list[str]:
    """``inv restore --list``: a header and one aligned row per set, oldest first."""
    rows = [("SET", "HOST", "KIND", "PARENT", "STATUS", "LOCAL COPY", "IN STORE", "PARTS", "STORED", "VERIFIED",
             "DIRECTORIES")]
    deleting = set(catalog.pending_deletions(host))
    for row in catalog.sets(host):
        totals = catalog.set_totals(row["id"])
        rows.append((row["id"], row["host"], row["kind"], row["parent_id"] or "-",
                     "deleting" if row["id"] in deleting else row["status"], row["local_state"],
                     store_state(catalog, row), str(totals["parts"]), human_size(totals["stored"]),
                     _day(row["verified"]), ",".join(d["path"] for d in catalog.dirs(row["id"]))))
    if len(rows) == 1:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def store_state(catalog: Catalog, row) -> str:
    """Where the set stands in its store: all of it there, some parts, or nothing."""
    if row["status"] == "discarded":
        return "removed"
    parts = catalog.parts(row["id"])
    stored = sum(1 for p in parts if p["status"] == "stored")
    if row["status"] == "complete" and row["manifest_id"]:
        return "complete"
    return f"{stored}/{len(parts)} parts"


def _day(when: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when)) if when else "never"


@dataclass
class ColdPolicy:
    """How to read from cold storage: the retrieval tier, days to keep restored copies, wait or not."""

    tier: str = "Standard"
    days: int = 7
    wait: bool = False
    poll_seconds: float = 900


class Restorer:
    def __init__(self, catalog: Catalog, store: Store, layout: Layout, encryption: EncryptionConfig,
                 progress: Progress, workers: int, cold: ColdPolicy | None = None, use_local: bool = True):
        self.use_local = use_local  # False: every part from the store (a drill of the offsite copy)
        self.catalog = catalog
        self.store = store
        self.layout = layout
        self.encryption = encryption
        self.progress = progress
        self.workers = max(1, workers)
        self.cold = cold or ColdPolicy()
        self.refetched = 0
        self.jobs: dict[str, str | None] = {}
        self._fetch_lock = threading.Lock()

    def restore(self, set_row, target: Path, directories: list[str] | None = None) -> dict:
        chain = self.catalog.chain(set_row["id"])
        broken = [row["id"] for row in chain if row["status"] != "complete"]
        if broken:
            raise OrchestratorError(f"set {set_row['id']}: chain member(s) {broken} are not complete")
        slugs = self.select_dirs(set_row["id"], directories)
        check_target(target)
        local, remote = self.locate(chain, slugs)
        self.jobs = readable_jobs(self.catalog, self.store, [p["archive_id"] for _, p in remote],
                                  tier=self.cold.tier, days=self.cold.days, wait=self.cold.wait,
                                  poll_seconds=self.cold.poll_seconds, progress=self.progress)
        work = target.parent / f".{target.name}.restore-{set_row['id']}"
        remove_tree(work)
        (work / "tree").mkdir(parents=True)
        try:
            plan = {slug: self.fetch_verified(chain, slug, work / "parts", local) for slug in slugs}
            restored = self.unpack([sources for per_set in plan.values() for sources in per_set], work / "tree")
            if target.exists():
                target.rmdir()
            os.replace(work / "tree", target)
        finally:
            remove_tree(work)
        forget(self.catalog, self.store, list(self.jobs))
        parts = sum(len(sources) for per_set in plan.values() for sources in per_set)
        return {"set": set_row["id"], "chain": " -> ".join(r["id"] for r in chain),
                "directories": len(slugs), "parts": parts, "restored": human_size(restored), "target": str(target)}

    def select_dirs(self, set_id: str, wanted: list[str] | None) -> list[str]:
        dirs = self.catalog.dirs(set_id)
        if not wanted:
            return [d["slug"] for d in dirs]
        by_name = {d["path"].rstrip("/") or "/": d["slug"] for d in dirs} | {d["slug"]: d["slug"] for d in dirs}
        missing = [w for w in wanted if (w.rstrip("/") or "/") not in by_name]
        if missing:
            have = ", ".join(d["path"] for d in dirs)
            raise OrchestratorError(f"set {set_id} has no directory {missing[0]} (it has: {have})")
        return [by_name[w.rstrip("/") or "/"] for w in wanted]

    # fetching ---------------------------------------------------------------------------
    def locate(self, chain, slugs: list[str]) -> tuple[dict[tuple[str, str], Path], list]:
        """Intact staging copies by (set, part name), and the parts that must come from the store.

        Local copies are hashed in parallel (one per worker), before anything is unpacked.
        """
        wanted = [(row, part) for row in chain for slug in slugs for part in self.catalog.parts(row["id"], slug)]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="check") as pool:
            copies = list(pool.map(lambda item: self.intact_local_copy(*item), wanted))
        local, remote = {}, []
        for (row, part), path in zip(wanted, copies):
            if path is not None:
                local[(row["id"], part["name"])] = path
            elif not part["archive_id"]:
                raise OrchestratorError(f"part {part['name']} of set {row['id']} was never stored")
            else:
                remote.append((row, part))
        return local, remote

    def intact_local_copy(self, row, part) -> Path | None:
        path = self.layout.complete / row["id"] / part["name"]
        if not self.use_local or row["local_state"] != "complete" or not path.exists():
            return None
        if path.stat().st_size == part["size"] and file_sha256(path) == part["sha256"]:
            return path
        self.progress.warn(f"local copy {path} is corrupted; fetching part from {self.store.name}")
        return None

    def fetch_verified(self, chain, slug: str, fetch_dir: Path, local) -> list[list[PartSource]]:
        """Per set in the chain, the directory's parts: an intact staging copy, or a part that
        ``decode_one`` fetches (verified) from the store into ``fetch_dir`` just before decoding it."""
        self.fetch_dir = fetch_dir
        per_set = []
        for row in chain:
            sources = []
            for part in self.catalog.parts(row["id"], slug):
                path = local.get((row["id"], part["name"]))
                if path is None and not part["archive_id"]:
                    raise OrchestratorError(f"part {part['name']} of set {row['id']} was never stored")
                sources.append(PartSource(row["id"], part["name"], path, row["codec"], bool(row["encrypted"]),
                                          part["plain_sha256"], part["plain_size"], None if path else part))
            if sources:
                per_set.append(sources)
        return per_set

    def fetch_from_store(self, set_id: str, part, fetch_dir: Path) -> Path:
        if not part["archive_id"]:
            raise OrchestratorError(f"part {part['name']} of set {set_id} was never stored")
        dest = fetch_dir / set_id / part["name"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        refetched = download_verified(self.store, part, dest, workers=self.workers,
                                      job_id=self.jobs.get(part["archive_id"]),
                                      label=f"part {part['name']} of set {set_id}")
        with self._fetch_lock:
            self.refetched += refetched
        return dest

    # unpacking ---------------------------------------------------------------------------
    def unpack(self, streams: list[list[PartSource]], tree: Path) -> int:
        """Feed each stream (one directory of one set, chain order) to its own ``tar -x``.

        One decode window runs across all streams, so the decoders keep working
        while one tar finishes and the next starts.
        """
        total, current, sink = 0, None, None
        flat = [(i, source) for i, sources in enumerate(streams) for source in sources]
        try:
            for (i, source), data in zip(flat, self.decoded([s for _, s in flat])):
                if i != current:
                    if sink is not None:
                        sink.finish()
                    sink, current = TarSink(tree, source.set_id), i
                sink.write(data)
                total += len(data)
                crash_point("restore-unpacking")
            if sink is not None:
                sink.finish()
                sink = None
        finally:
            if sink is not None:
                sink.kill()
        return total

    def decoded(self, sources: list[PartSource]):
        """Plaintext chunks in order; up to ``workers`` parts decode at once (memory: that many chunks)."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            window: deque = deque()
            for source in sources:
                window.append(pool.submit(self.decode_one, source))
                if len(window) > self.workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def decode_one(self, source: PartSource) -> memoryview:
        if source.path is None:
            source.path = self.fetch_from_store(source.set_id, source.remote, self.fetch_dir)
        argv = codec.decompress_argv(source.codec)
        stages = [codec.decrypt_argv(self.encryption), argv] if source.encrypted else [argv]
        data = run_chain(stages, source.path, source.plain_size)
        if source.remote is not None:
            source.path.unlink()  # a downloaded part is not needed once decoded: the work dir stays small
        if len(data) != source.plain_size or hashlib.sha256(data).hexdigest() != source.plain_sha256:
            raise OrchestratorError(f"part {source.name} of set {source.set_id} decoded to different bytes "
                                    "than were backed up; nothing more was unpacked")
        return data


class TarSink:
    """One ``tar -x`` reading a stream from us; ``finish`` checks how it ended."""

    def __init__(self, tree: Path, set_id: str):
        self.set_id = set_id
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(TAR_EXTRACT + ["--directory", str(tree)], stdin=subprocess.PIPE, stderr=self.err)

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            self.finish()

    def finish(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait()
        self.err.seek(0)
        tail = " | ".join(self.err.read().decode(errors="replace").strip().splitlines()[-3:])
        self.err.close()
        if rc != 0:
            raise OrchestratorError(f"tar extract of set {self.set_id} failed (exit {rc}): {tail}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.err.close()


def run_chain(stages: list[list[str]], path: Path, expected_size: int) -> memoryview:
    """``stage1 < path | stage2 ...``, returning the last stage's stdout.

    The output is read straight into one buffer of the size the catalog expects
    (no growing and joining of pieces); a longer output shows as one byte more.
    Each stage has its own stderr, so when gpg fails the admin reads gpg's
    reason ("No secret key"), not xz's complaint about the empty stream after it.
    """
    procs, errs = [], []
    with open(path, "rb") as src, ExitStack() as stack:
        stdin = src
        for i, argv in enumerate(stages):
            err = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err)
            if i:
                stdin.close()
            stdin = proc.stdout
            procs.append(proc)
            errs.append(err)
        data = read_exactly(procs[-1].stdout, expected_size + 1)
        procs[-1].stdout.close()
        codes = [p.wait() for p in procs]
        if any(codes):
            first = next(i for i, c in enumerate(codes) if c)
            errs[first].seek(0)
            text = errs[first].read()
            reason = codec.gpg_reason(text) if stages[first][0] == "gpg" else \
                (text.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise OrchestratorError(f"{stages[first][0]} failed on {path.name}" + (f": {reason}" if reason else ""))
    return data


def read_exactly(stream, limit: int) -> memoryview:
    """Up to ``limit`` bytes from ``stream`` into one preallocated buffer; the rest is left unread."""
    buf = bytearray(limit)
    view = memoryview(buf)
    filled = 0
    while filled < limit:
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return view[:filled]


def check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OrchestratorError(f"restore target {target} exists and is not empty; choose a new or empty directory")
    if not target.parent.is_dir():
        raise OrchestratorError(f"restore target's parent {target.parent} does not exist")
