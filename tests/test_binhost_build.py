"""`inv binhost` against real Portage (PyPI) in a scratch prefix.

The build system here is a Portage prefix, not a chroot (a Gentoo stage3 cannot
exist on this Debian machine): the same scripts from chroot/ run with
PORTAGE_OVERRIDE_EPREFIX, on a toy repository synced over rsync (file://) from
an "upstream" tree, so every stage runs real emerge, quickpkg, emaint and
egencache. The chroot side is tested in test_binhost_chroot.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def build(site, stages=None, dry=False) -> dict:
    """``stages=None``: the full ``inv binhost``."""
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_index_stage_rewrites_packages_only_when_it_does_not_match(binhost):
    build(binhost)
    (binhost.pkgdir / "Packages").unlink()
    assert build(binhost, ["index"])["index"] == "rewrote Packages (no index yet); it lists 3 binary packages"
    assert build(binhost, ["index"])["index"] == "nothing to do: Packages lists all 3 binary packages"


@pytest.mark.slow
def test_owner_stage_chowns_only_what_differs_and_warns_when_unset(binhost):
    build(binhost, ["sync", "world", "package"])
    emerge(binhost.prefix, "--oneshot", "--buildpkg=n", "=app-lab/toy00-1")
    build(binhost, ["package"])  # quickpkg --include-config=y writes 0640 files
    code, output = binhost.run("binhost", lambda run: jobs.build(run, ["owner"]))
    assert code == 0, output
    report = json.loads((binhost.root / "state/reports/binhost-latest.json").read_text())
    assert report["summary"]["owner"] == "nothing to do: binhost.serve.web_user and web_group are not set"
    (warning,) = report["warnings"]
    assert re.fullmatch(rf"[1-9]\d* file\(s\) or directories in {re.escape(str(binhost.pkgdir))} are not readable "
                        r"by other users \(quickpkg --include-config=y writes 0640\): a web server running as its "
                        r"own user cannot serve them; set binhost.serve.web_group", warning), warning
    assert warning in output

    binhost.set("binhost.serve.web_group", "nogroup")
    assert build(binhost, ["owner"])["owner"].startswith("chowned ")
    nogroup = __import__("grp").getgrnam("nogroup").gr_gid
    assert {p.stat().st_gid for p in binhost.pkgdir.rglob("*")} == {nogroup}
    assert build(binhost, ["owner"])["owner"] == "nothing to do: PKGDIR is owned by -:nogroup"

    binhost.set("binhost.serve.web_user", "no-such-user-here")
    code, output = binhost.run("binhost", lambda run: jobs.build(run, ["owner"]))
    assert code == 2 and "binhost.serve.web_user: no user 'no-such-user-here'" in output


@pytest.mark.slow
def test_dry_run_says_what_it_would_do_and_changes_nothing(binhost):
    build(binhost)
    lab.bump(binhost.upstream, 1)
    before = (binpkgs(binhost.pkgdir), binhost.prefix.installed())
    output = build(binhost, dry=True)["output"]
    assert "would sync" in output and "would update @world" in output
    assert (binpkgs(binhost.pkgdir), binhost.prefix.installed()) == before
    assert not (binhost.tree / "app-lab/toy01/toy01-2.ebuild").exists(), "nothing was synced"


@pytest.mark.slow
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
    ("binhost.keep_binpkgs", -1, "binhost.keep_binpkgs: must not be negative, got -1"),
    ("binhost.keep_binpkgs", "all", "binhost.keep_binpkgs: expected an integer, got 'all'"),
    ("binhost.prune", "sometimes", "binhost.prune: expected true or false, got 'sometimes'"),
])
def test_bad_settings_are_one_line_naming_the_key(binhost, setting, value, message):
    binhost.set(setting, value)
    code, output = binhost.run("binhost", lambda run: jobs.build(run))
    assert code == 2 and message in output
    assert not binhost.tree.exists(), "nothing ran"


@pytest.mark.slow
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


# --- prune -----------------------------------------------------------------------------------

def binpkg_files(pkgdir: Path) -> list[str]:
    """Every file in PKGDIR but the index, gpkg and xpak alike."""
    return sorted(str(p.relative_to(pkgdir)) for p in pkgdir.rglob("*")
                  if p.is_file() and not p.name.startswith("Packages"))


def indexed(pkgdir: Path) -> list[str]:
    from orchestrator.binhost.tree import index_entries

    return sorted(entry["PATH"] for entry in index_entries(pkgdir / "Packages"))


def prune(site, dry=False) -> tuple[str, str]:
    """``inv binhost.prune``: its summary line and the whole output."""
    code, output = site.run("binhost-prune", lambda run: jobs.build(run, ["prune"]), dry=dry)
    assert code == 0, output
    return next(line.split("prune: ", 1)[1] for line in output.splitlines()
                if line.startswith("  prune: ")), output


def kept_message(total: int, keep: int = 1) -> str:
    return (f"nothing to do: all {total} binary packages are kept (installed builds, up to {keep} older "
            f"build(s) per package, or still in lab)")


def install_from(binhost, tmp_path) -> dict[str, str]:
    """A fresh instance syncs the binhost's tree and installs binaries only (file://, Portage's own fetcher)."""
    from orchestrator.config import ClientConfig
    from orchestrator.portage_conf import ClientUris, render_client_configs

    client = lab.make_client_prefix(tmp_path, "instance", packages=PACKAGES)
    uris = ClientUris({"lab": f"file://{binhost.tree}/"}, f"file://{binhost.pkgdir}")
    rendered = render_client_configs(ClientConfig("instance", eprefix=str(client.eprefix)), ["lab"],
                                     uris, verify_signature=False)
    for path, text in rendered.items():
        Path(path).write_text(text)
    emerge(client, "--sync")
    emerge(client, "--update", "--deep", "--newuse", "--usepkgonly", "--getbinpkg", "@world")
    return client.installed()


@pytest.mark.slow
def test_prune_removes_a_superseded_build_beyond_keep_binpkgs_and_clients_still_install(binhost, tmp_path):
    build(binhost)
    lab.bump(binhost.upstream, 2)
    bumped = build(binhost)
    assert bumped["prune"] == "off (binhost.prune is false; `inv binhost.prune` runs it once)"
    everything = ["app-lab/toy00/toy00-1-1.gpkg.tar", "app-lab/toy01/toy01-1-1.gpkg.tar",
                  "app-lab/toy02/toy02-1-1.gpkg.tar", "app-lab/toy02/toy02-2-1.gpkg.tar"]
    assert binpkg_files(binhost.pkgdir) == everything

    assert prune(binhost)[0] == kept_message(4), "keep_binpkgs: 1 keeps the one superseded build"
    assert binpkg_files(binhost.pkgdir) == everything

    binhost.set("binhost.keep_binpkgs", 0)
    superseded = binhost.pkgdir / "app-lab/toy02/toy02-1-1.gpkg.tar"
    size = superseded.stat().st_size
    before = (binpkgs(binhost.pkgdir), (binhost.pkgdir / "Packages").read_bytes())
    message, output = prune(binhost, dry=True)
    assert [line for line in output.splitlines() if line.startswith("[dry-run] prune:")] == [
        f"[dry-run] prune: would remove app-lab/toy02/toy02-1-1.gpkg.tar ({size} bytes, superseded by app-lab/toy02-2)"]
    assert message == f"would remove 1 of 4 binary packages, {size} bytes ({size / 1024:.1f} KiB): " \
                      "app-lab/toy02/toy02-1-1.gpkg.tar"
    assert (binpkgs(binhost.pkgdir), (binhost.pkgdir / "Packages").read_bytes()) == before, "--dry changed PKGDIR"

    binhost.set("binhost.prune", True)
    summary = build(binhost)
    assert summary["prune"] == (f"removed 1 of 4 binary packages, {size} bytes ({size / 1024:.1f} KiB): "
                                "app-lab/toy02/toy02-1-1.gpkg.tar; Packages lists 3")
    assert summary["index"] == "nothing to do: Packages lists all 3 binary packages"
    assert binpkg_files(binhost.pkgdir) == indexed(binhost.pkgdir) == [p for p in everything if "toy02-1-" not in p]
    assert prune(binhost)[0] == kept_message(3, keep=0)

    assert install_from(binhost, tmp_path) == {"app-lab/toy00": "1", "app-lab/toy01": "1", "app-lab/toy02": "2"}


def quickpkg_xpak(prefix, atom: str) -> None:
    """The old layout: PKGDIR/<category>/<name>-<version>.tbz2 (xpak, no binpkg-multi-instance)."""
    subprocess.run(["quickpkg", "--include-config=y", atom], check=True, capture_output=True,
                   env={**os.environ, **prefix.env(), "BINPKG_FORMAT": "xpak", "FEATURES": "-binpkg-multi-instance"})


@pytest.mark.slow
def test_prune_never_removes_the_installed_build_nor_a_signature_without_its_package(binhost):
    build(binhost)
    quickpkg_xpak(binhost.prefix, "=app-lab/toy00-1")  # the first build of toy00, xpak
    quickpkg_xpak(binhost.prefix, "=app-lab/toy01-1")  # the installed build of toy01, xpak
    emerge(binhost.prefix, "--oneshot", "--buildpkg", "=app-lab/toy00-1")  # toy00 rebuilt: toy00-1-2 is installed
    for name in ("app-lab/toy00-1.tbz2.asc", "app-lab/toy01-1.tbz2.asc"):
        (binhost.pkgdir / name).write_text("a detached signature\n")
    binhost.set("binhost.keep_binpkgs", 0)
    xpak_size = (binhost.pkgdir / "app-lab/toy00-1.tbz2").stat().st_size + len("a detached signature\n")
    gpkg_size = (binhost.pkgdir / "app-lab/toy00/toy00-1-1.gpkg.tar").stat().st_size

    message, output = prune(binhost)
    total = xpak_size + gpkg_size
    assert message == (f"removed 2 of 6 binary packages, {total} bytes ({total / 1024:.1f} KiB): "
                       "app-lab/toy00-1.tbz2, app-lab/toy00/toy00-1-1.gpkg.tar; Packages lists 4")
    assert [line for line in output.splitlines() if line.startswith("prune: removed")] == [
        f"prune: removed app-lab/toy00-1.tbz2 ({xpak_size} bytes, superseded by app-lab/toy00-1)",
        f"prune: removed app-lab/toy00/toy00-1-1.gpkg.tar ({gpkg_size} bytes, superseded by app-lab/toy00-1)"]
    assert binpkg_files(binhost.pkgdir) == [
        "app-lab/toy00/toy00-1-2.gpkg.tar", "app-lab/toy01-1.tbz2", "app-lab/toy01-1.tbz2.asc",
        "app-lab/toy01/toy01-1-1.gpkg.tar", "app-lab/toy02/toy02-1-1.gpkg.tar"]
    assert indexed(binhost.pkgdir) == [
        "app-lab/toy00/toy00-1-2.gpkg.tar", "app-lab/toy01-1.tbz2",
        "app-lab/toy01/toy01-1-1.gpkg.tar", "app-lab/toy02/toy02-1-1.gpkg.tar"]
    assert index_state(binhost.pkgdir).current
    assert build(binhost, ["package"])["package"].startswith("nothing to do: all 3 installed packages"), \
        "every installed package still has its binary package"


@pytest.mark.slow
def test_prune_removes_a_package_gone_from_the_tree_once_it_is_not_installed(binhost):
    build(binhost)
    emerge(binhost.prefix, "--unmerge", "app-lab/toy02")
    assert prune(binhost)[0] == kept_message(3), "not installed, but its ebuild is still there"

    shutil.rmtree(binhost.upstream / "app-lab/toy02")
    lab.stamp(binhost.upstream)
    packages_before = (binhost.pkgdir / "Packages").read_bytes()
    size = (binhost.pkgdir / "app-lab/toy02/toy02-1-1.gpkg.tar").stat().st_size
    summary = build(binhost, ["sync", "prune"])
    assert summary["prune"] == (f"removed 1 of 3 binary packages, {size} bytes ({size / 1024:.1f} KiB): "
                                "app-lab/toy02/toy02-1-1.gpkg.tar; Packages lists 2")
    assert binpkg_files(binhost.pkgdir) == indexed(binhost.pkgdir) == [
        "app-lab/toy00/toy00-1-1.gpkg.tar", "app-lab/toy01/toy01-1-1.gpkg.tar"]
    assert not (binhost.pkgdir / "app-lab/toy02").exists(), "the emptied directory went too"

    # A prune killed after removing files but before re-indexing: the next one finishes the job.
    (binhost.pkgdir / "Packages").write_bytes(packages_before)
    assert prune(binhost, dry=True)[0] == "nothing to remove; would rewrite Packages (1 index entries without a file)"
    assert (binhost.pkgdir / "Packages").read_bytes() == packages_before, "a look (and --dry) changes nothing"
    assert prune(binhost)[0] == ("nothing to remove; rewrote Packages (1 index entries without a file); "
                                 "it lists 2")
    assert indexed(binhost.pkgdir) == binpkg_files(binhost.pkgdir)


def test_prune_policy_per_slot():
    """The policy alone (prune.plan), on what binhost-binpkgs reports; no Portage needed to decide."""
    from orchestrator.binhost.prune import Removal, plan

    def b(path, state, in_tree=True):
        return {"path": path, "cpv": path, "state": state, "in_tree": in_tree}

    slots = [
        {"slot": "a/x:0", "installed": "a/x-3", "builds": [
            b("a/x-4", "newer", in_tree=False), b("a/x-3", "installed", in_tree=False), b("a/x-3.old", "older"),
            b("a/x-2", "older", in_tree=False), b("a/x-1", "older")]},
        {"slot": "a/y:0", "installed": None, "builds": [b("a/y-2", "-"), b("a/y-1", "-", in_tree=False)]},
        {"slot": "a/z:0", "installed": "a/z-1", "builds": [b("a/z-2", "newer"), b("a/z-1", "installed")]},
    ]
    gone = [Removal("a/x-4", "a/x-4", "no ebuild left, newer than the installed a/x-3"),
            Removal("a/y-1", "a/y-1", "no ebuild left, not installed")]
    superseded = [Removal(p, p, "superseded by a/x-3") for p in ("a/x-3.old", "a/x-2", "a/x-1")]
    assert plan(slots, 0) == superseded + gone
    assert plan(slots, 1) == superseded[1:] + gone
    assert plan(slots, 2) == superseded[2:] + gone
    assert plan(slots, 3) == plan(slots, 99) == gone
