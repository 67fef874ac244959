"""Which binary packages the prune stage removes (a pure policy), and removing them.

``chroot/binhost-binpkgs`` asks the build system's Portage about every binary
package in PKGDIR: its package slot, Portage's order within the slot (version,
then BUILD_TIME), whether it is the build of the installed package, and whether
its version still has an ebuild in a published tree. From that, per package slot:

* the build of the installed package (same version, same BUILD_TIME) is kept;
* of the builds older than it (superseded versions and earlier rebuilds), the
  newest ``keep`` are kept, for a rollback; the others are removed;
* any other build (newer than the installed one, or of a slot that is not
  installed) is kept while its version has an ebuild in a published tree, and
  removed once it has none.

The policy is a pure function of that listing; the I/O around it is small.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import OrchestratorError
from .tree import BINPKG_SUFFIXES

# A detached signature beside a binary package (gpkg signatures live inside the .gpkg.tar).
SIGNATURE_SUFFIXES = (".sig", ".asc")


@dataclass(frozen=True)
class Removal:
    path: str  # relative to PKGDIR
    cpv: str
    why: str


def plan(slots: Iterable[dict], keep: int) -> list[Removal]:
    """The builds to remove, from ``binhost-binpkgs --json``'s ``slots`` (each slot's builds newest first)."""
    removals = []
    for slot in slots:
        older = [b for b in slot["builds"] if b["state"] == "older"]
        for build in older[keep:]:
            removals.append(Removal(build["path"], build["cpv"], f"superseded by {slot['installed']}"))
        for build in slot["builds"]:
            if build["state"] in ("newer", "-") and not build["in_tree"]:
                why = "no ebuild left, not installed" if build["state"] == "-" else \
                    f"no ebuild left, newer than the installed {slot['installed']}"
                removals.append(Removal(build["path"], build["cpv"], why))
    return removals


@dataclass(frozen=True)
class Doomed:
    """One removal on the build box: the package file and its detached signatures."""

    removal: Removal
    file: Path
    signatures: tuple[Path, ...]
    size: int  # bytes freed, signatures included


def locate(pkgdir: Path, removals: Iterable[Removal]) -> list[Doomed]:
    """Map each removal to its files under ``pkgdir``; refuse anything that is not a binary package there."""
    root = Path(os.path.realpath(pkgdir))
    found = []
    for removal in removals:
        relative = PurePosixPath(removal.path)
        file = pkgdir / relative
        inside = Path(os.path.realpath(file.parent))
        if (relative.is_absolute() or ".." in relative.parts or not removal.path.endswith(BINPKG_SUFFIXES)
                or (inside != root and root not in inside.parents) or file.is_symlink() or not file.is_file()):
            raise OrchestratorError(f"binhost-binpkgs named {removal.path!r}, which is not a binary package file "
                                    f"in {pkgdir}; nothing was removed")
        signatures = tuple(s for s in (file.with_name(file.name + suffix) for suffix in SIGNATURE_SUFFIXES)
                           if s.is_file() and not s.is_symlink())
        size = file.stat().st_size + sum(s.stat().st_size for s in signatures)
        found.append(Doomed(removal, file, signatures, size))
    return found


def remove(doomed: Doomed, pkgdir: Path) -> None:
    """The package first, then its signatures: a kill in between leaves a signature, never an unsigned package.

    Directories the removal leaves empty (``<category>/<name>/`` of the multi-instance layout) go too.
    """
    doomed.file.unlink()
    for signature in doomed.signatures:
        signature.unlink(missing_ok=True)
    parent = doomed.file.parent
    while parent != pkgdir and pkgdir in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty
            break
        parent = parent.parent
