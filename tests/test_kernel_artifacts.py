"""Published kernel sets on the build box: the newest ``kernel.keep_builds`` stay, ``latest``'s always; a
``kill -9`` at each crash point of a publish leaves the previous set or the whole new one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from children import finished
from kernel_sets import publish
from orchestrator.faults import ENV as CRASH_ENV
from orchestrator.kernel import artifacts

CHILD = Path(__file__).with_name("kernel_sets.py")
RELEASE = "6.1.1"
OLD, NEW = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


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


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def hidden(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("point", ["kernel-artifact-written@2", "kernel-artifact-written@4",
                                   "kernel-artifacts-complete", "kernel-artifacts-swapped", "kernel-published"])
def test_kill_9_while_publishing_leaves_the_previous_set_or_the_whole_new_one(tmp_path, point):
    """Same release, a new set: a child publishing it is killed at ``point``, then the next publish cleans up.

    Until the swap the release's directory is the previous set, byte for byte, and the new one is half or
    wholly written in a hidden directory; from the swap on it is the complete new set, the previous one
    hidden until it is removed. test_kernel_build.py kills a real ``inv build-kernel`` at the swap.
    """
    directory = tmp_path / "kernels" / "web"
    publish(directory, RELEASE, OLD, tmp_path / "old")
    before = contents(directory / RELEASE)

    run = finished([sys.executable, str(CHILD), str(directory), RELEASE, NEW, str(tmp_path / "new")],
                   what=f"a publish killed at {point}", out_dir=tmp_path / "child",
                   env={**os.environ, CRASH_ENV: point})
    assert run.returncode == -9, run.stdout + run.stderr
    assert artifacts.damaged(directory / RELEASE) == []
    swapped = point in ("kernel-artifacts-swapped", "kernel-published")
    assert (artifacts.read_build(directory / RELEASE)["built"] == NEW) is swapped
    assert (contents(directory / RELEASE) == before) is not swapped
    left = hidden(directory)
    assert [p.name.startswith(f".{RELEASE}.new-") for p in left] == ([] if point == "kernel-published" else [True])
    if point == "kernel-artifact-written@2":
        assert sorted(p.name for p in left[0].iterdir()) == ["System.map", "vmlinuz"]
    if point == "kernel-artifacts-swapped":
        assert contents(left[0]) == before

    publish(directory, RELEASE, NEW, tmp_path / "again")
    assert hidden(directory) == []
    assert artifacts.damaged(directory / RELEASE) == [] and artifacts.read_build(directory / RELEASE)["built"] == NEW
    assert os.readlink(directory / artifacts.LATEST) == RELEASE
