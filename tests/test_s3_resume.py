"""kill -9 a real backup mid-upload to S3 (moto), rerun: only what is missing is sent, nothing twice."""

from __future__ import annotations

import os

import pytest

from backupcheck import backup_killed_at, rebuild_gives_the_same_sets
from conftest import summary_value
from test_s3_store import BUCKET, aws_env, moto, proxy, s3  # noqa: F401  (fixtures)
from treecmp import fingerprint


def objects(client) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def s3_site(site, tmp_path, proxy):
    small = tmp_path / "small"
    small.mkdir()
    (small / "s.txt").write_text("quick\n")
    (site.data / "random.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    site.set("backup.directories", [str(small), str(site.data)])
    site.set("backup.store", {"type": "s3", "bucket": BUCKET, "endpoint_url": proxy.endpoint_url,
                              "storage_class": "STANDARD", "prefix": "fleet/"})
    return small


def bucket_matches_catalog(site, s3) -> None:  # noqa: F811
    with site.catalog() as cat:
        (row,) = cat.sets(status="complete")
        expected = {p["archive_id"] for p in cat.all_parts()} | {row["manifest_id"], cat.meta("catalog_copy_archive")}
    assert set(objects(s3)) == expected, "the bucket holds exactly the catalogued set: no strays, no duplicates"


def test_kill_9_mid_upload_then_rerun_sends_only_missing_objects(moto, s3, proxy, site, tmp_path):  # noqa: F811
    small = s3_site(site, tmp_path, proxy)
    backup_killed_at(site, "part-stored@3")
    before = objects(s3)
    assert len(before) == 3

    sent: list[str] = []
    proxy.rewrite("PUT", 10**6, {}, when=lambda path, headers: sent.append(path.split("?")[0]) or True)
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "full (resumed)"

    with site.catalog() as cat:
        (row,) = cat.sets(status="complete")
        (small_slug,) = [d["slug"] for d in cat.dirs(row["id"]) if d["path"] == str(small)]
        kept = {p["archive_id"] for p in cat.parts(row["id"], small_slug)}
    resent = {key for key in before if f"/{BUCKET}/{key}" in sent}
    assert kept <= set(before), "the small directory was stored before the kill"
    assert not (resent & kept), f"objects of a finished directory were sent again: {resent & kept}"
    bucket_matches_catalog(site, s3)

    target = tmp_path / "restored"
    code, out = site.restore(target)
    assert code == 0, out
    assert fingerprint(target / site.data.relative_to("/")) == fingerprint(site.data)
    assert fingerprint(target / small.relative_to("/")) == fingerprint(small)


@pytest.mark.parametrize("point", ["manifest-stored", "set-committed", "catalog-copy-stored"])
def test_kill_9_in_the_commit_window_then_rerun_stores_no_second_manifest(moto, s3, proxy, site, tmp_path,  # noqa: F811
                                                                          point):
    s3_site(site, tmp_path, proxy)
    backup_killed_at(site, point)
    code, out = site.backup()
    assert code == 0, out
    with site.catalog() as cat:
        kinds = [r["kind"] for r in cat.sets(status="complete")]
    assert kinds == (["full"] if point == "manifest-stored" else ["full", "incremental"])
    with site.catalog() as cat:
        expected = {p["archive_id"] for p in cat.all_parts()} | {r["manifest_id"] for r in cat.sets(status="complete")}
        expected.add(cat.meta("catalog_copy_archive"))
    assert set(objects(s3)) == expected
    rebuild_gives_the_same_sets(site, tmp_path)
