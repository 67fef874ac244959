"""Excludes mean what an admin writes, and the tool never backs up its own staging, state or store."""

from __future__ import annotations

import shlex
import subprocess

from conftest import summary_value

from orchestrator.backup import jobs
from orchestrator.backup.catalog import Catalog


def tree(root) -> None:
    for name in ("keep/k.txt", "skip/s.txt", "keep/old.log", "keep/deep/x.tmp", "keep/deep/y.txt",
                 "odd [name]*/f", "oddXnameY/g"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)


def restored_names(site, tmp_path) -> set[str]:
    target = tmp_path / "r"
    code, out = site.restore(target)
    assert code == 0, out
    base = target / site.data.relative_to("/")
    return {str(p.relative_to(base)) for p in base.rglob("*")}


def test_absolute_paths_and_globs_are_excluded(site, tmp_path):
    tree(site.data)
    site.set("backup.exclude", [f"{site.data}/skip", f"{site.data}/keep/*.log", "*.tmp"])
    code, out = site.backup()
    assert code == 0, out
    names = restored_names(site, tmp_path)
    assert "skip" not in names and "keep/old.log" not in names and "keep/deep/x.tmp" not in names
    assert {"keep/k.txt", "keep/deep/y.txt", "odd [name]*/f", "oddXnameY/g"} <= names


def test_own_directories_inside_a_backed_up_directory_are_never_backed_up(site, tmp_path):
    """The example site backs up /var and keeps its staging, state and directory store there."""
    tree(site.data)
    site.set("orchestrator.state_dir", str(site.data / "lib" / "geo"))
    site.set("backup.staging_dir", str(site.data / "tmp" / "geo staging"))
    site.set("backup.store", {"type": "directory", "path": str(site.data / "backups" / "store [1]")})
    code, out = site.backup(dry=True)
    assert code == 0, out
    for path, key in [(site.data / "tmp" / "geo staging", "backup.staging_dir"),
                      (site.data / "lib" / "geo", "orchestrator.state_dir"),
                      (site.data / "backups" / "store [1]", "backup.store.path")]:
        assert f"[dry-run] excluding {shlex.quote(str(path))} ({key}): it lies inside a backed-up directory" in out
    code, out = site.backup()
    assert code == 0, out
    code, out = site.backup()
    assert code == 0, out
    with Catalog.open(site.data / "lib" / "geo" / "catalog.sqlite") as cat:
        assert [r["kind"] for r in cat.sets()] == ["full", "incremental"]
        names = {bytes(r["path"]).decode() for s in cat.sets() for d in cat.dirs(s["id"])
                 for r in cat.files(s["id"], d["slug"])}
    rel = str(site.data.relative_to("/"))
    ours = (f"{rel}/tmp/geo staging", f"{rel}/lib/geo", f"{rel}/backups/store [1]")
    assert [n for n in names if n.startswith(ours)] == []
    assert {f"{rel}/keep/k.txt", f"{rel}/tmp", f"{rel}/backups"} <= names


def test_dry_run_quotes_every_path_so_pasting_it_runs_nothing_else(site, tmp_path):
    evil = tmp_path / "staging $(touch PWNED)"
    site.set("backup.staging_dir", str(evil))
    (site.data / "f").write_text("x")
    code, out = site.backup(dry=True)
    assert code == 0, out
    lines = [line.removeprefix("[dry-run]").strip() for line in out.splitlines() if line.startswith("[dry-run]")]
    split = next(line for line in lines if "per chunk:" in line)
    redirect_target = split.rsplit(" > ", 1)[1]
    assert shlex.split(redirect_target) == [str(evil / "testhost" / "inflight" / "<set>" /
                                                   f"{site.data.relative_to('/').as_posix().replace('/', '_')}"
                                                   ".tar.000000.xz")]
    tar_line = next(line for line in lines if line.startswith("tar --create"))
    subprocess.run(["bash", "-n", "-c", tar_line], check=True)
    assert not (tmp_path / "PWNED").exists() and not evil.exists()


def test_restore_with_set_but_no_target_is_an_error(site):
    (site.data / "f").write_text("x")
    set_id = summary_value(site.backup()[1], "set")
    code, out = site.run("restore", lambda run: jobs.restore(run, None, set_id))
    assert code == 2
    assert "--target: say where to restore (a new or empty directory)" in out


def test_the_example_site_never_backs_up_its_own_staging_state_or_store(tmp_path):
    import copy
    import io
    from pathlib import Path

    import yaml

    from orchestrator.job import execute

    example = yaml.safe_load((Path(__file__).resolve().parent.parent / "examples" / "site.yaml").read_text())
    config = copy.deepcopy(example)
    config["backup"]["directories"] = ["/var"]
    config["backup"]["hooks"] = []
    config["backup"]["min_free_space"] = 0
    config["run"] = {"dry": True}
    out = io.StringIO()
    assert execute(config, "backup", jobs.backup, out=out) == 0, out.getvalue()
    for path, key in [("/var/tmp/gentoo-ec2-orchestrator", "backup.staging_dir"),
                      ("/var/lib/gentoo-ec2-orchestrator", "orchestrator.state_dir"),
                      ("/var/backups/gentoo-ec2-orchestrator/store", "backup.store.path")]:
        assert f"[dry-run] excluding {path} ({key}): it lies inside a backed-up directory" in out.getvalue()
    assert "--anchored --exclude=var/cache/distfiles --no-anchored" in out.getvalue()
