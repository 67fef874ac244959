"""Incremental chains, local retention and what a restore of any member gives back."""

from __future__ import annotations

import os

from conftest import next_second, summary_value
from treecmp import fingerprint

from orchestrator.backup.layout import Layout
from orchestrator.backup.retention import local_sets_to_prune


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def test_incremental_chain_restores_each_state_including_deletions(site, tmp_path):
    (site.data / "keep").write_text("v1")
    (site.data / "doomed").write_text("will be deleted")
    full = backup_ok(site)
    state1 = fingerprint(site.data)
    next_second()
    (site.data / "keep").write_text("v2")
    (site.data / "doomed").unlink()
    (site.data / "new dir").mkdir()
    (site.data / "new dir" / "added").write_text("added")
    incr1 = backup_ok(site)
    state2 = fingerprint(site.data)
    next_second()
    (site.data / "keep").write_text("v3")
    incr2 = backup_ok(site)
    with site.catalog() as cat:
        kinds = [(r["id"], r["kind"], r["parent_id"]) for r in cat.sets()]
        (slug,) = [d["slug"] for d in cat.dirs(incr2)]
        in_incr2 = {bytes(r["path"]).rsplit(b"/", 1)[-1] for r in cat.files(incr2, slug) if r["type"] == "f"}
        in_incr1 = {bytes(r["path"]).rsplit(b"/", 1)[-1] for r in cat.files(incr1, slug) if r["type"] == "f"}
    assert kinds == [(full, "full", None), (incr1, "incremental", full), (incr2, "incremental", incr1)]
    assert in_incr1 == {b"keep", b"added"}, "an incremental holds only what changed"
    assert in_incr2 == {b"keep"}
    rel = site.data.relative_to("/")
    for set_id, expected in [(full, state1), (incr1, state2), (incr2, fingerprint(site.data))]:
        target = tmp_path / f"r-{set_id}"
        code, out = site.restore(target, set_id)
        assert code == 0, out
        assert fingerprint(target / rel) == expected, set_id
    assert not (tmp_path / f"r-{incr1}" / rel / "doomed").exists()


def test_full_every_days_zero_makes_every_set_full(site):
    site.set("backup.full_every_days", 0)
    (site.data / "f").write_text("x")
    backup_ok(site)
    backup_ok(site)
    with site.catalog() as cat:
        assert [r["kind"] for r in cat.sets()] == ["full", "full"]


def test_full_set_again_once_the_chain_is_older_than_full_every_days(site):
    (site.data / "f").write_text("x")
    first = backup_ok(site)
    with site.catalog() as cat:
        cat._write("UPDATE sets SET created = created - 8 * 86400 WHERE id = ?", (first,))
    second = backup_ok(site)
    with site.catalog() as cat:
        assert cat.get_set(second)["kind"] == "full"


def test_local_retention_keeps_n_sets_and_whole_chains(site):
    site.set("backup.keep_local_sets", 2)
    (site.data / "f").write_text("x")
    ids = [backup_ok(site) for _ in range(4)]
    local = sorted(p.name for p in (site.staging / "complete").iterdir())
    assert local == ids, "all four form one chain, so the chain keeps them all"
    site.set("backup.full_every_days", 0)
    ids += [backup_ok(site) for _ in range(3)]
    local = sorted(p.name for p in (site.staging / "complete").iterdir())
    assert local == ids[-2:], local
    with site.catalog() as cat:
        states = {r["id"]: r["local_state"] for r in cat.sets()}
        stored = {p["archive_id"] for p in cat.all_parts()}
    assert [states[i] for i in ids] == ["pruned"] * 5 + ["complete"] * 2
    assert stored <= {a.archive_id for a in site.store().list()}, "local pruning never deletes stored archives"


def test_retention_never_counts_inflight_and_keeps_newest(site):
    (site.data / "f").write_text("x")
    site.set("backup.full_every_days", 0)
    first = backup_ok(site)
    with site.catalog() as cat:
        cat.new_set(set_id="29990101T000000Z", host="testhost", kind="full", parent_id=None, chain_id="29990101T000000Z",
                    store="x", codec="xz", encrypted=False, directories=[("d", "/d")])
        assert local_sets_to_prune(cat, "testhost", 0) == [], "keep=0 still keeps the newest complete set"
        assert first not in local_sets_to_prune(cat, "testhost", 1)


def test_restore_prefers_an_intact_local_copy_and_falls_back_to_the_store(site, tmp_path):
    (site.data / "f").write_bytes(os.urandom(300000))
    set_id = backup_ok(site)
    (local_part,) = (site.staging / "complete" / set_id).iterdir()
    local_part.write_bytes(b"garbage")
    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    assert (tmp_path / "r" / site.data.relative_to("/") / "f").read_bytes() == (site.data / "f").read_bytes()


def test_corrupted_stored_part_is_named_and_nothing_is_restored(site, tmp_path):
    (site.data / "f").write_bytes(os.urandom(300000))
    set_id = backup_ok(site)
    for part in (site.staging / "complete" / set_id).iterdir():
        part.unlink()
    (archive,) = [a for a in site.store().list() if '"t":"part"' in a.description]
    path = site.root / "store" / "backups" / "archives" / archive.archive_id
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target = tmp_path / "r"
    code, out = site.restore(target)
    assert code == 1
    assert f".tar.000000.xz of set {set_id} is corrupted" in out
    assert not target.exists()
    assert not list(tmp_path.glob(".r.restore-*")), "the partial tree is removed"


def test_restore_refuses_a_non_empty_target(site, tmp_path):
    (site.data / "f").write_text("x")
    backup_ok(site)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "precious").write_text("keep me")
    code, out = site.restore(target)
    assert code == 1 and "is not empty" in out
    assert (target / "precious").read_text() == "keep me"


def test_layout_paths_match_the_seed(site):
    layout = Layout(site.root / "staging", site.root / "state", "h")
    assert layout.inflight == site.root / "staging" / "h" / "inflight"
    assert layout.complete == site.root / "staging" / "h" / "complete"


def test_lost_catalog_is_rebuilt_from_the_store_and_the_chain_restores(site, tmp_path):
    from orchestrator.backup import jobs

    (site.data / "a").write_text("one")
    backup_ok(site)
    next_second()
    (site.data / "a").write_text("two")
    (site.data / "b").write_text("new")
    newest = backup_ok(site)
    expected = fingerprint(site.data)
    with site.catalog() as cat:
        before = [dict(r) for r in cat.sets()]
        parts_before = [dict(p) for p in cat.all_parts()]
    (site.root / "state" / "catalog.sqlite").unlink()
    import shutil
    shutil.rmtree(site.staging)  # a fresh machine: no staging copies either
    code, out = site.run("catalog-rebuild", jobs.rebuild)
    assert code == 0, out
    assert "recovered_sets: 2" in out
    with site.catalog() as cat:
        after = [dict(r) for r in cat.sets()]
        assert [dict(p) for p in cat.all_parts()] == parts_before
    keys = ["id", "host", "kind", "parent_id", "chain_id", "status", "codec", "encrypted", "manifest_id"]
    assert [{k: r[k] for k in keys} for r in after] == [{k: r[k] for k in keys} for r in before]
    assert site.run("catalog-rebuild", jobs.rebuild)[1].count("recovered_sets: 0") == 1, "idempotent"
    code, out = site.restore(tmp_path / "r", newest)
    assert code == 0, out
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == expected
