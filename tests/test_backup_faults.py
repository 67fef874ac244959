"""Crashes, kill -9, a full staging disk, a locked or newer catalog: nothing complete is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupcheck import backup_child, backup_killed_at, processes_tagged, store_matches_catalog
from conftest import summary_value
from treecmp import fingerprint

from orchestrator.lock import held_lock

ROOT = Path(__file__).resolve().parent.parent

def two_directories(site) -> tuple[Path, Path]:
    """A small directory (one part) and a bigger one (several 1M parts), backed up in that order."""
    small = site.root / "small"
    small.mkdir()
    (small / "s.txt").write_text("small and quick\n")
    (site.data / "random.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    site.set("backup.directories", [str(small), str(site.data)])
    return small, site.data


def test_kill_9_mid_backup_then_resume_stores_nothing_twice(site, tmp_path):
    small, big = two_directories(site)
    backup_killed_at(site, "part-stored@3")
    with site.catalog() as cat:
        (inflight,) = cat.sets(status="inflight")
        (slug,) = [d["slug"] for d in cat.dirs(inflight["id"]) if d["path"] == str(small)]
        small_parts = {p["archive_id"] for p in cat.parts(inflight["id"], slug) if p["archive_id"]}
        stored_before = {p["archive_id"] for p in cat.parts(inflight["id"]) if p["status"] == "stored"}
    assert len(small_parts) == 1, "the small directory was done and stored before the kill"
    assert len(stored_before) == 3
    assert not list((site.staging / "complete").iterdir())

    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "set") == inflight["id"]
    assert summary_value(out, "kind") == "full (resumed)"
    with site.catalog() as cat:
        assert {p["archive_id"] for p in cat.parts(inflight["id"], slug)} == small_parts, "done dir not redone"
    store_matches_catalog(site)
    assert site.restore(tmp_path / "r")[0] == 0
    assert fingerprint(tmp_path / "r" / big.relative_to("/")) == fingerprint(big)
    assert fingerprint(tmp_path / "r" / small.relative_to("/")) == fingerprint(small)


def test_kill_9_then_discard_removes_every_trace_of_the_unfinished_set(site):
    two_directories(site)
    backup_killed_at(site, "manifest-stored")
    site.set("backup.on_inflight", "discard")
    code, out = site.backup()
    assert code == 0, out
    with site.catalog() as cat:
        assert [r["status"] for r in cat.sets()] == ["discarded", "complete"]
    store_matches_catalog(site)
    assert [p.name for p in (site.staging / "inflight").iterdir()] == []
    assert len(list((site.root / "state" / "snapshots" / "testhost").iterdir())) == 1


def test_sigterm_stops_the_backup_cleanly_and_it_resumes(site, tmp_path):
    """SIGTERM (a Jenkins abort) once the first part is stored: exit 130, no codec left, the rerun resumes."""
    two_directories(site)
    site.set("backup.compression", {"codec": "xz", "level": 9, "extreme": True, "workers": 2})
    tag = f"sigterm-{os.getpid()}-{time.monotonic_ns()}"
    proc = backup_child(site, tag)
    try:
        wait_for_stored_part(site, proc)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    assert "stopped by SIGTERM" in out
    assert processes_tagged(tag) == [], "no codec process outlives the run"
    site.set("backup.compression", {"codec": "xz", "level": 1, "extreme": False, "workers": 2})
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "full (resumed)"
    store_matches_catalog(site)
    assert site.restore(tmp_path / "r")[0] == 0
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == fingerprint(site.data)


def stored_parts(db) -> int:
    """Parts the catalog says are stored; 0 while the file exists but its schema is not made yet."""
    with sqlite3.connect(db, timeout=5) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM parts WHERE status = 'stored'").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise


def wait_for_stored_part(site, proc, deadline_s: float = 120) -> None:
    """The event: the catalog says a part is stored. The deadline only turns a hang into a failure."""
    db = site.root / "state" / "catalog.sqlite"
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"backup ended before it could be signalled: {proc.stdout.read().decode()}")
        if db.exists() and stored_parts(db):
            return
        time.sleep(0.05)
    pytest.fail(f"no part was stored within {deadline_s:.0f} s")


def test_second_backup_refuses_while_one_runs(site):
    (site.data / "f").write_text("x")
    with held_lock(site.root / "state" / "locks" / "backup.lock", "inv backup"):
        code, out = site.backup()
    assert code == 3
    assert f"inv backup is already running (pid {os.getpid()}" in out


def test_full_staging_disk_is_a_clear_error_and_complete_sets_survive(site, tmp_path):
    staging = site.root / "staging"
    staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(staging)], check=True)
    try:
        (site.data / "small").write_text("fits")
        code, out = site.backup()
        assert code == 0, out
        first = summary_value(out, "set")
        (site.data / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
        code, out = site.backup()
        assert code == 1
        assert "staging disk full: no space left" in out
        assert (site.staging / "complete" / first).is_dir()
        (site.data / "big.bin").unlink()
        code, out = site.restore(tmp_path / "r", first)
        assert code == 0, out
        assert (tmp_path / "r" / site.data.relative_to("/") / "small").read_text() == "fits"
    finally:
        subprocess.run(["umount", str(staging)], check=True)


def test_locked_catalog_is_a_clear_error(site):
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    site.set("orchestrator.catalog_timeout", 1)
    holder = sqlite3.connect(site.root / "state" / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, out = site.backup()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1 and "is locked by another process" in out


def test_catalog_from_a_newer_schema_is_refused_and_untouched(site):
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    db = site.root / "state" / "catalog.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = db.read_bytes()
    code, out = site.backup()
    assert code == 1 and "schema v99, newer than this tool's v3" in out
    assert db.read_bytes() == before


def test_catalog_v1_is_migrated_in_place_and_keeps_its_sets(site, tmp_path):
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    db = site.root / "state" / "catalog.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE parts DROP COLUMN leaves")
        conn.execute("ALTER TABLE parts DROP COLUMN upload_id")
        conn.execute("DROP TABLE retrievals")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(parts)")}
    assert {"leaves", "upload_id"} <= columns


def interruptible() -> None:
    """As on a terminal: a pytest started in the background by a shell inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_to_a_real_inv_process_group_cleans_up_and_the_rerun_resumes(site, tmp_path):
    """A terminal's Ctrl-C: SIGINT to the whole foreground process group of a real ``inv backup``."""
    import yaml

    two_directories(site)
    site.set("backup.compression", {"codec": "xz", "level": 9, "extreme": True, "workers": 2})
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site.config))
    tag = f"sigint-{os.getpid()}-{time.monotonic_ns()}"
    inv = Path(sys.executable).with_name("inv")
    proc = subprocess.Popen([str(inv), "-f", str(site_file), "backup"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=interruptible,
                            env={**os.environ, "GEO_TEST_TAG": tag})
    try:
        wait_for_stored_part(site, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted (Ctrl-C); cleaned up" in out
    assert processes_tagged(tag) == []
    with site.catalog() as cat:
        (row,) = cat.sets()
        assert row["status"] == "inflight" and row["error"]
    site.set("backup.compression", {"codec": "xz", "level": 1, "extreme": False, "workers": 2})
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "full (resumed)"
    store_matches_catalog(site)
