"""Job bodies for the backup tasks (backup, restore, prune, catalog.*): config, catalog and store wired together."""

from __future__ import annotations

from pathlib import Path

from ..config import BackupConfig
from ..errors import ConfigError, OrchestratorError
from ..job import JobRun
from .catalog import Catalog
from .layout import Layout
from .offsite import apply_remote_retention, cost_line, store_catalog_copy
from .pipeline import BackupRun
from .preflight import check_backup
from .reconcile import reconcile, report_lines
from .recover import rebuild_catalog
from .restore import ColdPolicy, Restorer, describe_sets, resolve_set
from .retention import finish_pending_deletions
from .retrieval import readable_jobs
from .stores import open_store


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
    run.report.summary["sets"] = len(lines)
    return lines


def restore(run: JobRun, target: str, set_id: str | None = None, directories: list[str] | None = None,
            wait: bool = False, tier: str | None = None) -> None:
    cfg: BackupConfig = run.section("backup")
    store = open_store(cfg.store)
    cold = ColdPolicy(tier=tier or cfg.store.retrieval_tier, days=cfg.store.retrieval_days, wait=wait,
                      poll_seconds=cfg.store.poll_seconds)
    if cold.tier not in ("Expedited", "Standard", "Bulk"):
        raise ConfigError(f"--tier: {cold.tier!r} is not one of Expedited, Standard, Bulk")
    with Catalog.open(catalog_path(run), run.general.catalog_timeout) as catalog:
        row = resolve_set(catalog, cfg.hostname, set_id)
        layout = Layout(cfg.staging_dir, run.general.state_dir, row["host"])
        restorer = Restorer(catalog, store, layout, cfg.encryption, run.progress,
                            cfg.compression.effective_workers(), cold)
        if run.dry:
            run.echo(f"[dry-run] would restore set {row['id']} (chain of {len(catalog.chain(row['id']))}) into {target}")
            return
        run.report.summary.update(restorer.restore(row, Path(target).absolute(), directories))


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
