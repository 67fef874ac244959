"""inv backup / inv restore end to end on the directory store, with real tar, xz, zstd and gpg."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import summary_value
from treecmp import allocated_bytes, fingerprint, make_awkward_tree


def test_awkward_tree_round_trips_byte_identical(site, tmp_path):
    make_awkward_tree(site.data)
    code, out = site.backup()
    assert code == 0, out
    assert int(summary_value(out, "parts")) > 3, "a 3 MiB random file must span several 1 MiB chunks"
    target = tmp_path / "restored"
    code, out = site.restore(target)
    assert code == 0, out
    restored = target / site.data.relative_to("/")
    assert fingerprint(restored) == fingerprint(site.data)
    assert allocated_bytes(restored / "sparse.img") < 1024 * 1024, "holes must stay holes"


def test_parts_are_plain_xz_named_like_the_seed_and_set_moves_to_complete(site):
    (site.data / "f").write_text("x" * 100000)
    code, out = site.backup()
    assert code == 0, out
    set_id = summary_value(out, "set")
    complete = site.staging / "complete" / set_id
    assert complete.is_dir() and not (site.staging / "inflight" / set_id).exists()
    parts = sorted(complete.iterdir())
    assert [p.name for p in parts] == [f"{site.data.relative_to('/').as_posix().replace('/', '_')}.tar.000000.xz"]
    listing = subprocess.run(["sh", "-c", f"xz -dc '{parts[0]}' | tar -t"], capture_output=True, text=True, check=True)
    assert f"{site.data.relative_to('/')}/f" in listing.stdout.splitlines()


def test_zstd_codec_round_trips(site, tmp_path):
    site.set("backup.compression", {"codec": "zstd", "level": 3, "workers": 2})
    make_awkward_tree(site.data, big_size=1500 * 1024)
    code, out = site.backup()
    assert code == 0, out
    assert all(p.name.endswith(".zst") for p in (site.staging / "complete").rglob("*.tar.*"))
    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == fingerprint(site.data)


@pytest.fixture
def gpg_home(tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    batch = "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: Backup Test\nName-Email: backup@test.invalid\nExpire-Date: 0\n%commit\n"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--gen-key"], input=batch.encode(), check=True, capture_output=True)
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def test_gpg_encrypted_parts_round_trip_and_are_not_plain_xz(site, tmp_path, gpg_home):
    site.set("backup.encryption", {"recipients": ["backup@test.invalid"], "gpg_home": str(gpg_home)})
    make_awkward_tree(site.data, big_size=1500 * 1024)
    code, out = site.backup()
    assert code == 0, out
    parts = list((site.staging / "complete").rglob("*.xz.gpg"))
    assert parts and all(not p.read_bytes().startswith(b"\xfd7zXZ") for p in parts)
    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == fingerprint(site.data)


def test_missing_gpg_key_is_a_one_line_error_before_any_work(site, gpg_home):
    site.set("backup.encryption", {"recipients": ["nobody@nowhere.invalid"], "gpg_home": str(gpg_home)})
    (site.data / "f").write_text("x")
    code, out = site.backup()
    assert code == 2
    assert "backup.encryption.recipients[0]: cannot encrypt to 'nobody@nowhere.invalid'" in out
    assert not (site.root / "store").exists()


def test_restore_some_directories_only(site, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("other")
    (site.data / "d.txt").write_text("data")
    site.set("backup.directories", [str(site.data), str(other)])
    assert site.backup()[0] == 0
    code, out = site.restore(tmp_path / "r", dirs=[str(other)])
    assert code == 0, out
    assert (tmp_path / "r" / other.relative_to("/") / "o.txt").read_text() == "other"
    assert not (tmp_path / "r" / site.data.relative_to("/")).exists()
    code, out = site.restore(tmp_path / "r2", dirs=["/not/backed/up"])
    assert code == 1 and "has no directory /not/backed/up" in out


def test_run_report_is_json_and_exit_code_zero_only_on_success(site):
    (site.data / "f").write_text("x")
    code, out = site.backup()
    report = json.loads(Path(summary_value(out, "report")).read_text())
    assert code == 0 and report["status"] == "ok" and report["exit_code"] == 0
    assert report["summary"]["set"] == summary_value(out, "set")
    latest = site.root / "state" / "reports" / "backup-latest.json"
    assert json.loads(latest.read_text())["summary"]["set"] == report["summary"]["set"]
    shutil.rmtree(site.data)
    code, out = site.backup()
    assert code == 2
    failed = json.loads(latest.read_text())
    assert failed["status"] == "failed" and "does not exist" in failed["error"]


def test_dry_run_prints_commands_and_creates_nothing(site):
    (site.data / "f").write_text("x")
    code, out = site.backup(dry=True)
    assert code == 0, out
    assert "[dry-run] tar --create" in out and "xz --compress" in out
    assert not (site.root / "staging").exists() and not (site.root / "store").exists()
    assert not (site.root / "state").exists()


def test_pre_backup_hook_output_lands_in_the_set(site, tmp_path):
    dump = site.data / "db.sql"
    site.set("backup.hooks", [{"name": "dump", "argv": ["sh", "-c", f"echo 'CREATE TABLE t;' > '{dump}'"]}])
    code, out = site.backup()
    assert code == 0, out
    assert site.restore(tmp_path / "r")[0] == 0
    assert (tmp_path / "r" / dump.relative_to("/")).read_text() == "CREATE TABLE t;\n"


def test_failing_hook_fails_the_set_with_its_output(site):
    site.set("backup.hooks", [{"name": "dump", "argv": ["sh", "-c", "echo 'mysqldump: access denied' >&2; exit 3"]}])
    code, out = site.backup()
    assert code == 1
    assert "pre-backup hook 'dump' exited 3: mysqldump: access denied" in out
    with site.catalog() as cat:
        assert cat.sets() == []


def test_tar_fatal_error_fails_the_set_and_keeps_earlier_sets(site):
    (site.data / "f").write_text("x")
    assert site.backup()[0] == 0
    victim = site.root / "vanishing"
    victim.mkdir()
    site.set("backup.directories", [str(site.data), str(victim)])
    site.set("backup.hooks", [{"name": "rm", "argv": ["rmdir", str(victim)]}])
    code, out = site.backup()
    assert code == 1 and f"tar of {victim} failed (exit 2)" in out
    with site.catalog() as cat:
        assert [r["status"] for r in cat.sets()] == ["complete", "inflight"]
    assert len(list((site.staging / "complete").iterdir())) == 1


def test_file_changing_while_read_is_a_warning_not_a_failure(site, tmp_path):
    grower = site.data / "growing.log"
    grower.write_bytes(os.urandom(8 * 1024 * 1024))
    writer = subprocess.Popen(["sh", "-c", f"while :; do head -c 4096 /dev/urandom >> '{grower}'; done"])
    try:
        code, out = site.backup()
    finally:
        writer.kill()
        writer.wait()
    assert code == 0, out
    assert "files changed while read (tar exit 1)" in out
    assert site.restore(tmp_path / "r")[0] == 0
