"""Local retention: keep N complete sets on the staging disk (the seed's "a week")."""

from __future__ import annotations

from .catalog import Catalog
from .layout import Layout, remove_tree


def local_sets_to_prune(catalog: Catalog, host: str, keep: int) -> list[str]:
    """Complete local sets beyond the newest ``keep``.

    Inflight sets are never counted nor touched; the newest complete set is
    always kept; a kept incremental keeps its whole chain back to its full set.
    """
    local = [row for row in catalog.sets(host, "complete") if row["local_state"] == "complete"]
    if not local:
        return []
    kept = {row["id"] for row in local[-max(keep, 1):]}
    for set_id in list(kept):
        kept |= {row["id"] for row in catalog.chain(set_id)}
    return [row["id"] for row in local if row["id"] not in kept]


def prune_local(catalog: Catalog, layout: Layout, keep: int) -> list[str]:
    removed = []
    for set_id in local_sets_to_prune(catalog, layout.host, keep):
        remove_tree(layout.complete / set_id)
        catalog.set_local_state(set_id, "pruned")
        removed.append(set_id)
    return removed


def prune_snapshots(catalog: Catalog, layout: Layout) -> None:
    """Only the newest complete set's tar snapshots seed the next incremental."""
    latest = catalog.latest_complete(layout.host)
    if latest is None or not layout.snapshots.is_dir():
        return
    inflight = {row["id"] for row in catalog.sets(layout.host, "inflight")}
    for path in layout.snapshots.iterdir():
        set_id = path.name.removesuffix(".partial")
        if set_id != latest["id"] and set_id not in inflight:
            remove_tree(path)
