"""No key, secret, token or passphrase is printed, logged, or put in a report, state file or staging file.

A passphrase-protected gpg key unlocked through ``backup.encryption.passphrase_file`` and AWS
credentials from the environment, driven through backup, verify, restore, list, reconcile, a
dry run and a failing restore against S3 on moto; then every byte the runs printed and every
file they left is searched for each secret.
"""

from __future__ import annotations

import subprocess

import pytest

from moto_server import FAKE_CREDENTIALS
from test_s3_store import BUCKET, aws_env, moto, s3  # noqa: F401  (fixtures)
from treecmp import fingerprint

from orchestrator.backup import jobs

PASSPHRASE = "correct horse battery staple 7f3a"


@pytest.fixture
def locked_key(tmp_path):
    home = tmp_path / "gnupg-locked"
    home.mkdir(mode=0o700)
    batch = (f"Key-Type: RSA\nKey-Length: 2048\nName-Real: Locked\nName-Email: locked@test.invalid\n"
             f"Passphrase: {PASSPHRASE}\nExpire-Date: 0\n%commit\n")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--gen-key"],
                   input=batch.encode(), check=True, capture_output=True)
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    yield home, secret
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def test_no_secret_reaches_output_reports_or_state(moto, s3, site, tmp_path, locked_key):  # noqa: F811
    home, passphrase_file = locked_key
    site.set("backup.encryption", {"recipients": ["locked@test.invalid"], "gpg_home": str(home),
                                   "passphrase_file": str(passphrase_file)})
    site.set("backup.store", {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.endpoint_url,
                              "storage_class": "STANDARD"})
    (site.data / "f").write_bytes(b"payload " * 40000)
    outputs = []
    for job, body in [("backup", jobs.backup), ("verify", lambda r: jobs.verify(r)),
                      ("restore-list", jobs.list_sets), ("catalog-reconcile", jobs.reconcile_store),
                      ("restore", lambda r: jobs.restore(r, str(tmp_path / "restored")))]:
        code, out = site.run(job, body)
        assert code == 0, out
        outputs.append(out)
    assert fingerprint(tmp_path / "restored" / site.data.relative_to("/")) == fingerprint(site.data)
    outputs.append(site.backup(dry=True)[1])
    passphrase_file.write_text("wrong passphrase\n")
    subprocess.run(["gpgconf", "--homedir", str(home), "--reload", "gpg-agent"], capture_output=True)
    code, out = site.restore(tmp_path / "second")
    assert code == 1 and "gpg failed on" in out
    outputs.append(out)

    secrets = [PASSPHRASE, FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]]
    left_behind = [p for d in ("state", "staging") for p in (site.root / d).rglob("*") if p.is_file()]
    assert any(p.name.startswith("backup-") and p.suffix == ".json" for p in left_behind), "reports were searched"
    for secret in secrets:
        assert not [o for o in outputs if secret in o], f"{secret[:6]}... was printed"
        assert not [p for p in left_behind if secret.encode() in p.read_bytes()], f"{secret[:6]}... is in a file"
