"""kill -9 a real backup mid-upload to S3 (moto), rerun: only what is missing is sent, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import summary_value
from test_backup_faults import CHILD, ROOT
from test_s3_store import BUCKET, aws_env, moto, proxy, s3  # noqa: F401  (fixtures)
from treecmp import fingerprint


def objects(client) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_kill_9_mid_upload_then_rerun_sends_only_missing_objects(moto, s3, proxy, site, tmp_path):  # noqa: F811
    small = tmp_path / "small"
    small.mkdir()
    (small / "s.txt").write_text("quick\n")
    (site.data / "random.bin").write_bytes(os.urandom(14 * 1024 * 1024))
    site.set("backup.directories", [str(small), str(site.data)])
    site.set("backup.compression", {"codec": "xz", "level": 9, "extreme": True, "workers": 2})
    site.set("backup.store", {"type": "s3", "bucket": BUCKET, "endpoint_url": proxy.endpoint_url,
                              "storage_class": "STANDARD", "prefix": "fleet/"})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(site.config))
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(cfg)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 120
    while len(objects(s3)) < 3:
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"backup ended or stalled before the kill: {child.stdout.read().decode()}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = objects(s3)

    sent: list[str] = []
    proxy.rewrite("PUT", 10**6, {}, when=lambda path, headers: sent.append(path.split("?")[0]) or True)
    site.set("backup.compression", {"codec": "xz", "level": 9, "extreme": True, "workers": 2})
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "full (resumed)"

    with site.catalog() as cat:
        (row,) = cat.sets(status="complete")
        (small_slug,) = [d["slug"] for d in cat.dirs(row["id"]) if d["path"] == str(small)]
        kept = {p["archive_id"] for p in cat.parts(row["id"], small_slug)}
        expected = {p["archive_id"] for p in cat.all_parts()} | {row["manifest_id"], cat.meta("catalog_copy_archive")}
    resent = {key for key in before if f"/{BUCKET}/{key}" in sent}
    assert kept <= set(before), "the small directory was stored before the kill"
    assert not (resent & kept), f"objects of a finished directory were sent again: {resent & kept}"
    assert set(objects(s3)) == expected, "the bucket holds exactly the catalogued set: no strays, no duplicates"

    target = tmp_path / "restored"
    code, out = site.restore(target)
    assert code == 0, out
    assert fingerprint(target / site.data.relative_to("/")) == fingerprint(site.data)
    assert fingerprint(target / small.relative_to("/")) == fingerprint(small)
