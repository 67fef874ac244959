"""Published kernel sets on the build box: the newest ``kernel.keep_builds`` stay, ``latest``'s always."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from orchestrator.kernel import artifacts


def publish(directory: Path, release: str, built: str, tmp: Path) -> Path:
    """A small set as build-kernel publishes it, built at ``built``."""
    stage = tmp / f"stage-{release}"
    (stage / "boot").mkdir(parents=True)
    for name in ("vmlinuz", "System.map", "config"):
        (stage / "boot" / name).write_text(f"{name} of {release}\n")
    (stage / "lib" / "modules" / release).mkdir(parents=True)

    def pack(dest: Path) -> None:
        subprocess.run(["tar", "--zstd", "-cf", str(dest), "-C", str(stage), f"lib/modules/{release}"], check=True)

    return artifacts.publish(directory, release, stage, {"release": release, "built": built}, pack)


def releases(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and p.name != artifacts.LATEST)


def test_only_the_newest_sets_stay(tmp_path):
    directory = tmp_path / "kernels" / "web"
    # built out of name order: age is the build time, not the release's name
    for release, built in (("6.1.10", "2026-01-01T00:00:00Z"), ("6.1.9", "2026-02-01T00:00:00Z"),
                           ("6.1.11", "2026-03-01T00:00:00Z"), ("6.1.12", "2026-04-01T00:00:00Z")):
        publish(directory, release, built, tmp_path)
    assert artifacts.prune_sets(directory, keep=2) == ["6.1.9", "6.1.10"]
    assert releases(directory) == ["6.1.11", "6.1.12"]
    assert os.readlink(directory / artifacts.LATEST) == "6.1.12"
    assert artifacts.damaged(directory / "6.1.11") == [] and artifacts.damaged(directory / "6.1.12") == []
    assert artifacts.prune_sets(directory, keep=2) == []


def test_the_set_latest_names_is_never_removed(tmp_path):
    """An admin who points ``latest`` back at an older set (a rollback of what deploy ships) keeps it."""
    directory = tmp_path / "kernels" / "web"
    for release, built in (("6.1.1", "2026-01-01T00:00:00Z"), ("6.1.2", "2026-02-01T00:00:00Z"),
                           ("6.1.3", "2026-03-01T00:00:00Z")):
        publish(directory, release, built, tmp_path)
    artifacts.point_latest(directory, "6.1.1")
    assert artifacts.prune_sets(directory, keep=1) == ["6.1.2"]
    assert releases(directory) == ["6.1.1", "6.1.3"]


def test_no_image_directory_yet_is_nothing_to_prune(tmp_path):
    assert artifacts.prune_sets(tmp_path / "kernels" / "new", keep=1) == []
