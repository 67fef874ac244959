"""Rebuild a lost catalog from the store alone: each set's manifest lists everything."""

from __future__ import annotations

import json

from ..errors import OrchestratorError
from . import metadata
from .catalog import Catalog
from .layout import Layout
from .stores import Store


def rebuild_catalog(catalog: Catalog, store: Store, layout_for, readable=None) -> list[str]:
    """Insert every set whose manifest is in ``store`` and not yet in ``catalog``; returns their ids.

    ``layout_for(host)`` gives the staging layout, so a set whose local copy is
    still on the staging disk is recorded as such.  ``readable(ids)`` returns a
    job id per archive once cold storage made them readable (or raises NotReadyError).
    """
    wanted = []
    for archive in store.list():
        fields = metadata.parse_description(archive.description)
        if fields and fields.get("t") == "manifest" and catalog.get_set(fields["s"]) is None:
            wanted.append(archive.archive_id)
    jobs = readable(wanted) if readable else {}
    manifests = [(archive_id, _load(store, archive_id, jobs.get(archive_id))) for archive_id in wanted]
    manifests.sort(key=lambda item: (item[1]["set"]["created"], item[1]["set"]["id"]))
    for manifest_id, doc in manifests:
        insert_set(catalog, doc, manifest_id, store.name, layout_for(doc["set"]["host"]))
    return [doc["set"]["id"] for _, doc in manifests]


def _load(store: Store, archive_id: str, job_id: str | None) -> dict:
    try:
        doc = json.loads(store.read_range(archive_id, 0, -1, job_id))
    except ValueError:
        raise OrchestratorError(f"{store.name}: manifest {archive_id[:16]}... is not valid JSON") from None
    if doc.get("format") != metadata.MAGIC:
        raise OrchestratorError(f"{store.name}: manifest {archive_id[:16]}... has unknown format {doc.get('format')!r}")
    return doc


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
            "INSERT INTO set_dirs (set_id, slug, path, position, status, tar_rc, bytes_in)"
            " VALUES (?, ?, ?, ?, 'done', ?, ?)",
            [(s["id"], d["slug"], d["path"], d["position"], d["tar_rc"], d["bytes_in"]) for d in doc["dirs"]],
        )
        conn.executemany(
            "INSERT INTO parts (set_id, slug, idx, name, plain_size, plain_sha256, size, sha256, tree_hash,"
            " status, archive_id, store, leaves) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored', ?, ?, ?)",
            [(s["id"], p["slug"], p["idx"], p["name"], p["plain_size"], p["plain_sha256"], p["size"], p["sha256"],
              p["tree_hash"], p["archive_id"], store_name, bytes.fromhex(p["leaves"]) if p.get("leaves") else None)
             for p in doc["parts"]],
        )
