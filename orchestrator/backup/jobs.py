"""Job bodies for the backup tasks (backup, restore, prune, catalog.*): config, catalog and store wired together."""

from __future__ import annotations

import random
import time
from pathlib import Path

from ..config import BackupConfig, human_size
from ..errors import ConfigError, OrchestratorError
from ..job import JobRun
from .catalog import Catalog
from .layout import Layout, remove_tree
from .offsite import apply_remote_retention, cost_line, store_catalog_copy
from .pipeline import BackupRun
from .preflight import check_backup
from .reconcile import reconcile, report_lines
from .recover import rebuild_catalog
from .restore import ColdPolicy, Restorer, describe_sets, resolve_set
from .retention import finish_pending_deletions
from .retrieval import readable_jobs
from .stores import open_store
from .verify import (SHOWN_PROBLEMS, check_room, drill_bytes, drill_root, retrieval_cost, run_drill,
                     sample_directories, scratch_dir)


def catalog_path(run: JobRun) -> Path:
    return run.general.state_dir / "catalog.sqlite"


def backup(run: JobRun) -> None:
    cfg: BackupConfig = run.section("backup")
    if not run.dry:
        check_backup(cfg)
        run.general.state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.store)
    if run.dry:
        pipeline = BackupRun(cfg, run.general, None, store, run.local(), run.progress, dry=True)
        run.report.summary.update(pipeline.execute())
        return
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        pipeline = BackupRun(cfg, run.general, catalog, store, run.local(), run.progress)
        try:
            summary = pipeline.execute()
            run.report.summary.update(summary)
        finally:
            run.report.warnings.extend(pipeline.warnings)
        store_catalog_copy(catalog, store, cfg, summary["set"])
        deleted, warnings = apply_remote_retention(catalog, store, pipeline.layout, cfg, echo=run.progress.say)
        run.report.warnings.extend(warnings)
        run.report.summary["remote_sets_expired"] = ", ".join(deleted) or "none"
        add_cost_line(run, catalog, store, cfg)
        run.report.summary["last_drill"] = last_drill(catalog, cfg.hostname)


def last_drill(catalog: Catalog, host: str) -> str:
    """When a set of this host last passed ``inv verify``: a backup is proven by a restore, not by its OK."""
    drilled = [row for row in catalog.sets(host, "complete") if row["verified"]]
    if not drilled:
        return "never (inv verify restores the newest set and compares every file)"
    newest = max(drilled, key=lambda row: row["verified"])
    return f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(newest['verified']))} UTC, set {newest['id']}"


def add_cost_line(run: JobRun, catalog: Catalog, store, cfg: BackupConfig) -> None:
    """Stored GB and the monthly bill; a directory store costs nothing we know of, so it gets none."""
    if store.storage_key != "directory":
        run.report.summary["cost"] = cost_line(catalog, store, cfg)


def reconcile_store(run: JobRun) -> None:
    """Inventory (vault: a retrieval job; S3: a listing) against the catalog; exit 1 on loss."""
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        result = reconcile(catalog, store, store.list())
    for line in report_lines(result):
        run.echo(line)
    run.report.summary.update({"store": store.name, "matched": result.matched, "missing": len(result.missing),
                               "mismatched": len(result.mismatched), "not_in_catalog": len(result.unknown),
                               "newer_than_inventory": result.too_new, "foreign": result.foreign})
    if result.unknown:
        run.report.warnings.append(f"{len(result.unknown)} archive(s) of ours are not in the catalog "
                                   "(inv catalog.rebuild adopts complete sets)")
    if not result.healthy:
        raise OrchestratorError(f"{store.name} lost {len(result.missing)} and altered {len(result.mismatched)} "
                                "archive(s) the catalog expects")


def prune(run: JobRun, force: bool = False) -> None:
    """Remote retention on its own: ``--dry`` lists what would go and what it would cost."""
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        layout = Layout(cfg.staging_dir, run.general.state_dir, cfg.hostname)
        if not run.dry:
            for set_id in finish_pending_deletions(catalog, store, layout):
                run.echo(f"finished deleting set {set_id} (an earlier run was interrupted)")
        deleted, warnings = apply_remote_retention(catalog, store, layout, cfg, force=force, dry=run.dry,
                                                   echo=run.echo)
        run.report.warnings.extend(warnings)
        run.report.summary["sets_expired" if not run.dry else "sets_that_would_expire"] = len(deleted)
        add_cost_line(run, catalog, store, cfg)


def list_sets(run: JobRun, host: str | None = None) -> list[str]:
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        lines = describe_sets(catalog, host)
    for line in lines or ["no backup sets in the catalog yet"]:
        run.echo(line)
    run.report.summary["sets"] = max(len(lines) - 1, 0)
    return lines


def restore(run: JobRun, target: str, set_id: str | None = None, directories: list[str] | None = None,
            wait: bool = False, tier: str | None = None) -> None:
    if not target:
        raise ConfigError("--target: say where to restore (a new or empty directory); inv restore --list lists sets")
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    cold = ColdPolicy(tier=tier or cfg.store.retrieval_tier, days=cfg.store.retrieval_days, wait=wait,
                      poll_seconds=cfg.store.poll_seconds)
    check_tier(cold.tier, store.storage_key)
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        row = resolve_set(catalog, cfg.hostname, set_id)
        layout = Layout(cfg.staging_dir, run.general.state_dir, row["host"])
        restorer = Restorer(catalog, store, layout, cfg.encryption, run.progress,
                            cfg.compression.effective_workers(), cold)
        if run.dry:
            run.echo(f"[dry-run] would restore set {row['id']} (chain of {len(catalog.chain(row['id']))}) into {target}")
            return
        run.report.summary.update(restorer.restore(row, Path(target).absolute(), directories))


def verify(run: JobRun, set_id: str | None = None, sample: int = 0, tier: str | None = None,
           wait: bool = False, seed: int | None = None) -> None:
    """A restore drill from the store into a scratch directory, compared file by file with the index."""
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    cold = ColdPolicy(tier=tier or ("Bulk" if sample else cfg.store.retrieval_tier), days=cfg.store.retrieval_days,
                      wait=wait, poll_seconds=cfg.store.poll_seconds)
    check_tier(cold.tier, store.storage_key)
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        row = resolve_set(catalog, cfg.hostname, set_id)
        chain = catalog.chain(row["id"])
        slugs = sample_directories(catalog, chain, sample, random.Random(seed)) if sample else \
            [d["slug"] for d in catalog.dirs(row["id"])]
        stored, parts, plain = drill_bytes(catalog, chain, slugs)
        cost = retrieval_cost(store.storage_key, cold.tier, stored, parts)
        paths = [d["path"] for d in catalog.dirs(row["id"]) if d["slug"] in slugs]
        run.echo(f"drill: set {row['id']} (chain of {len(chain)}), {', '.join(paths)}: {parts} parts, "
                 f"{human_size(stored)} from {store.name}"
                 + (f", retrieval about ${cost:.2f} ({cold.tier} tier)" if cost is not None else ""))
        if run.dry:
            return
        layout = Layout(cfg.staging_dir, run.general.state_dir, row["host"])
        remove_tree(drill_root(layout))  # what a killed drill left
        layout.staging_dir.mkdir(parents=True, exist_ok=True)
        check_room(layout.staging_dir, stored, plain)
        restorer = Restorer(catalog, store, layout, cfg.encryption, run.progress,
                            cfg.compression.effective_workers(), cold, use_local=False)
        result = run_drill(restorer, row, slugs, scratch_dir(layout, row["id"]))
        report_drill(run, row, chain, slugs, parts, stored, cost, result)
        catalog.set_verified(row["id"], time.time())


def report_drill(run: JobRun, row, chain, slugs, parts, stored, cost, result) -> None:
    run.report.summary.update({
        "set": row["id"], "chain": " -> ".join(r["id"] for r in chain), "directories": len(slugs),
        "parts": parts, "read_from_store": human_size(stored), "entries_checked": result.entries,
        "content_hashed": human_size(result.bytes_hashed), "problems": len(result.problems),
        "problem_list": result.problems[:SHOWN_PROBLEMS],
    })
    if cost is not None:
        run.report.summary["retrieval_cost"] = f"about ${cost:.2f}"
    for path in result.unindexed:
        run.report.warnings.append(f"{path}: restored and every part verified, but this set has no file index "
                                   "(made by an older version), so files were not compared")
    if result.problems:
        shown = "; ".join(result.problems[:3])
        raise OrchestratorError(f"drill of set {row['id']} FAILED: {len(result.problems)} problem(s): {shown}")


def check_tier(tier: str, storage_key: str) -> None:
    if tier not in ("Expedited", "Standard", "Bulk"):
        raise ConfigError(f"--tier: {tier!r} is not one of Expedited, Standard, Bulk")
    if storage_key == "DEEP_ARCHIVE" and tier == "Expedited":
        raise ConfigError("--tier: DEEP_ARCHIVE has no Expedited retrievals (Standard or Bulk)")


def rebuild(run: JobRun, wait: bool = False) -> None:
    """Recreate catalog entries from the store's manifests (a fresh machine, a lost state dir)."""
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    if run.dry:
        run.echo(f"[dry-run] would read every manifest in {store.name} into {catalog_path(run)}")
        return
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        def readable(ids):
            return readable_jobs(catalog, store, ids, tier=cfg.store.retrieval_tier, days=cfg.store.retrieval_days,
                                 wait=wait, poll_seconds=cfg.store.poll_seconds, progress=run.progress)

        result = rebuild_catalog(catalog, store, lambda host: Layout(cfg.staging_dir, run.general.state_dir, host),
                                 readable, cfg.encryption)
    for set_id in result.added:
        run.echo(f"recovered set {set_id}")
    run.report.warnings.extend(result.skipped)
    run.report.summary.update({"recovered_sets": len(result.added), "skipped": len(result.skipped),
                               "store": store.name})
