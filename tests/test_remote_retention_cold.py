"""Remote retention against real cold storage: S3 DEEP_ARCHIVE (180-day minimum) on moto, and a
Glacier vault (90-day minimum) through the strict double; young sets are kept unless forced."""

from __future__ import annotations

import boto3

from conftest import summary_value
from test_glacier_store import aws_env, double, moto, moto_archive_count  # noqa: F401  (fixtures)
from test_remote_retention import age_sets

from orchestrator.backup import jobs


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def bucket_sets(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"].split("/")[2] for page in pages for o in page.get("Contents", [])}


def test_deep_archive_sets_younger_than_180_days_are_kept_until_forced(site, moto):  # noqa: F811
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    client.create_bucket(Bucket="retention")
    site.set("backup.store", {"type": "s3", "bucket": "retention", "endpoint_url": moto.endpoint_url,
                              "storage_class": "DEEP_ARCHIVE", "prefix": "p/"})
    site.set("backup.full_every_days", 0)
    site.set("backup.prices", {"deep_archive": 50.0})
    (site.data / "f").write_bytes(bytes(range(256)) * 8000)
    old = backup_ok(site)
    age_sets(site, 100)
    site.set("backup.remote_retention", {"keep_sets": 1})
    code, out = site.backup()
    assert code == 0, out
    new = summary_value(out, "set")
    assert "kept 1 expired set(s) younger than the DEEP_ARCHIVE minimum storage duration" in out
    assert " GB in DEEP_ARCHIVE, about $" in summary_value(out, "cost")
    assert bucket_sets(client, "retention") == {old, new}

    code, out = site.run("prune", lambda r: jobs.prune(r))
    assert code == 0, out
    assert "kept 1 expired set(s) younger than the DEEP_ARCHIVE minimum" in out
    assert f"keeping expired set {old}: 100 days old" in out and "(80 days left)" in out
    assert f"expiring set {old}" not in out
    assert bucket_sets(client, "retention") == {old, new}

    code, out = site.run("prune", lambda r: jobs.prune(r), dry=True)
    assert code == 0 and f"would delete set {old}: 100 days old" in out and "(80 days left)" in out

    age_sets(site, 90)
    code, out = site.run("prune", lambda r: jobs.prune(r))
    assert code == 0, out
    assert f"expiring set {old}: 190 days old" in out
    assert bucket_sets(client, "retention") == {new}
    with site.catalog() as cat:
        assert [r["id"] for r in cat.sets()] == [new]


def test_vault_sets_younger_than_90_days_are_kept_then_deleted_with_force(site, double, moto):  # noqa: F811
    site.set("backup.store", {"type": "glacier", "vault": "geo-retention", "endpoint_url": double.url,
                              "max_attempts": 5})
    site.set("backup.full_every_days", 0)
    (site.data / "f").write_bytes(bytes(range(256)) * 8000)
    old = backup_ok(site)
    with site.catalog() as cat:
        old_archives = len(cat.parts(old)) + 1
    age_sets(site, 10)
    site.set("backup.remote_retention", {"keep_sets": 1})
    code, out = site.backup()
    assert code == 0, out
    assert "kept 1 expired set(s) younger than the vault minimum storage duration" in out
    before = moto_archive_count(moto, "geo-retention")

    code, out = site.run("prune", lambda r: jobs.prune(r, force=True))
    assert code == 0, out
    assert f"expiring set {old}: 10 days old" in out and "early-deletion charge about $" in out
    assert moto_archive_count(moto, "geo-retention") == before - old_archives
    with site.catalog() as cat:
        assert old not in [r["id"] for r in cat.sets()]
