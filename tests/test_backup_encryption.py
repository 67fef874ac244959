"""With recipients set, the store holds no path, no plaintext size and no plaintext hash."""

from __future__ import annotations

import json
import shutil
import subprocess

from conftest import summary_value
from test_backup_roundtrip import gpg_home  # noqa: F401  (fixture)
from treecmp import fingerprint

from orchestrator.backup import jobs
from orchestrator.backup.metadata import parse_description


def test_store_reveals_no_paths_sizes_or_plain_hashes_and_a_keyholder_rebuilds(site, tmp_path, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    secret_dir = site.data / "payroll-2026"
    secret_dir.mkdir()
    (secret_dir / "salaries.csv").write_text("alice,100\n" * 20000)
    code, out = site.backup()
    assert code == 0, out
    set_id = summary_value(out, "set")
    with site.catalog() as cat:
        plain_hashes = {p["plain_sha256"] for p in cat.all_parts()}
        file_hashes = {r["sha256"] for d in cat.dirs(set_id) for r in cat.files(set_id, d["slug"]) if r["sha256"]}
    archives = site.root / "store" / "backups" / "archives"
    everything = b"".join(p.read_bytes() for p in archives.iterdir())
    for needle in [b"payroll", b"salaries", str(site.data).encode(), *(h.encode() for h in plain_hashes | file_hashes)]:
        assert needle not in everything, f"the store shows {needle[:40]!r}"
    for archive in site.store().list():
        fields = parse_description(archive.description)
        assert "ps" not in fields and fields.get("d", "d0").startswith("d")

    shutil.rmtree(site.root / "state")
    shutil.rmtree(site.root / "staging")
    code, out = site.run("catalog-rebuild", lambda run: jobs.rebuild(run))
    assert code == 0, out
    assert f"recovered set {set_id}" in out
    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == fingerprint(site.data)


def test_rebuild_without_the_secret_key_says_what_gpg_says(site, tmp_path, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    public_only = tmp_path / "public-only"
    public_only.mkdir(mode=0o700)
    exported = subprocess.run(["gpg", "--homedir", str(gpg_home), "--export", "backup@test.invalid"],
                              capture_output=True, check=True).stdout
    subprocess.run(["gpg", "--homedir", str(public_only), "--batch", "--import"], input=exported,
                   capture_output=True, check=True)
    site.set("backup.encryption.gpg_home", str(public_only))
    shutil.rmtree(site.root / "state")
    code, out = site.run("catalog-rebuild", lambda run: jobs.rebuild(run))
    subprocess.run(["gpgconf", "--homedir", str(public_only), "--kill", "all"], capture_output=True)
    assert code == 1
    assert "decrypting" in out and "failed: gpg: decryption failed: No secret key" in out


def test_restore_with_a_wrong_key_reports_gpg_not_xz(site, tmp_path, gpg_home):  # noqa: F811
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    empty = tmp_path / "empty-keyring"
    empty.mkdir(mode=0o700)
    site.set("backup.encryption.gpg_home", str(empty))
    code, out = site.restore(tmp_path / "r")
    assert code == 1
    assert "gpg failed on" in out and "decryption failed: No secret key" in out
    assert "File format not recognized" not in out


def test_unencrypted_manifest_is_xz_json_readable_by_hand(site):
    (site.data / "f").write_text("x")
    set_id = summary_value(site.backup()[1], "set")
    with site.catalog() as cat:
        manifest_id = cat.get_set(set_id)["manifest_id"]
    blob = site.root / "store" / "backups" / "archives" / manifest_id
    doc = json.loads(subprocess.run(["xz", "-dc", str(blob)], capture_output=True, check=True).stdout)
    assert doc["set"]["id"] == set_id and doc["version"] == 2
    assert [f[0] for f in next(iter(doc["files"].values()))][-1].endswith("/data/f")
