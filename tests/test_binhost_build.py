"""`inv binhost` against real Portage (PyPI) in a scratch prefix.

The build system here is a Portage prefix, not a chroot (a Gentoo stage3 cannot
exist on this Debian machine): the same scripts from chroot/ run with
PORTAGE_OVERRIDE_EPREFIX, on a toy repository synced over rsync (file://) from
an "upstream" tree, so every stage runs real emerge, quickpkg, emaint and
egencache. The chroot side is tested in test_binhost_chroot.py.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
from pathlib import Path

import pytest

import portage_lab as lab
from orchestrator.binhost import jobs
from orchestrator.binhost.tree import index_state

PACKAGES = 3


@pytest.fixture
def binhost(site, tmp_path, monkeypatch):
    """A binhost prefix and its upstream; the site points `binhost` at it."""
    for key, value in lab.portage_env(tmp_path).items():
        if key != "PORTAGE_OVERRIDE_EPREFIX":
            monkeypatch.setenv(key, value)
    upstream = lab.make_repo(tmp_path / "upstream", packages=PACKAGES)
    prefix = lab.make_binhost_prefix(tmp_path, upstream=upstream, packages=PACKAGES)
    site.set("binhost", {"mode": "prefix", "root": str(prefix.eprefix)})
    site.upstream = upstream
    site.prefix = prefix
    site.pkgdir = prefix.eprefix / "var/cache/binpkgs"
    site.tree = prefix.eprefix / "var/db/repos/lab"
    return site


def build(site, stages=jobs.STAGES, dry=False) -> dict:
    code, output = site.run("binhost", lambda run: jobs.build(run, stages), dry=dry)
    assert code == 0, output
    return latest_summary(site) if not dry else {"output": output}


def latest_summary(site) -> dict:
    report = site.root / "state" / "reports" / "binhost-latest.json"
    return json.loads(report.read_text())["summary"]


def binpkgs(pkgdir: Path) -> dict[str, int]:
    return {str(p.relative_to(pkgdir)): p.stat().st_mtime_ns for p in sorted(pkgdir.rglob("*.gpkg.tar"))}


def emerge(prefix, *args):
    subprocess.run(["emerge", "--ask=n", "--color=n", *args], env={**os.environ, **prefix.env()},
                   check=True, capture_output=True)


def test_first_run_builds_everything_and_a_second_run_has_nothing_to_do(binhost):
    first = build(binhost)
    assert first["sync"] == "updated lab"
    assert first["world"].startswith(f"built {PACKAGES}: app-lab/toy00-1")
    assert len(binpkgs(binhost.pkgdir)) == PACKAGES
    assert index_state(binhost.pkgdir).current
    assert (binhost.tree / "metadata/timestamp.chk").read_text() == (
        binhost.upstream / "metadata/timestamp.chk").read_text(), "the mirror's timestamp is kept"
    assert list((binhost.tree / "metadata/md5-cache/app-lab").iterdir()), "egencache wrote the metadata cache"
    assert binhost.prefix.installed() == {f"app-lab/toy{i:02d}": "1" for i in range(PACKAGES)}

    before = binpkgs(binhost.pkgdir)
    second = build(binhost)
    assert second["sync"] == "nothing new: every tree is as it was"
    for stage in ("world", "package", "index", "publish", "owner"):
        assert second[stage].startswith("nothing to do"), (stage, second[stage])
    assert binpkgs(binhost.pkgdir) == before, "a run with nothing to do rewrites no binary package"


def test_a_bumped_ebuild_is_the_only_package_built_and_published(binhost):
    build(binhost)
    before = binpkgs(binhost.pkgdir)
    lab.bump(binhost.upstream, 2)
    summary = build(binhost)
    assert summary["sync"] == "updated lab"
    assert summary["world"] == "built 1: app-lab/toy02-2"
    assert summary["package"].startswith("nothing to do"), "emerge --buildpkg already packaged it"
    after = binpkgs(binhost.pkgdir)
    assert {k: v for k, v in after.items() if k in before} == before, "the other packages are untouched"
    assert [k for k in after if k not in before] == ["app-lab/toy02/toy02-2-1.gpkg.tar"]
    assert index_state(binhost.pkgdir).current and index_state(binhost.pkgdir).files == PACKAGES + 1


def test_package_stage_quickpkgs_only_missing_and_stale_binaries(binhost):
    build(binhost)
    (binhost.pkgdir / "app-lab/toy01/toy01-1-1.gpkg.tar").unlink()  # missing
    emerge(binhost.prefix, "--oneshot", "--buildpkg=n", "=app-lab/toy00-1")  # rebuilt: its binary is stale
    (binhost.prefix.eprefix / "etc/toy01.conf").write_text("setting=edited on the binhost\n")
    untouched = binpkgs(binhost.pkgdir)["app-lab/toy02/toy02-1-1.gpkg.tar"]

    summary = build(binhost, ["package", "index"])
    assert summary["package"] == "packaged 2 of 3 (missing, stale): =app-lab/toy00-1, =app-lab/toy01-1"
    assert binpkgs(binhost.pkgdir)["app-lab/toy02/toy02-1-1.gpkg.tar"] == untouched
    assert index_state(binhost.pkgdir).current
    assert "setting=edited on the binhost" in gpkg_file(binhost.pkgdir, "toy01", "etc/toy01.conf"), \
        "--include-config=y packs the configuration as it is on the build system"
    assert build(binhost, ["package"])["package"].startswith("nothing to do: all 3 installed packages")


def gpkg_file(pkgdir: Path, name: str, member: str) -> str:
    """One file of the newest gpkg of ``name``, read with tar and zstd like an admin would."""
    newest = sorted((pkgdir / "app-lab" / name).glob("*.gpkg.tar"), key=lambda p: p.stat().st_mtime_ns)[-1]
    listing = subprocess.run(["tar", "-tf", newest], check=True, capture_output=True, text=True).stdout.split()
    image = next(entry for entry in listing if "/image.tar" in entry)
    inner = subprocess.run(["tar", "-xOf", newest, image], check=True, capture_output=True).stdout
    files = subprocess.run(["tar", "--auto-compress", "-xO", "-f", "-", "--wildcards", f"*{member}"],
                           input=subprocess.run(["zstd", "-dc"], input=inner, capture_output=True, check=True).stdout
                           if image.endswith(".zst") else inner,
                           check=True, capture_output=True)
    return files.stdout.decode()


def test_index_stage_rewrites_packages_only_when_it_does_not_match(binhost):
    build(binhost)
    (binhost.pkgdir / "Packages").unlink()
    assert build(binhost, ["index"])["index"] == "rewrote Packages (no index yet); it lists 3 binary packages"
    assert build(binhost, ["index"])["index"] == "nothing to do: Packages lists all 3 binary packages"


def test_owner_stage_chowns_only_what_differs_and_warns_when_unset(binhost):
    build(binhost, ["sync", "world", "package"])
    emerge(binhost.prefix, "--oneshot", "--buildpkg=n", "=app-lab/toy00-1")
    build(binhost, ["package"])  # quickpkg --include-config=y writes 0640 files
    code, output = binhost.run("binhost", lambda run: jobs.build(run, ["owner"]))
    assert code == 0 and "not readable by other users" in output and "web_group" in output

    binhost.set("binhost.serve.web_group", "nogroup")
    assert build(binhost, ["owner"])["owner"].startswith("chowned ")
    nogroup = __import__("grp").getgrnam("nogroup").gr_gid
    assert {p.stat().st_gid for p in binhost.pkgdir.rglob("*")} == {nogroup}
    assert build(binhost, ["owner"])["owner"] == "nothing to do: PKGDIR is owned by -:nogroup"

    binhost.set("binhost.serve.web_user", "no-such-user-here")
    code, output = binhost.run("binhost", lambda run: jobs.build(run, ["owner"]))
    assert code == 2 and "binhost.serve.web_user: no user 'no-such-user-here'" in output


def test_dry_run_says_what_it_would_do_and_changes_nothing(binhost):
    build(binhost)
    lab.bump(binhost.upstream, 1)
    before = (binpkgs(binhost.pkgdir), binhost.prefix.installed())
    output = build(binhost, dry=True)["output"]
    assert "would sync" in output and "would update @world" in output
    assert (binpkgs(binhost.pkgdir), binhost.prefix.installed()) == before
    assert not (binhost.tree / "app-lab/toy01/toy01-2.ebuild").exists(), "nothing was synced"


def test_a_failing_build_is_one_line_naming_the_step_and_its_log(binhost):
    build(binhost)
    broken = lab.bump(binhost.upstream, 1)
    broken.write_text(broken.read_text().replace('echo "${PF}"', 'die "broken on purpose"; echo'))
    lab.stamp(binhost.upstream)
    code, output = binhost.run("binhost", lambda run: jobs.build(run))
    assert code == 1
    error = [line for line in output.splitlines() if line.strip().startswith("error:")]
    assert len(error) == 1 and "binhost-world exited 1" in error[0]
    log = binhost.root / "state/binhost/logs/binhost-world.log"
    assert f"whole log: {log}" in error[0] and "broken on purpose" in log.read_text()
    assert binhost.prefix.installed()["app-lab/toy01"] == "1", "the old version stays installed"


@pytest.mark.parametrize("setting, value, message", [
    ("binhost.root", "/nonexistent/binhost", "binhost.root: /nonexistent/binhost is not a directory"),
    ("binhost.mode", "docker", "binhost.mode: 'docker' is not one of 'chroot', 'prefix'"),
    ("binhost.serve.http_port", 70000, "binhost.serve.http_port: 70000 is not a TCP port"),
])
def test_bad_settings_are_one_line_naming_the_key(binhost, setting, value, message):
    binhost.set(setting, value)
    code, output = binhost.run("binhost", lambda run: jobs.build(run))
    assert code == 2 and message in output
    assert not binhost.tree.exists(), "nothing ran"


def test_a_mirror_tree_with_its_own_cache_is_served_as_synced(binhost):
    """Gentoo's rsync mirrors ship metadata/md5-cache under signed Manifests: we must not rewrite it."""
    build(binhost)
    shutil.copytree(binhost.tree / "metadata/md5-cache", binhost.upstream / "metadata/md5-cache")
    lab.stamp(binhost.upstream)
    publish_log = binhost.root / "state/binhost/logs/binhost-publish.log"
    log_before = publish_log.stat().st_mtime_ns
    summary = build(binhost, ["sync", "publish"])
    assert summary["publish"] == "published lab (as synced: the mirror's cache and timestamp)"
    assert publish_log.stat().st_mtime_ns == log_before, "egencache did not run"
    assert (binhost.tree / "metadata/timestamp.chk").read_text() == (
        binhost.upstream / "metadata/timestamp.chk").read_text()
    assert build(binhost, ["sync", "publish"])["publish"] == "nothing to do: lab unchanged since last published"
