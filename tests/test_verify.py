"""``inv verify``: the restore drill restores from the store and compares every file with the index."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import next_second, summary_value
from test_backup_roundtrip import gpg_home  # noqa: F401  (fixture)
from test_cold_restore import ThawingStore
from treecmp import make_awkward_tree

from orchestrator.backup import jobs
from orchestrator.errors import EXIT_NOT_READY


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def verify(site, **kw) -> tuple[int, str]:
    return site.run("verify", lambda run: jobs.verify(run, kw.get("set_id"), kw.get("sample", 0), kw.get("tier"),
                                                      False, kw.get("seed")))


def drill_dir(site):
    return site.staging / "drill"


def latest_report(site) -> dict:
    return json.loads((site.root / "state" / "reports" / "verify-latest.json").read_text())


def test_drill_of_an_encrypted_incremental_chain_checks_every_file(site, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    make_awkward_tree(site.data, big_size=1500 * 1024)
    backup_ok(site)
    next_second()
    (site.data / "sub" / "deeper" / "file").write_text("changed\n")
    (site.data / "with space.txt").unlink()
    newest = backup_ok(site)
    for part_dir in (site.staging / "complete").iterdir():
        for part in part_dir.iterdir():
            part.write_bytes(b"the drill must not read staging copies")
    code, out = verify(site)
    assert code == 0, out
    assert summary_value(out, "set") == newest
    assert summary_value(out, "problems") == "0"
    assert int(summary_value(out, "entries_checked")) == 1 + sum(len(d) + len(f) for _, d, f in os.walk(site.data))
    assert not drill_dir(site).exists() or list(drill_dir(site).iterdir()) == []
    with site.catalog() as cat:
        assert cat.get_set(newest)["verified"] is not None


@pytest.mark.parametrize("tamper, count, problem", [
    ("UPDATE files SET sha256 = 'ab' || substr(sha256, 3) WHERE CAST(path AS TEXT) LIKE '%/big.bin'", 1,
     "/big.bin: content differs from what was backed up"),
    ("UPDATE files SET mode = 420 WHERE CAST(path AS TEXT) LIKE '%/suid-tool'", 1,
     "/suid-tool: mode/owner 4755 0:0, backed up as 644 0:0"),
    ("DELETE FROM files WHERE CAST(path AS TEXT) LIKE '%/owned'", 1, "/data/owned"),
    ("UPDATE files SET path = CAST(path || '-gone' AS BLOB) WHERE CAST(path AS TEXT) LIKE '%/empty'", 2,
     "/data/empty-gone"),
    ("UPDATE files SET link = CAST('elsewhere' AS BLOB) WHERE CAST(path AS TEXT) LIKE '%/rel-link'", 1,
     "/rel-link: symlink points to with space.txt, backed up as elsewhere"),
])
def test_drill_reports_what_does_not_come_back_as_recorded(site, tamper, count, problem):
    make_awkward_tree(site.data, big_size=1200 * 1024)
    set_id = backup_ok(site)
    with site.catalog() as cat:
        cat.conn.execute(tamper)
    code, out = verify(site)
    assert code == 1, out
    assert f"drill of set {set_id} FAILED: {count} problem(s): " in out
    assert problem in out
    assert latest_report(site)["summary"]["problems"] == count
    assert list(drill_dir(site).iterdir()) == [], "the scratch copy is removed after a failed drill"
    with site.catalog() as cat:
        assert cat.get_set(set_id)["verified"] is None


def test_a_corrupted_stored_part_fails_the_drill_and_leaves_nothing(site):
    (site.data / "f").write_bytes(os.urandom(300 * 1024))
    backup_ok(site)
    with site.catalog() as cat:
        (part,) = cat.all_parts()
    path = site.root / "store" / "backups" / "archives" / part["archive_id"]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out = verify(site)
    assert code == 1
    assert f"part {part['name']} of set {part['set_id']} is corrupted in directory:" in out
    assert list(drill_dir(site).iterdir()) == []


def test_a_drill_leaves_the_staging_copies_and_inflight_sets_alone(site):
    (site.data / "f").write_text("x")
    backup_ok(site)
    (site.staging / "inflight" / "20991231T000000Z").mkdir(parents=True)
    before = sorted(p.relative_to(site.staging) for p in site.staging.rglob("*") if "drill" not in p.parts)
    assert any(p.parts[0] == "complete" for p in before)
    code, out = verify(site)
    assert code == 0, out
    assert sorted(p.relative_to(site.staging) for p in site.staging.rglob("*") if "drill" not in p.parts) == before


def test_leftovers_of_a_killed_drill_are_removed_by_the_next(site):
    (site.data / "f").write_text("x")
    backup_ok(site)
    leftover = drill_dir(site) / "19990101T000000Z" / "half"
    leftover.mkdir(parents=True)
    (leftover / "restored-file").write_text("from a drill killed by kill -9")
    code, out = verify(site)
    assert code == 0, out
    assert list(drill_dir(site).iterdir()) == []


def test_sample_drill_of_cold_storage_shows_the_cost_then_restores_only_sampled_dirs(site, monkeypatch):
    dirs = []
    for name in ("one", "two", "three"):
        d = site.root / name
        d.mkdir()
        (d / "f").write_bytes(os.urandom(200 * 1024))
        dirs.append(str(d))
    site.set("backup.directories", dirs)
    backup_ok(site)
    store = ThawingStore(site.root / "store", "backups", checks_until_ready=0)
    monkeypatch.setattr(jobs, "open_store", lambda cfg: store)
    code, out = verify(site, sample=1, seed=7)
    assert code == EXIT_NOT_READY, out
    assert "retrieval about $0.00 (Bulk tier)" in out
    assert "not ready yet: 1 of 1 archives are being retrieved" in out
    code, out = verify(site, sample=1, seed=7)
    assert code == 0, out
    assert summary_value(out, "directories") == "1"
    assert summary_value(out, "retrieval_cost") == "about $0.00"
    assert len(store.requests) == 1, "only the sampled directory's part was retrieved"


def test_a_drill_that_cannot_fit_on_the_staging_disk_refuses_before_restoring(site):
    staging = site.root / "staging"
    staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(staging)], check=True)
    try:
        (site.data / "big").write_bytes(os.urandom(int(2.5 * 1024 * 1024)))
        backup_ok(site)
        code, out = verify(site)
        assert code == 1
        assert f"backup.staging_dir: the drill needs up to 5.0 MiB on {staging}, only" in out
        assert "free; try --sample N" in out
    finally:
        subprocess.run(["umount", str(staging)], check=True)


def test_the_backup_summary_says_when_a_drill_last_passed(site):
    (site.data / "f").write_text("x")
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "last_drill").startswith("never (inv verify restores")
    set_id = summary_value(out, "set")
    assert verify(site)[0] == 0
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "last_drill").endswith(f" UTC, set {set_id}")
