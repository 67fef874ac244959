"""Signed gpkgs end to end: the binhost signs with its key, an instance verifies.

Real gpg and real Portage (PyPI) in scratch prefixes; the instance is reached
through a real sshd on loopback. Portage verifies as the unprivileged user
nobody, so this also checks that the keyrings we prepare are readable by it.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

import portage_lab as lab
from children import TAG, new_tag, no_tagged_left
from test_binhost_clients import Lab, binrepos_conf
from orchestrator.binhost.facts import BinhostFacts
from orchestrator.binhost.serve import serving
from orchestrator.config import load_section
from daemons import group_members
from sshd import running_sshd


def make_key(home):
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
                    "binhost test <binhost@example.invalid>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"],
                             check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.fixture
def public_dir():
    """Verify keyrings must be reachable by nobody; pytest's own temp dirs are 0700."""
    path = Path(tempfile.mkdtemp(prefix="orchestrator-verify-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def signed_lab(tmp_path, monkeypatch, public_dir):
    """The lab with a signing key; every process it starts carries its tag (gpg-agent too), and none is left."""
    tag = new_tag("signed")
    monkeypatch.setenv(TAG, tag)
    for key, value in lab.portage_env(tmp_path).items():
        if key != "PORTAGE_OVERRIDE_EPREFIX":
            monkeypatch.setenv(key, value)
    fingerprint = make_key(tmp_path / "signing")
    try:
        with running_sshd(tmp_path / "sshd") as ssh:
            (tmp_path / "site").mkdir()
            from conftest import Site
            world = Lab(Site(tmp_path / "site"), tmp_path, ssh, tag)
            world.site.set("binhost.signing", {"key": fingerprint, "gpg_home": str(tmp_path / "signing"),
                                               "verify_home": str(public_dir / "binhost-verify")})
            world.fingerprint = fingerprint
            yield world
    finally:
        for home in (tmp_path / "signing", public_dir / "binhost-verify", public_dir / "instance-verify"):
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, timeout=60)
    no_tagged_left(tag, "the signing lab (gpg-agent, rsync, sshd sessions)")
    no_tagged_left(world.instance_tag, "a command run on the instance")


@pytest.mark.slow
def test_signed_binaries_are_verified_and_installed_on_the_instance(signed_lab, tmp_path, public_dir):
    summary = signed_lab.build()
    assert summary["world"].startswith("built 3")
    for gpkg in signed_lab.binhost.eprefix.glob("var/cache/binpkgs/app-lab/*/*.gpkg.tar"):
        with tarfile.open(gpkg) as archive:
            assert any(name.endswith("image.tar.zst.sig") for name in archive.getnames()), gpkg
    assert (signed_lab.site.root / "state/binhost/signing-key.asc").read_text().startswith(signed_lab.fingerprint)

    cfg = load_section("binhost", signed_lab.site.config["binhost"])
    facts = BinhostFacts.load(signed_lab.site.root / "state/binhost/facts.json")
    verify_home = public_dir / "instance-verify"
    prefix = signed_lab.instance("signed1", mode="direct")
    signed_lab.site.config["binhost"]["clients"][-1]["env"]["BINPKG_GPG_VERIFY_GPG_HOME"] = str(verify_home)
    with serving(cfg, facts, tmp_path / "serve") as server:
        code, output = signed_lab.update("signed1")
        daemon = server.rsync_pid()
    assert code == 0, output
    assert group_members(daemon) == [] and not Path(f"/proc/{daemon}").exists()
    assert "verify-signature = true" in binrepos_conf(prefix)
    assert prefix.installed() == {f"app-lab/toy{i:02d}": "1" for i in range(3)}
    trust = subprocess.run(["gpg", "--homedir", verify_home, "--batch", "--no-autostart", "--export-ownertrust"],
                           check=True, capture_output=True, text=True).stdout
    assert f"{signed_lab.fingerprint}:6:" in trust
    assert verify_home.stat().st_mode & 0o005 == 0o005, "readable by nobody, who runs Portage's gpg"


def test_verify_home_equal_to_the_signing_keyring_is_refused(signed_lab):
    signed_lab.site.set("binhost.signing.verify_home", signed_lab.site.config["binhost"]["signing"]["gpg_home"])
    code, output = signed_lab.site.run("binhost", lambda run: __import__(
        "orchestrator.binhost.jobs", fromlist=["build"]).build(run))
    assert code == 2 and "binhost.signing.verify_home: must not be the signing keyring" in output


def test_a_key_missing_from_the_keyring_is_one_line(signed_lab):
    signed_lab.site.set("binhost.signing.key", "0123456789ABCDEF0123456789ABCDEF01234567")
    from orchestrator.binhost import jobs
    code, output = signed_lab.site.run("binhost", lambda run: jobs.build(run))
    assert code == 2 and "binhost.signing.key: no secret key '0123456789ABCDEF" in output
