"""``inv catalog.rebuild``: idempotent, tolerant of extra manifests, never adopting what cannot restore."""

from __future__ import annotations

import shutil

from conftest import next_second, summary_value

from orchestrator.backup import jobs
from orchestrator.backup.metadata import manifest_description


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def rebuild(site) -> tuple[int, str]:
    return site.run("catalog-rebuild", lambda run: jobs.rebuild(run))


def chain(site) -> tuple[str, str]:
    (site.data / "a").write_text("first\n")
    full = backup_ok(site)
    next_second()
    (site.data / "b").write_text("second\n")
    return full, backup_ok(site)


def lose_state(site) -> None:
    shutil.rmtree(site.root / "state")
    shutil.rmtree(site.root / "staging")


def test_rebuild_twice_adds_each_set_once(site):
    full, incr = chain(site)
    lose_state(site)
    code, out = rebuild(site)
    assert code == 0, out
    assert f"recovered set {full}" in out and f"recovered set {incr}" in out
    code, out = rebuild(site)
    assert code == 0, out
    assert summary_value(out, "recovered_sets") == "0" and "recovered set" not in out
    with site.catalog() as cat:
        assert [(r["id"], r["status"]) for r in cat.sets()] == [(full, "complete"), (incr, "complete")]


def test_several_manifests_for_one_set_give_one_set_and_a_warning(site, tmp_path):
    """An older version stored one manifest per interrupted commit attempt."""
    full, _ = chain(site)
    store = site.store()
    with site.catalog() as cat:
        manifest_id = cat.get_set(full)["manifest_id"]
    data = store.get_bytes(manifest_id)
    for _ in range(2):
        store.put_bytes(data, description=manifest_description(host="testhost", set_id=full))
    lose_state(site)
    code, out = rebuild(site)
    assert code == 0, out
    assert f"warning: set {full}: 3 manifests in the store, the newest readable one is used" in out
    with site.catalog() as cat:
        assert [r["id"] for r in cat.sets()].count(full) == 1


def test_a_set_whose_parts_are_gone_is_not_adopted_nor_its_children(site, tmp_path):
    full, incr = chain(site)
    with site.catalog() as cat:
        (part,) = cat.parts(full)
    site.store().delete(part["archive_id"])
    lose_state(site)
    code, out = rebuild(site)
    assert code == 0, out
    assert f"warning: set {full}: 1 of its 1 parts are not in the store (e.g. {part['name']})" in out
    assert f"warning: set {incr}: its parent set {full} is not in the store, so it cannot be restored" in out
    with site.catalog() as cat:
        assert cat.sets() == []


def test_an_unreadable_manifest_is_named_and_the_others_are_adopted(site):
    site.set("backup.full_every_days", 0)
    (site.data / "a").write_text("x")
    first = backup_ok(site)
    second = backup_ok(site)
    with site.catalog() as cat:
        damaged = cat.get_set(first)["manifest_id"]
    (site.root / "store" / "backups" / "archives" / damaged).write_bytes(b"\xfd7zXZ\x00 not really xz")
    lose_state(site)
    code, out = rebuild(site)
    assert code == 0, out
    assert f"of set {first} is not a valid xz stream" in out
    assert f"recovered set {second}" in out
