"""Retention: N complete sets on the staging disk (the seed's "a week"), and sets in the store.

Remote deletion minds what cold storage bills: an archive deleted before the
class's minimum storage duration (90 days for vaults and GLACIER, 180 for
DEEP_ARCHIVE) is charged for the rest anyway, so such sets are refused unless
forced, and the charge is shown either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import MIN_STORAGE_DAYS, PriceConfig
from ..errors import OrchestratorError
from ..faults import crash_point
from .catalog import Catalog
from .layout import Layout, remove_tree
from .stores import Store


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
        remove_tree(layout.set_dir(set_id, "complete"))
        crash_point("local-pruned")
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


# remote retention ----------------------------------------------------------------------------
DAY = 86400.0


@dataclass
class Expiry:
    """A set remote retention would delete, and what deleting it now would cost."""

    set_id: str
    age_days: float
    stored_bytes: int
    early_days_left: float
    early_charge: float

    @property
    def too_young(self) -> bool:
        return self.early_days_left > 0


def remote_sets_to_expire(catalog: Catalog, host: str, store_name: str, keep_sets: int, max_age_days: int,
                          now: float | None = None) -> list[str]:
    """Complete sets in ``store_name`` beyond ``keep_sets`` or older than ``max_age_days``.

    The newest complete set is always kept, and a kept set keeps its whole chain.
    """
    now = time.time() if now is None else now
    sets = [row for row in catalog.sets(host, "complete") if row["store"] == store_name]
    if not sets or (keep_sets == 0 and max_age_days == 0):
        return []
    kept = {sets[-1]["id"]}
    for i, row in enumerate(sets):
        young_enough = max_age_days == 0 or now - row["created"] < max_age_days * DAY
        within_count = keep_sets == 0 or i >= len(sets) - keep_sets
        if young_enough and within_count:
            kept.add(row["id"])
    for set_id in list(kept):
        kept |= {row["id"] for row in catalog.chain(set_id)}
    return [row["id"] for row in sets if row["id"] not in kept]


def price_per_gb_month(prices: PriceConfig, storage_key: str) -> float:
    return getattr(prices, storage_key.lower())


def expiry(catalog: Catalog, set_id: str, storage_key: str, prices: PriceConfig, now: float) -> Expiry:
    row = catalog.get_set(set_id)
    stored = catalog.set_totals(set_id)["stored"]
    age = (now - row["created"]) / DAY
    left = max(MIN_STORAGE_DAYS.get(storage_key, 0) - age, 0.0)
    charge = stored / 1e9 * price_per_gb_month(prices, storage_key) * left / 30
    return Expiry(set_id, age, stored, left, charge)


def expire_remote(catalog: Catalog, store: Store, layout: Layout, plans: list[Expiry], *, force: bool) -> list[str]:
    """Delete each set's archives, its manifest, its staging copy, then its catalog rows."""
    young = [p for p in plans if p.too_young]
    if young and not force:
        total = sum(p.early_charge for p in young)
        raise OrchestratorError(
            f"refusing to delete {len(young)} set(s) younger than the {store.storage_key} minimum storage "
            f"duration ({', '.join(p.set_id for p in young)}): early deletion would cost about "
            f"${total:.2f}; wait, or rerun with --force")
    deleted = []
    for plan in plans:
        delete_set_everywhere(catalog, store, layout, plan.set_id)
        deleted.append(plan.set_id)
    return deleted


def delete_set_everywhere(catalog: Catalog, store: Store, layout: Layout, set_id: str) -> None:
    """Mark, then the manifest (so no rebuild adopts a half-deleted set), parts, local copies, catalog rows.

    Every step can be repeated, so a deletion a kill interrupted is finished by
    :func:`finish_pending_deletions` on the next run; until then the set is
    not listed as complete.
    """
    catalog.mark_for_deletion(set_id)
    manifest = catalog.get_set(set_id)["manifest_id"]
    if manifest:
        store.delete(manifest)
    crash_point("remote-expiring")
    for part in catalog.parts(set_id):
        if part["archive_id"]:
            store.delete(part["archive_id"])
    remove_tree(layout.set_dir(set_id, "complete"))
    remove_tree(layout.snapshot_dir(set_id))
    catalog.forget_set(set_id)


def finish_pending_deletions(catalog: Catalog, store: Store, layout: Layout) -> list[str]:
    pending = catalog.pending_deletions(layout.host)
    for set_id in pending:
        delete_set_everywhere(catalog, store, layout, set_id)
    return pending


def stored_cost(catalog: Catalog, store_name: str, storage_key: str, prices: PriceConfig) -> tuple[int, float]:
    """(bytes stored in ``store_name`` by complete sets, USD per month)."""
    total = catalog.stored_bytes(store_name)
    return total, total / 1e9 * price_per_gb_month(prices, storage_key)
