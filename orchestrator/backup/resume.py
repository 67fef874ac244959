"""After a crash or ``kill -9``: resume the inflight set, or discard it cleanly.

Granularity is the directory: a directory whose tar finished and whose parts
are all recorded (and still intact on disk, or already stored) is kept; any
other directory is dropped everywhere (local files, stored archives, catalog
rows) and archived again, because a second tar of it would not produce the
same bytes.  A commit a kill interrupted is finished from where it stopped:
a manifest already in the store is adopted, never stored twice.  Complete
sets are never touched here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..faults import crash_point
from . import metadata
from .catalog import Catalog
from .layout import Layout, remove_tree
from .retention import finish_pending_deletions
from .stores import Store
from .stores.base import ARCHIVE_JOURNAL_PREFIX, UploadJournal
from .treehash import file_digests

if TYPE_CHECKING:
    from .pipeline import BackupRun, SetPlan


def settle_leftovers(run: "BackupRun") -> "SetPlan | None":
    for set_id in finish_pending_deletions(run.catalog, run.store, run.layout):
        run.progress.say(f"finished deleting set {set_id} from {run.store.name} (an earlier run was interrupted)")
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
    for row in run.catalog.sets(run.cfg.hostname, "complete"):
        if row["local_state"] == "inflight":
            move_to_complete(run.catalog, run.layout, row["id"])


def move_to_complete(catalog: Catalog, layout: Layout, set_id: str) -> None:
    """The committed set's staging copy into ``complete/`` (one rename), then the catalog says so."""
    inflight, complete = layout.inflight / set_id, layout.complete / set_id
    if inflight.exists() and not complete.exists():
        os.replace(inflight, complete)
        crash_point("moved-to-complete")
    catalog.set_local_state(set_id, "complete" if complete.is_dir() else "pruned")


def promote_snapshots(layout: Layout, set_id: str) -> None:
    """``<set>.partial`` becomes ``<set>``: the snapshots the next incremental starts from."""
    partial, final = layout.snapshot_dir(set_id, partial=True), layout.snapshot_dir(set_id)
    if partial.exists():
        remove_tree(final)
        os.replace(partial, final)


def unpromote_snapshots(layout: Layout, set_id: str) -> None:
    """A set resumed after its snapshots were promoted works on them as ``.partial`` again."""
    partial, final = layout.snapshot_dir(set_id, partial=True), layout.snapshot_dir(set_id)
    if final.exists() and not partial.exists():
        os.replace(final, partial)
    remove_tree(final)


def part_description_of(catalog: Catalog, part) -> str:
    set_row = catalog.get_set(part["set_id"])
    (dir_row,) = [d for d in catalog.dirs(part["set_id"]) if d["slug"] == part["slug"]]
    return metadata.describe_part(set_row, dir_row, part)


def adopt_manifest(store: Store, set_row, journal: UploadJournal) -> str | None:
    """A manifest an interrupted commit already stored (extra copies are deleted), or None."""
    saved = journal.load() or ""
    if saved.startswith(ARCHIVE_JOURNAL_PREFIX):
        return saved[len(ARCHIVE_JOURNAL_PREFIX):]
    found = store.find(metadata.manifest_description(host=set_row["host"], set_id=set_row["id"]))
    for extra in found[1:]:
        store.delete(extra)
    return found[0] if found else None


def drop_manifest(store: Store, catalog: Catalog, set_row) -> None:
    """Delete every manifest of a set that will not be committed as it is, so no rebuild adopts it."""
    journal = catalog.meta_journal(f"manifest:{set_row['id']}")
    manifest_id = set_row["manifest_id"] or adopt_manifest(store, set_row, journal)
    if manifest_id:
        store.delete(manifest_id)
    journal.clear()
    catalog.set_manifest(set_row["id"], None)


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
    drop_manifest(run.store, run.catalog, row)
    adopt_uploads(run, set_id)
    for part in run.catalog.parts(set_id):
        drop_stored(run, part)
    remove_tree(run.layout.set_dir(set_id, "inflight"))
    remove_tree(run.layout.snapshot_dir(set_id, partial=True))
    remove_tree(run.layout.snapshot_dir(set_id))
    for d in run.catalog.dirs(set_id):
        run.catalog.dir_reset(set_id, d["slug"])
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
        found = run.store.find(part_description_of(run.catalog, part))
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
    unpromote_snapshots(run.layout, set_id)
    adopt_uploads(run, set_id)
    redo = [d for d in run.catalog.dirs(set_id)
            if d["status"] != "done" or not all(part_usable(set_dir, p) for p in run.catalog.parts(set_id, d["slug"]))]
    if redo:
        drop_manifest(run.store, run.catalog, row)
    for d in redo:
        for part in run.catalog.parts(set_id, d["slug"]):
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
