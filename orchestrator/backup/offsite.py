"""After each set: a copy of the catalog in the store, remote retention, and the cost line."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from ..config import BackupConfig, human_size
from ..errors import OrchestratorError
from ..faults import crash_point
from . import metadata
from .catalog import Catalog
from .codec import encrypt_argv
from .layout import Layout
from .retention import expire_remote, expiry, remote_sets_to_expire, stored_cost, price_per_gb_month
from .stores import Store
from .stores.base import ARCHIVE_JOURNAL_PREFIX
from .treehash import file_digests

CATALOG_COPY_KEY = "catalog_copy_archive"
COPY_PENDING_KEY = "catalog_copy_pending"  # {"set", "previous"} while a new copy is being stored


def store_catalog_copy(catalog: Catalog, store: Store, cfg: BackupConfig, set_id: str) -> str:
    """Store the catalog (gpg-encrypted when recipients are set); drop the previous copy.

    The set it belongs to is written down first, so a copy a kill left unrecorded
    (or a previous copy left undeleted) is found and removed by the next run.
    """
    settle_catalog_copies(catalog, store, cfg.hostname)
    previous = catalog.meta(CATALOG_COPY_KEY)
    catalog.set_meta(COPY_PENDING_KEY, json.dumps({"set": set_id, "previous": previous}))
    journal = catalog.meta_journal("catalog-copy")
    with tempfile.TemporaryDirectory(prefix="geo-catalog-") as tmp:
        snapshot = Path(tmp) / "catalog.sqlite"
        catalog.snapshot_to(snapshot)
        if cfg.encryption.enabled:
            encrypted = Path(tmp) / "catalog.sqlite.gpg"
            done = subprocess.run(encrypt_argv(cfg.encryption) + ["--output", str(encrypted), str(snapshot)],
                                  capture_output=True)
            if done.returncode:
                reason = done.stderr.decode(errors="replace").strip().splitlines()
                raise OrchestratorError("encrypting the catalog copy failed" + (f": {reason[-1]}" if reason else ""))
            snapshot = encrypted
        sha256, tree_hash, _ = file_digests(snapshot)
        archive_id = store.put(snapshot, description=metadata.catalog_description(host=cfg.hostname, set_id=set_id),
                               sha256=sha256, tree_hash=tree_hash, journal=journal)
    crash_point("catalog-copy-stored")
    catalog.set_meta(CATALOG_COPY_KEY, archive_id)
    crash_point("catalog-copy-recorded")
    if previous and previous != archive_id:
        store.delete(previous)
    journal.clear()
    catalog.set_meta(COPY_PENDING_KEY, "")
    return archive_id


def settle_catalog_copies(catalog: Catalog, store: Store, host: str) -> None:
    """Remove copies an interrupted :func:`store_catalog_copy` left in the store beside the recorded one."""
    pending = json.loads(catalog.meta(COPY_PENDING_KEY) or "null")
    if not pending:
        return
    current = catalog.meta(CATALOG_COPY_KEY)
    journal = catalog.meta_journal("catalog-copy")
    saved = (journal.load() or "").removeprefix(ARCHIVE_JOURNAL_PREFIX) or None
    found = store.find(metadata.catalog_description(host=host, set_id=pending["set"]))
    for archive_id in {*found, saved, pending["previous"]} - {current, None}:
        store.delete(archive_id)
    journal.clear()
    catalog.set_meta(COPY_PENDING_KEY, "")


def apply_remote_retention(catalog: Catalog, store: Store, layout: Layout, cfg: BackupConfig, *,
                           force: bool = False, dry: bool = False, echo=print) -> tuple[list[str], list[str]]:
    """(deleted or would-be-deleted set ids, warnings).  Too-young sets are kept unless forced."""
    now = time.time()
    ids = remote_sets_to_expire(catalog, cfg.hostname, store.name, cfg.remote_retention.keep_sets,
                                cfg.remote_retention.max_age_days, now)
    plans = [expiry(catalog, set_id, store.storage_key, cfg.prices, now) for set_id in ids]
    for plan in plans:
        echo(retention_line(plan, store.name, dry=dry, force=force))
    if dry:
        return [p.set_id for p in plans], []
    warnings = []
    if not force:
        young = [p for p in plans if p.too_young]
        if young:
            warnings.append(f"kept {len(young)} expired set(s) younger than the {store.storage_key} minimum storage "
                            f"duration (early deletion would cost about ${sum(p.early_charge for p in young):.2f}); "
                            "inv prune --force deletes them now")
        plans = [p for p in plans if not p.too_young]
    return expire_remote(catalog, store, layout, plans, force=force), warnings


def retention_line(plan, store_name: str, *, dry: bool, force: bool) -> str:
    """What happens to one expired set, and what deleting it early costs."""
    where = f"{plan.age_days:.0f} days old, {human_size(plan.stored_bytes)} in {store_name}"
    charge = f"early-deletion charge about ${plan.early_charge:.2f} ({plan.early_days_left:.0f} days left)"
    if dry:
        return f"would delete set {plan.set_id}: {where}" + (f", {charge}" if plan.too_young else "")
    if plan.too_young and not force:
        return f"keeping expired set {plan.set_id}: {where}, younger than the minimum storage duration, {charge}"
    return f"expiring set {plan.set_id}: {where}" + (f", {charge}" if plan.too_young else "")


def cost_line(catalog: Catalog, store: Store, cfg: BackupConfig) -> str:
    stored, monthly = stored_cost(catalog, store.name, store.storage_key, cfg.prices)
    price = price_per_gb_month(cfg.prices, store.storage_key)
    return f"{stored / 1e9:.3f} GB in {store.storage_key}, about ${monthly:.2f}/month at ${price}/GB-month"
