"""Remote retention by count and age, the minimum-storage-duration guard, cost, and the catalog copy."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest

from conftest import summary_value
from test_backup_roundtrip import gpg_home  # noqa: F401  (fixture)

from orchestrator.backup import jobs
from orchestrator.backup.stores import DirectoryStore

DAY = 86400


class VaultPricedStore(DirectoryStore):
    """A real directory store billed like a Glacier vault (90-day minimum)."""

    storage_key = "vault"


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def age_sets(site, days: float) -> None:
    with site.catalog() as cat:
        cat._write("UPDATE sets SET created = created - ?", (days * DAY,))


def stored_sets(site) -> set[str]:
    from orchestrator.backup.metadata import parse_description

    return {parse_description(a.description)["s"] for a in site.store().list()
            if parse_description(a.description)["t"] != "catalog"}


def test_keep_sets_deletes_older_sets_from_the_store_and_keeps_chains(site):
    (site.data / "f").write_text("x")
    site.set("backup.remote_retention", {"keep_sets": 2})
    chain = [backup_ok(site) for _ in range(3)]
    assert stored_sets(site) == set(chain), "one chain: an incremental keeps its full set"
    site.set("backup.full_every_days", 0)
    fulls = [backup_ok(site) for _ in range(3)]
    assert stored_sets(site) == set(fulls[-2:])
    with site.catalog() as cat:
        assert [r["id"] for r in cat.sets()] == fulls[-2:]
    assert not any((site.staging / "complete" / s).exists() for s in chain)


def test_max_age_expires_old_sets_but_never_the_newest(site):
    (site.data / "f").write_text("x")
    site.set("backup.full_every_days", 0)
    first = backup_ok(site)
    age_sets(site, 40)
    site.set("backup.remote_retention", {"max_age_days": 30})
    second = backup_ok(site)
    assert stored_sets(site) == {second}
    age_sets(site, 400)
    code, out = site.run("prune", lambda r: jobs.prune(r))
    assert code == 0, out
    assert stored_sets(site) == {second}, "the newest complete set survives any age limit"
    assert first not in out


def test_young_sets_in_cold_storage_are_kept_with_the_charge_shown(site, monkeypatch):
    store = VaultPricedStore(site.root / "store", "backups")
    monkeypatch.setattr(jobs, "open_store", lambda cfg: store)
    (site.data / "big").write_bytes(bytes(range(256)) * 40000)
    site.set("backup.full_every_days", 0)
    site.set("backup.prices", {"vault": 100.0})
    old = backup_ok(site)
    age_sets(site, 30)
    site.set("backup.remote_retention", {"keep_sets": 1})
    code, out = site.backup()
    assert code == 0, out
    assert "kept 1 expired set(s) younger than the vault minimum storage duration" in out
    assert old in stored_sets(site)

    code, out = site.run("prune", lambda r: jobs.prune(r), dry=True)
    assert code == 0 and f"would delete set {old}: 30 days old" in out and "early-deletion charge about $" in out
    assert "60 days left" in out
    assert old in stored_sets(site), "--dry deletes nothing"

    code, out = site.run("prune", lambda r: jobs.prune(r))
    assert code == 0, out
    assert f"keeping expired set {old}: 30 days old" in out and "(60 days left)" in out
    assert "warning: kept 1 expired set(s) younger than the vault minimum storage duration" in out
    assert summary_value(out, "sets_expired") == "0"
    assert old in stored_sets(site)
    code, out = site.run("prune", lambda r: jobs.prune(r, force=True))
    assert code == 0, out
    assert old not in stored_sets(site)


def test_refusal_without_force_names_the_sets_and_cost(site, monkeypatch):
    from orchestrator.backup.layout import Layout
    from orchestrator.backup.retention import expire_remote, expiry
    from orchestrator.config import PriceConfig
    from orchestrator.errors import OrchestratorError

    (site.data / "f").write_text("x")
    first = backup_ok(site)
    store = VaultPricedStore(site.root / "store", "backups")
    with site.catalog() as cat:
        plan = expiry(cat, first, "vault", PriceConfig(), __import__("time").time())
        with pytest.raises(OrchestratorError, match=rf"refusing to delete 1 set\(s\) younger than the vault .*{first}"):
            expire_remote(cat, store, Layout(site.root / "staging", site.root / "state", "testhost"), [plan], force=False)
    assert first in stored_sets(site)


def test_no_cost_line_for_a_directory_store(site):
    (site.data / "f").write_bytes(b"\0" * 100)
    code, out = site.backup()
    assert code == 0
    assert "cost:" not in out


def test_catalog_copy_is_stored_encrypted_and_replaces_the_previous_one(site, tmp_path, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    (site.data / "f").write_text("x")
    backup_ok(site)
    newest = backup_ok(site)
    copies = [a for a in site.store().list() if '"t":"catalog"' in a.description]
    assert len(copies) == 1 and newest in copies[0].description
    blob = tmp_path / "catalog.gpg"
    site.store().get(copies[0].archive_id, blob)
    assert not blob.read_bytes().startswith(b"SQLite format 3")
    plain = tmp_path / "catalog.sqlite"
    subprocess.run(["gpg", "--homedir", str(gpg_home), "--batch", "--quiet", "--decrypt", "--output", str(plain),
                    str(blob)], check=True)
    with sqlite3.connect(plain) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sets WHERE status = 'complete'").fetchone()[0] >= 1
