"""After a crash or ``kill -9``: resume the inflight set, or discard it cleanly.

Granularity is the directory: a directory whose tar finished and whose parts
are all recorded (and still intact on disk, or already stored) is kept; any
other directory is dropped everywhere (local files, stored archives, catalog
rows) and archived again, because a second tar of it would not produce the
same bytes.  Complete sets are never touched here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import metadata
from .stores.base import ARCHIVE_JOURNAL_PREFIX
from .layout import remove_tree
from .treehash import file_digests

if TYPE_CHECKING:
    from .pipeline import BackupRun, SetPlan


def settle_leftovers(run: "BackupRun") -> "SetPlan | None":
    tidy_inflight_dirs(run)
    inflight = run.catalog.sets(run.cfg.hostname, "inflight")
    keep = None
    if inflight and run.cfg.on_inflight == "resume":
        reason = why_not_resumable(run, inflight[-1])
        if reason:
            run.warnings.append(f"set {inflight[-1]['id']} cannot be resumed ({reason}); discarding it")
        else:
            keep = inflight[-1]
    for row in inflight:
        if row is not keep:
            discard_set(run, row)
    return prepare_resume(run, keep) if keep is not None else None


def tidy_inflight_dirs(run: "BackupRun") -> None:
    """Staging dirs the catalog does not explain: unknown ones go, a committed one is moved on."""
    for path in sorted(run.layout.inflight.iterdir()):
        row = run.catalog.get_set(path.name)
        if row is None or row["status"] == "discarded":
            run.warnings.append(f"removed stray inflight directory {path}")
            remove_tree(path)
        elif row["status"] == "complete":
            os.replace(path, run.layout.complete / path.name)
            run.catalog.set_local_state(path.name, "complete")


def why_not_resumable(run: "BackupRun", row) -> str | None:
    paths = [d["path"] for d in run.catalog.dirs(row["id"])]
    if paths != list(run.cfg.directories):
        return "backup.directories changed since"
    if row["codec"] != run.cfg.compression.codec or bool(row["encrypted"]) != run.cfg.encryption.enabled:
        return "compression or encryption settings changed since"
    if row["store"] != run.store.name:
        return "backup.store changed since"
    return None


def discard_set(run: "BackupRun", row) -> None:
    set_id = row["id"]
    adopt_uploads(run, set_id)
    for part in run.catalog.parts(set_id):
        drop_stored(run, part)
    remove_tree(run.layout.inflight / set_id)
    remove_tree(run.layout.snapshot_dir(set_id, partial=True))
    run.catalog.set_status(set_id, "discarded", row["error"])
    run.progress.say(f"discarded unfinished set {set_id}")


def adopt_uploads(run: "BackupRun", set_id: str) -> None:
    """A put the crash interrupted either landed (adopt it, drop duplicates) or did not.

    A store that cannot search itself cheaply (a vault: inventories lag a day)
    writes ``archive:<id>`` into the part's upload journal before ``put`` returns.
    """
    for part in run.catalog.parts(set_id):
        if part["status"] != "uploading":
            continue
        journal = part["upload_id"] or ""
        if journal.startswith(ARCHIVE_JOURNAL_PREFIX):
            archive_id = journal[len(ARCHIVE_JOURNAL_PREFIX):]
            run.catalog.part_stored(set_id, part["slug"], part["idx"], archive_id, run.store.name)
            continue
        description = metadata.part_description(host=run.cfg.hostname, set_id=set_id, slug=part["slug"],
                                                idx=part["idx"], sha256=part["sha256"], plain_size=part["plain_size"])
        found = run.store.find(description)
        if found:
            run.catalog.part_stored(set_id, part["slug"], part["idx"], found[0], run.store.name)
            for extra in found[1:]:
                run.store.delete(extra)


def prepare_resume(run: "BackupRun", row) -> "SetPlan":
    from .pipeline import SetPlan

    set_id = row["id"]
    set_dir = run.layout.inflight / set_id
    set_dir.mkdir(parents=True, exist_ok=True)
    for leftover in set_dir.glob(".*.tmp"):
        leftover.unlink()
    adopt_uploads(run, set_id)
    for d in run.catalog.dirs(set_id):
        parts = run.catalog.parts(set_id, d["slug"])
        if d["status"] == "done" and all(part_usable(set_dir, p) for p in parts):
            continue
        for part in parts:
            drop_stored(run, part)
            (set_dir / part["name"]).unlink(missing_ok=True)
        run.catalog.dir_reset(set_id, d["slug"])
    run.progress.say(f"resuming set {set_id}")
    return SetPlan(set_id, row["kind"], row["parent_id"], row["chain_id"],
                   [(d["slug"], d["path"]) for d in run.catalog.dirs(set_id)])


def drop_stored(run: "BackupRun", part) -> None:
    """Delete a part's archive, or abort the multipart upload it never finished."""
    if part["archive_id"]:
        run.store.delete(part["archive_id"])
    elif part["upload_id"]:
        run.store.abandon_upload(part["upload_id"])


def part_usable(set_dir, part) -> bool:
    if part["status"] == "stored":
        return True
    path = set_dir / part["name"]
    return path.exists() and file_digests(path)[0] == part["sha256"]
