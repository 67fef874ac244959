"""Facts about the build system's files, read from the build box without Portage.

These let a stage say "nothing to do" without running anything in the chroot:
a fingerprint of a repository tree, the state of PKGDIR's Packages index, and
who owns PKGDIR's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..run.files import atomic_write

BINPKG_SUFFIXES = (".gpkg.tar", ".tbz2", ".xpak")


def tree_fingerprint(root: Path) -> str:
    """A digest of every path, size and mtime under ``root`` (symlinks not followed).

    rsync and git both change size or mtime of what they touch, so an equal
    fingerprint means the tree is the one we saw before. About 1 s for a full
    Gentoo tree (180,000 files).
    """
    digest = hashlib.sha256()
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(parent, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
                errors="surrogateescape"))
    return digest.hexdigest()


class FingerprintStore:
    """Fingerprints remembered between runs, one JSON file: ``{key: fingerprint}``."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def put(self, key: str, value: str) -> None:
        data = self._load()
        data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}


@dataclass(frozen=True)
class IndexState:
    """How PKGDIR/Packages compares with the binary packages on disk."""

    files: int
    listed: int
    unlisted: tuple[str, ...]  # on disk, not in the index
    gone: tuple[str, ...]  # in the index, not on disk
    changed: int  # files whose size or mtime differ from their index entry

    @property
    def current(self) -> bool:
        return self.files == self.listed and not (self.unlisted or self.gone or self.changed)

    def describe(self) -> str:
        if self.listed == 0 and self.files:
            return "no index yet"
        parts = []
        if self.unlisted:
            parts.append(f"{len(self.unlisted)} binary package(s) not in the index")
        if self.gone:
            parts.append(f"{len(self.gone)} index entries without a file")
        if self.changed:
            parts.append(f"{self.changed} file(s) changed since indexed")
        if not parts and self.files != self.listed:
            parts.append("duplicate index entries")
        return ", ".join(parts) or "current"


def binpkg_files(pkgdir: Path) -> dict[str, os.stat_result]:
    """Relative path -> stat of every binary package under ``pkgdir``."""
    found = {}
    for parent, _dirs, files in os.walk(pkgdir):
        for name in files:
            if name.endswith(BINPKG_SUFFIXES):
                path = os.path.join(parent, name)
                found[os.path.relpath(path, pkgdir)] = os.lstat(path)
    return found


def index_entries(packages_file: Path) -> list[dict[str, str]]:
    """The package entries of a Packages index, each with its ``PATH`` filled in.

    Without binpkg-multi-instance there is no PATH: the file is ``CPV.tbz2``.
    """
    entries = []
    blocks = packages_file.read_text(errors="replace").split("\n\n")
    for block in blocks[1:]:  # the first block is the header
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "CPV" in fields:
            fields.setdefault("PATH", f"{fields['CPV']}.tbz2")
            entries.append(fields)
    return entries


def index_state(pkgdir: Path) -> IndexState:
    """Compare the index with the files, entry by entry (Portage records SIZE and MTIME)."""
    files = binpkg_files(pkgdir)
    packages = pkgdir / "Packages"
    if not packages.exists():
        return IndexState(len(files), 0, tuple(sorted(files)), (), 0)
    entries = {entry["PATH"]: entry for entry in index_entries(packages)}
    changed = sum(
        1 for path, entry in entries.items() if path in files
        and (entry.get("SIZE") != str(files[path].st_size) or entry.get("MTIME") != str(int(files[path].st_mtime)))
    )
    return IndexState(
        files=len(files),
        listed=len(entries),
        unlisted=tuple(sorted(set(files) - set(entries))),
        gone=tuple(sorted(set(entries) - set(files))),
        changed=changed,
    )


def wrong_owner(pkgdir: Path, uid: int, gid: int) -> list[Path]:
    """Everything under ``pkgdir`` (itself included) not owned by uid:gid (-1 = any)."""
    wrong = []
    for parent, dirs, files in os.walk(pkgdir):
        for name in [None, *dirs, *files] if parent == str(pkgdir) else [*dirs, *files]:
            path = Path(parent) if name is None else Path(parent, name)
            st = os.lstat(path)
            if (uid != -1 and st.st_uid != uid) or (gid != -1 and st.st_gid != gid):
                wrong.append(path)
    return wrong


def unreadable_by_others(pkgdir: Path) -> int:
    """Files other users cannot read, or directories they cannot enter (quickpkg's 0640/0750)."""
    count = 0
    for parent, dirs, files in os.walk(pkgdir):
        for name in dirs:
            if not os.lstat(os.path.join(parent, name)).st_mode & stat.S_IXOTH:
                count += 1
        for name in files:
            if not os.lstat(os.path.join(parent, name)).st_mode & stat.S_IROTH:
                count += 1
    return count
