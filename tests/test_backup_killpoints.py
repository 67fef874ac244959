"""kill -9 of a real ``inv backup`` at every named point between durable steps, then a rerun.

Each crash point (orchestrator/faults.py) SIGKILLs the run's whole process group, as a
cron or Jenkins kill would. After it: no tar, xz or gpg of the killed run survives, the
rerun exits 0, the store holds exactly what the catalog says, a rebuild from the store
alone on an empty state dir gives the same sets, and the newest chain restores
byte-identical. The data between the sets includes ``rm -rf B && mv A B``, the case GNU
tar's own rename records cannot restore.
"""

from __future__ import annotations

import os
import shutil

import pytest

from backupcheck import backup_killed_at, rebuild_gives_the_same_sets, store_matches_catalog
from conftest import next_second, summary_value
from treecmp import fingerprint

from orchestrator.faults import BACKUP_POINTS

RETENTION_POINTS = ["local-pruned", "remote-expiring"]
STORE_SPECIFIC = ["vault-part-sent"]  # test_glacier_store kills a real backup there
CHAIN_POINTS = [p for p in BACKUP_POINTS if p not in RETENTION_POINTS + STORE_SPECIFIC]


def first_tree(data) -> None:
    for name in ("A", "B", "C/deep"):
        (data / name).mkdir(parents=True)
    (data / "A" / "a").write_text("from A\n")
    (data / "B" / "b").write_text("from B\n")
    (data / "C" / "deep" / "c").write_bytes(os.urandom(3 * 1024 * 1024))  # several 1M chunks
    (data / "top").write_text("v1\n")


def change_tree(data) -> None:
    next_second()
    shutil.rmtree(data / "B")
    os.rename(data / "A", data / "B")
    (data / "top").write_text("v2\n")
    (data / "C" / "new").write_bytes(os.urandom(1536 * 1024))


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def restores_identically(site, tmp_path, set_id: str) -> None:
    target = tmp_path / f"restored-{set_id}"
    code, out = site.restore(target, set_id)
    assert code == 0, out
    assert fingerprint(target / site.data.relative_to("/")) == fingerprint(site.data)


@pytest.mark.slow
@pytest.mark.parametrize("point", CHAIN_POINTS)
def test_kill_9_at_each_point_of_an_incremental_then_rerun(site, tmp_path, point):
    first_tree(site.data)
    full = backup_ok(site)
    change_tree(site.data)
    backup_killed_at(site, point)
    newest = backup_ok(site)
    with site.catalog() as cat:
        chain = [r["id"] for r in cat.chain(newest)]
    assert chain[0] == full and len(chain) in (2, 3), chain
    store_matches_catalog(site)
    rebuild_gives_the_same_sets(site, tmp_path)
    restores_identically(site, tmp_path, newest)
    assert [p.name for p in (site.staging / "inflight").iterdir()] == []


@pytest.mark.slow
@pytest.mark.parametrize("point", RETENTION_POINTS)
def test_kill_9_during_retention_then_rerun(site, tmp_path, point):
    site.set("backup.full_every_days", 0)
    site.set("backup.keep_local_sets", 1)
    site.set("backup.remote_retention", {"keep_sets": 1})
    first_tree(site.data)
    backup_ok(site)
    change_tree(site.data)
    backup_killed_at(site, point)
    newest = backup_ok(site)
    with site.catalog() as cat:
        assert [r["id"] for r in cat.sets(status="complete")] == [newest]
        assert cat.pending_deletions("testhost") == []
    assert sorted(p.name for p in (site.staging / "complete").iterdir()) == [newest]
    store_matches_catalog(site)
    rebuild_gives_the_same_sets(site, tmp_path)
    restores_identically(site, tmp_path, newest)
