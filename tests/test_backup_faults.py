"""Crashes, kill -9, a full staging disk, a locked or newer catalog: nothing complete is lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import summary_value
from treecmp import fingerprint

from orchestrator.lock import held_lock

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from orchestrator.job import execute
from orchestrator.backup import jobs
config = json.load(open(sys.argv[1]))
config["run"] = {{"dry": False}}
sys.exit(execute(config, "backup", jobs.backup))
"""


def start_backup_process(site, tag: str = "") -> subprocess.Popen:
    cfg = site.root / "config.json"
    cfg.write_text(json.dumps(site.config))
    return subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "GEO_TEST_TAG": tag})


def processes_tagged(tag: str) -> list[int]:
    """Live processes that inherited our tag: a child's codecs, even after reparenting."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"GEO_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def slow_big_tree(site) -> tuple[Path, Path]:
    small = site.root / "small"
    small.mkdir()
    (small / "s.txt").write_text("small and quick\n")
    (site.data / "random.bin").write_bytes(os.urandom(14 * 1024 * 1024))
    site.set("backup.directories", [str(small), str(site.data)])
    site.set("backup.compression", {"codec": "xz", "level": 9, "extreme": True, "workers": 2})
    return small, site.data


def kill_when_stored(site, proc, at_least: int) -> None:
    archives = site.root / "store" / "backups" / "archives"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if archives.is_dir() and len(list(archives.glob("*.json"))) >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"backup ended before it could be killed: {proc.stdout.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("backup never stored enough parts")


def store_matches_catalog(site) -> None:
    """Every catalogued part is stored exactly once and nothing else is in the store."""
    with site.catalog() as cat:
        parts = [p for p in cat.all_parts() if cat.get_set(p["set_id"])["status"] == "complete"]
        manifests = {r["manifest_id"] for r in cat.sets(status="complete")}
        catalog_copy = cat.meta("catalog_copy_archive")
    stored = [a.archive_id for a in site.store().list()]
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted([p["archive_id"] for p in parts] + list(manifests) + [catalog_copy])


def test_kill_9_mid_backup_then_resume_stores_nothing_twice(site, tmp_path):
    small, big = slow_big_tree(site)
    proc = start_backup_process(site)
    kill_when_stored(site, proc, at_least=3)
    with site.catalog() as cat:
        (inflight,) = cat.sets(status="inflight")
        (slug,) = [d["slug"] for d in cat.dirs(inflight["id"]) if d["path"] == str(small)]
        small_parts = {p["archive_id"] for p in cat.parts(inflight["id"], slug) if p["archive_id"]}
    assert small_parts, "the small directory was done and stored before the kill"
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
    slow_big_tree(site)
    proc = start_backup_process(site)
    kill_when_stored(site, proc, at_least=2)
    site.set("backup.on_inflight", "discard")
    site.set("backup.compression", {"codec": "xz", "level": 1, "extreme": False, "workers": 2})
    code, out = site.backup()
    assert code == 0, out
    with site.catalog() as cat:
        assert [r["status"] for r in cat.sets()] == ["discarded", "complete"]
    store_matches_catalog(site)
    assert [p.name for p in (site.staging / "inflight").iterdir()] == []


def test_sigterm_stops_the_backup_cleanly_and_it_resumes(site, tmp_path):
    slow_big_tree(site)
    tag = f"sigterm-{os.getpid()}-{time.monotonic_ns()}"
    proc = start_backup_process(site, tag)
    archives = site.root / "store" / "backups" / "archives"
    while not (archives.is_dir() and list(archives.glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    assert "stopped by SIGTERM" in out
    assert processes_tagged(tag) == [], "no codec process outlives the run"
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "full (resumed)"
    store_matches_catalog(site)
    assert site.restore(tmp_path / "r")[0] == 0
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == fingerprint(site.data)


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
