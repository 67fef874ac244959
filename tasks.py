"""invoke entry point: ``inv --list`` shows the verbs; the logic lives in ``orchestrator``."""

from invoke import Collection, task

from orchestrator import config
from orchestrator.backup import jobs as backup_jobs
from orchestrator.job import run_task


@task
def backup(c):
    """Back up every configured directory: tar | split | xz | gpg -> store, with catalog and retention."""
    run_task(c, "backup", backup_jobs.backup)


@task(
    iterable=["dir"],
    help={
        "list": "list the sets in the catalog and exit",
        "set": "set id to restore (default: the newest complete set)",
        "target": "empty or new directory to restore into",
        "dir": "restore only this backed-up directory (repeatable), e.g. --dir /etc",
        "wait": "poll cold storage until the data is readable, instead of exiting 75 (not ready yet)",
        "tier": "retrieval tier for cold storage: Expedited, Standard or Bulk (default: backup.store.retrieval_tier)",
    },
)
def restore(c, target=None, set=None, dir=None, list=False, wait=False, tier=None):
    """Restore a set and its incremental chain into a directory, verifying every part first.

    Data in Glacier or DEEP_ARCHIVE is requested first: the run exits 75 with an
    estimate until it is readable (rerun then), or polls with --wait.
    """
    if list or not target:
        run_task(c, "restore-list", backup_jobs.list_sets, locked=False)
        return
    run_task(c, "restore", lambda run: backup_jobs.restore(run, target, set, dir or None, wait, tier))


@task(help={"force": "also delete sets younger than the storage class's minimum duration (pays the early-deletion charge)"})
def prune(c, force=False):
    """Delete sets from the store by backup.remote_retention (count and age); `inv --dry prune` only lists."""
    run_task(c, "prune", lambda run: backup_jobs.prune(run, force))


@task(help={"wait": "poll cold storage until the manifests are readable, instead of exiting 75"})
def rebuild(c, wait=False):
    """Rebuild the backup catalog from the store alone (every set's manifest), e.g. on a fresh machine."""
    run_task(c, "catalog-rebuild", lambda run: backup_jobs.rebuild(run, wait))


@task
def reconcile(c):
    """Compare the store's inventory (vault job or S3 listing) with the catalog: missing, unknown, mismatched."""
    run_task(c, "catalog-reconcile", backup_jobs.reconcile_store)


catalog = Collection("catalog")
catalog.add_task(rebuild)
catalog.add_task(reconcile)
ns = Collection(backup, restore, prune, catalog)
ns.configure(config.defaults())
