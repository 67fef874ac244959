"""Kernel artifacts: ``<output_dir>/kernels/<image>/<release>/``, complete or not there at all.

A set is written into a hidden sibling (``.<release>.new-<pid>``), every file
fsynced, ``SHA256SUMS`` last; then it takes the release's name in one step:
``rename`` when the release is new, ``renameat2(RENAME_EXCHANGE)`` when a set of
that release is already there (same version, new config), after which the old
set, now under the hidden name, is removed. A ``kill -9`` at any instant leaves
the previous set or the complete new one under ``<release>``; a hidden leftover
is removed by the next publish. ``latest`` is a symlink to the newest release.

Every file is listed in ``SHA256SUMS`` (``sha256sum -c SHA256SUMS`` checks a set
by hand); ``build.json`` says what it was built from (the fingerprint) and what
the EC2 check found.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import OrchestratorError
from ..faults import crash_point

BUILD_FILE = "build.json"
SUMS_FILE = "SHA256SUMS"
MODULES_FILE = "modules.tar.zst"
LATEST = "latest"
#: stage path -> artifact name; the initramfs and its listing only when there is one
FILES = (("boot/vmlinuz", "vmlinuz"), ("boot/initramfs.img", "initramfs.img"), ("boot/System.map", "System.map"),
         ("boot/config", "config"), ("initramfs.list", "initramfs.list"))
OPTIONAL = {"initramfs.img", "initramfs.list"}
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def image_dir(output_dir: Path, image: str) -> Path:
    return output_dir / "kernels" / image


def find_built(directory: Path, fingerprint: str) -> tuple[Path, dict] | None:
    """The published set built from ``fingerprint`` whose files all match its SHA256SUMS, if any."""
    if not directory.is_dir():
        return None
    for candidate in sorted(directory.iterdir()):
        if candidate.name.startswith(".") or candidate.is_symlink() or not candidate.is_dir():
            continue
        info = read_build(candidate)
        if info and info.get("fingerprint") == fingerprint and not damaged(candidate):
            return candidate, info
    return None


def read_build(directory: Path) -> dict | None:
    try:
        return json.loads((directory / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None


def damaged(directory: Path) -> list[str]:
    """Files that do not match ``SHA256SUMS`` (or the file itself, when it is missing)."""
    try:
        lines = (directory / SUMS_FILE).read_text().splitlines()
    except OSError:
        return [SUMS_FILE]
    bad = []
    for line in lines:
        digest, _, name = line.partition("  ")
        try:
            if sha256_file(directory / name) != digest:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish(directory: Path, release: str, stage: Path, build: dict,
            pack_modules: Callable[[Path], None]) -> Path:
    """Write a complete set for ``release`` from ``stage`` and put it in place; returns its directory.

    ``pack_modules(dest)`` writes the modules tarball to ``dest``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    work = directory / f".{release}.new-{os.getpid()}"
    work.mkdir()
    names = _copy_files(stage, work)
    pack_modules(work / MODULES_FILE)
    _written(work / MODULES_FILE)
    names.append(MODULES_FILE)
    _write_text(work / BUILD_FILE, json.dumps({**build, "files": sorted(names)}, indent=2) + "\n")
    names.append(BUILD_FILE)
    _write_text(work / SUMS_FILE, "".join(f"{sha256_file(work / n)}  {n}\n" for n in sorted(names)))
    _fsync_dir(work)
    crash_point("kernel-artifacts-complete")
    final = _swap_in(work, directory / release)
    point_latest(directory, release)
    crash_point("kernel-published")
    return final


def _copy_files(stage: Path, work: Path) -> list[str]:
    names = []
    for source, name in FILES:
        if not (stage / source).exists():
            if name in OPTIONAL:
                continue
            raise OrchestratorError(f"{stage / source}: missing after the build; nothing was published")
        with open(stage / source, "rb") as src, open(work / name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _written(work / name)
        names.append(name)
    return names


def _written(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    crash_point("kernel-artifact-written")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _swap_in(work: Path, final: Path) -> Path:
    if not final.exists():
        os.rename(work, final)
    else:
        _exchange(work, final)
        crash_point("kernel-artifacts-swapped")
        shutil.rmtree(work)
    _fsync_dir(final.parent)
    return final


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux >= 3.15; ext4, xfs, btrfs, tmpfs)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OrchestratorError(f"{b}: cannot swap in the new artifacts ({os.strerror(err)}"
                                + ("; the file system has no RENAME_EXCHANGE" if err == errno.EINVAL else "") + ")")


def point_latest(directory: Path, release: str) -> None:
    tmp = directory / f".{LATEST}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(release)
    os.replace(tmp, directory / LATEST)


def remove_leftovers(directory: Path) -> list[str]:
    """Hidden sets a killed publish left behind (incomplete new ones, or replaced old ones)."""
    gone = []
    for leftover in directory.glob(".*.new-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        gone.append(leftover.name)
    for link in directory.glob(f".{LATEST}.tmp-*"):
        link.unlink()
    return gone


def prune_sets(directory: Path, keep: int) -> list[str]:
    """Remove the published sets beyond the newest ``keep`` (by their build time); ``latest``'s set always
    stays. Each set is gigabytes' worth of modules at most a few releases back: a build box that builds
    nightly must not fill up. Returns the releases removed."""
    if not directory.is_dir():
        return []
    latest = os.readlink(directory / LATEST) if (directory / LATEST).is_symlink() else None
    sets = [(read_build(d) or {}).get("built", "") for d in _set_dirs(directory)]
    ordered = sorted(zip(sets, _set_dirs(directory)), key=lambda pair: (pair[0], pair[1].name), reverse=True)
    removed = []
    for _, old in ordered[keep:]:
        if old.name != latest:
            shutil.rmtree(old)
            removed.append(old.name)
    return removed


def _set_dirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if not d.name.startswith(".") and d.is_dir() and not d.is_symlink())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
