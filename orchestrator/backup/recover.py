"""Rebuild a lost catalog from the store alone: each set's manifest lists everything.

A rebuild is idempotent (sets already in the catalog are skipped), tolerates
several manifests for one set (an old tool's interrupted commits stored one per
attempt) and never adopts a set the store cannot restore: every part its
manifest lists must be in the store's inventory with the recorded size, and
its parent must be adopted too.  Manifests are stored after their parts, so
even a vault inventory taken a day late shows the parts of any manifest it
shows.  Encrypted manifests need the gpg secret key, as restores do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import EncryptionConfig
from ..errors import OrchestratorError
from . import metadata
from .catalog import Catalog
from .layout import Layout
from .stores import ArchiveInfo, Store


@dataclass
class Rebuild:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line each: set id and why


def rebuild_catalog(catalog: Catalog, store: Store, layout_for, readable=None,
                    encryption: EncryptionConfig | None = None) -> Rebuild:
    """Insert every restorable set whose manifest is in ``store`` and not yet in ``catalog``.

    ``layout_for(host)`` gives the staging layout, so a set whose local copy is
    still on the staging disk is recorded as such.  ``readable(ids)`` returns a
    job id per archive once cold storage made them readable (or raises NotReadyError).
    """
    encryption = encryption or EncryptionConfig()
    inventory = store.list()
    wanted = _manifests_by_set(catalog, inventory)
    ids = [archive.archive_id for archives in wanted.values() for archive in archives]
    jobs = readable(ids) if readable else {}
    result = Rebuild()
    docs, problems = [], []
    for set_id, archives in wanted.items():
        doc, manifest_id = _first_usable(store, archives, jobs, encryption, set_id, result, problems)
        if doc is not None:
            docs.append((manifest_id, doc))
    if problems and not docs:
        raise OrchestratorError(problems[0])
    docs.sort(key=lambda item: (item[1]["set"]["created"], item[1]["set"]["id"]))
    present = {a.archive_id: a.size for a in inventory}
    for manifest_id, doc in docs:
        reason = _why_not_restorable(catalog, doc, present)
        if reason:
            result.skipped.append(f"set {doc['set']['id']}: {reason}")
            continue
        insert_set(catalog, doc, manifest_id, store.name, layout_for(doc["set"]["host"]))
        result.added.append(doc["set"]["id"])
    return result


def _manifests_by_set(catalog: Catalog, inventory: list[ArchiveInfo]) -> dict[str, list[ArchiveInfo]]:
    """Manifests of sets the catalog does not have yet, newest copy first."""
    wanted: dict[str, list[ArchiveInfo]] = {}
    for archive in inventory:
        fields = metadata.parse_description(archive.description)
        if fields and fields.get("t") == "manifest" and catalog.get_set(fields["s"]) is None:
            wanted.setdefault(fields["s"], []).append(archive)
    for archives in wanted.values():
        archives.sort(key=lambda a: a.created, reverse=True)
    return wanted


def _first_usable(store: Store, archives: list[ArchiveInfo], jobs, encryption, set_id: str, result: Rebuild,
                  problems: list[str]):
    """The newest of a set's manifests that reads back; a set with none readable is skipped and said."""
    if len(archives) > 1:
        result.skipped.append(f"set {set_id}: {len(archives)} manifests in the store, the newest readable one "
                              "is used (inv catalog.reconcile lists the others)")
    for archive in archives:
        label = f"{store.name}: manifest {archive.archive_id[:16]}... of set {set_id}"
        try:
            data = store.read_range(archive.archive_id, 0, -1, jobs.get(archive.archive_id))
            return metadata.decode_manifest(data, encryption, label), archive.archive_id
        except OrchestratorError as exc:
            problems.append(str(exc))
            result.skipped.append(str(exc))
    return None, None


def _why_not_restorable(catalog: Catalog, doc: dict, present: dict[str, int]) -> str | None:
    parent = doc["set"]["parent_id"]
    if parent and (catalog.get_set(parent) is None or catalog.get_set(parent)["status"] != "complete"):
        return f"its parent set {parent} is not in the store, so it cannot be restored"
    missing = [p["name"] for p in doc["parts"] if present.get(p["archive_id"]) != p["size"]]
    if missing:
        return f"{len(missing)} of its {len(doc['parts'])} parts are not in the store (e.g. {missing[0]})"
    return None


def insert_set(catalog: Catalog, doc: dict, manifest_id: str, store_name: str, layout: Layout) -> None:
    s = doc["set"]
    local = "complete" if (layout.complete / s["id"]).is_dir() else "pruned"
    with catalog.transaction() as conn:
        conn.execute(
            "INSERT INTO sets (id, host, kind, parent_id, chain_id, status, local_state, store, codec, encrypted,"
            " created, finished, manifest_id) VALUES (?, ?, ?, ?, ?, 'complete', ?, ?, ?, ?, ?, ?, ?)",
            (s["id"], s["host"], s["kind"], s["parent_id"], s["chain_id"], local, store_name, s["codec"],
             s["encrypted"], s["created"], s["finished"], manifest_id),
        )
        conn.executemany(
            "INSERT INTO set_dirs (set_id, slug, path, position, status, tar_rc, bytes_in, entries)"
            " VALUES (?, ?, ?, ?, 'done', ?, ?, ?)",
            [(s["id"], d["slug"], d["path"], d["position"], d["tar_rc"], d["bytes_in"], d.get("entries"))
             for d in doc["dirs"]],
        )
        conn.executemany(
            "INSERT INTO parts (set_id, slug, idx, name, plain_size, plain_sha256, size, sha256, tree_hash,"
            " status, archive_id, store, leaves) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored', ?, ?, ?)",
            [(s["id"], p["slug"], p["idx"], p["name"], p["plain_size"], p["plain_sha256"], p["size"], p["sha256"],
              p["tree_hash"], p["archive_id"], store_name, bytes.fromhex(p["leaves"]) if p.get("leaves") else None)
             for p in doc["parts"]],
        )
        conn.executemany(
            "INSERT INTO files VALUES (:set_id, :slug, :path, :type, :mode, :uid, :gid, :size, :sha256, :link, :keep)",
            [{"set_id": s["id"], "slug": slug, **metadata.file_row(entry)}
             for slug, entries in (doc.get("files") or {}).items() for entry in entries],
        )
