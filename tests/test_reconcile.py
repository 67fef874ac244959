"""inv catalog.reconcile: the store's inventory against the catalog, on a real directory store."""

from __future__ import annotations

import json

from conftest import summary_value

from orchestrator.backup import jobs


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def reconcile(site):
    return site.run("catalog-reconcile", jobs.reconcile_store)


def test_a_healthy_store_reconciles_cleanly(site):
    (site.data / "f").write_text("x")
    backup_ok(site)
    backup_ok(site)
    code, out = reconcile(site)
    assert code == 0, out
    assert summary_value(out, "missing") == "0" and summary_value(out, "mismatched") == "0"
    assert int(summary_value(out, "matched")) >= 5  # 2 parts, 2 manifests, the catalog copy


def test_missing_altered_and_unknown_archives_are_named(site):
    (site.data / "f").write_bytes(__import__("os").urandom(1536 * 1024))
    set_id = backup_ok(site)
    store = site.store()
    with site.catalog() as cat:
        part, altered = cat.parts(set_id)
    archives = site.root / "store" / "backups" / "archives"
    (archives / part["archive_id"]).unlink()
    (archives / f"{part['archive_id']}.json").unlink()
    sidecar = archives / f"{altered['archive_id']}.json"
    meta = json.loads(sidecar.read_text())
    meta["size"] += 1
    sidecar.write_text(json.dumps(meta))
    stray = site.root / "stray"
    stray.write_bytes(b"orphan")
    from orchestrator.backup.metadata import part_description
    from orchestrator.backup.treehash import file_digests

    sha, tree, _ = file_digests(stray)
    store.put(stray, description=part_description(host="testhost", set_id="19990101T000000Z", slug="x", idx=0,
                                                  sha256=sha, plain_size=6), sha256=sha, tree_hash=tree)
    store.put(stray, description="someone else's archive", sha256=sha, tree_hash=tree)
    code, out = reconcile(site)
    assert code == 1
    assert f"missing from the store: set {set_id} part {part['name']}" in out
    assert f"size or tree hash differs: set {set_id} part {altered['name']}" in out
    assert "not in the catalog: part of set 19990101T000000Z" in out
    assert summary_value(out, "foreign") == "1"
    assert "lost 1 and altered 1 archive(s)" in out
