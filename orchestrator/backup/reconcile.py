"""Compare what the store holds (an inventory or listing) with what the catalog expects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import metadata
from .catalog import Catalog
from .offsite import CATALOG_COPY_KEY
from .stores import ArchiveInfo, Store

VAULT_INVENTORY_LAG_S = 2 * 86400  # a vault inventory can be a day old; allow two


@dataclass
class Reconciliation:
    matched: int = 0
    missing: list[str] = field(default_factory=list)      # in the catalog, not in the store
    mismatched: list[str] = field(default_factory=list)   # in both, size or tree hash differ
    unknown: list[ArchiveInfo] = field(default_factory=list)  # ours by description, not in the catalog
    too_new: int = 0      # stored after the vault's inventory was taken
    foreign: int = 0      # not written by this tool

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.mismatched


def expected_archives(catalog: Catalog, store: Store) -> dict[str, tuple[str, int | None, str | None, float]]:
    """archive id -> (label, size, tree hash, stored-at) for everything the catalog says is in ``store``."""
    expected = {}
    for row in catalog.sets():
        if row["store"] != store.name or row["status"] == "discarded":
            continue
        for part in catalog.parts(row["id"]):
            if part["archive_id"]:
                expected[part["archive_id"]] = (f"set {row['id']} part {part['name']}", part["size"],
                                                part["tree_hash"], row["created"])
        if row["manifest_id"]:
            expected[row["manifest_id"]] = (f"set {row['id']} manifest", None, None, row["finished"] or row["created"])
    copy = catalog.meta(CATALOG_COPY_KEY)
    if copy:
        expected[copy] = ("catalog copy", None, None, time.time())
    return expected


def reconcile(catalog: Catalog, store: Store, inventory: list[ArchiveInfo]) -> Reconciliation:
    result = Reconciliation()
    expected = expected_archives(catalog, store)
    seen = set()
    for archive in inventory:
        seen.add(archive.archive_id)
        if archive.archive_id in expected:
            label, size, tree_hash, _ = expected[archive.archive_id]
            if (size is not None and archive.size != size) or (tree_hash and archive.tree_hash
                                                              and archive.tree_hash != tree_hash):
                result.mismatched.append(label)
            else:
                result.matched += 1
        elif metadata.parse_description(archive.description) is None:
            result.foreign += 1
        else:
            result.unknown.append(archive)
    lag = VAULT_INVENTORY_LAG_S if store.storage_key == "vault" else 0
    for archive_id, (label, _, _, stored_at) in expected.items():
        if archive_id not in seen:
            if time.time() - stored_at < lag:
                result.too_new += 1
            else:
                result.missing.append(label)
    return result


def report_lines(result: Reconciliation) -> list[str]:
    lines = [f"missing from the store: {label}" for label in result.missing]
    lines += [f"size or tree hash differs: {label}" for label in result.mismatched]
    for archive in result.unknown:
        fields = metadata.parse_description(archive.description) or {}
        lines.append(f"not in the catalog: {fields.get('t')} of set {fields.get('s')} ({archive.archive_id[:16]}...)")
    return lines
