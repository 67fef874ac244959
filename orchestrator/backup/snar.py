"""GNU tar's listed-incremental snapshot files, and the one edit we make to them.

GNU tar notices a renamed directory by its device and inode number and records
the rename in the archive ("rename A to B") instead of dumping B again.  Tar
itself cannot apply such a record when B already exists at restore time
(``rm -rf B && mv A B``: "Cannot rename A to B: Directory not empty"), and a new
directory that reuses a deleted directory's inode is taken for a rename of it.

So before each incremental we look for directories whose inode the parent's
snapshot knows under another name, and give those snapshot entries an inode no
directory has.  Tar then dumps the directory under its new name in full: an
archive that holds no rename records restores the same way with ``inv restore``
and with stock ``tar -x`` by hand.

The format (version 2) is documented in the GNU tar manual, "Format of the
incremental snapshot file": a header line, then NUL-terminated fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..run.files import atomic_write

MAGIC = b"GNU tar-"
NO_INODE = b"0"  # no directory on a Linux file system has inode 0


class SnapshotFormatError(ValueError):
    pass


@dataclass
class DirRecord:
    nfs: bytes
    mtime_s: bytes
    mtime_ns: bytes
    dev: bytes
    ino: bytes
    name: bytes
    dumpdir: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return int(self.dev), int(self.ino)


@dataclass
class Snapshot:
    header: bytes
    stamp: list[bytes]
    dirs: list[DirRecord]

    def dump(self) -> bytes:
        out = [self.header + b"\n", b"\0".join(self.stamp) + b"\0"]
        for d in self.dirs:
            fields = [d.nfs, d.mtime_s, d.mtime_ns, d.dev, d.ino, d.name]
            out.append(b"\0".join(fields) + b"\0" + b"".join(e + b"\0" for e in d.dumpdir) + b"\0\0")
        return b"".join(out)


def parse(data: bytes) -> Snapshot:
    header, newline, rest = data.partition(b"\n")
    if not newline or not header.startswith(MAGIC) or not header.endswith(b"-2"):
        raise SnapshotFormatError(f"not a GNU tar format-2 snapshot (header {header[:32]!r})")
    tokens = rest.split(b"\0")
    if len(tokens) < 3:
        raise SnapshotFormatError("snapshot ends inside its time stamp")
    dirs, i = [], 2
    while i < len(tokens) and tokens[i] != b"":
        if i + 6 > len(tokens):
            raise SnapshotFormatError("snapshot ends inside a directory record")
        record = DirRecord(*tokens[i:i + 6])
        i += 6
        while i < len(tokens) and tokens[i] != b"":
            record.dumpdir.append(tokens[i])
            i += 1
        i += 2
        dirs.append(record)
    return Snapshot(header, tokens[:2], dirs)


def directory_inodes(root: Path, one_file_system: bool) -> dict[tuple[int, int], bytes]:
    """(device, inode) -> tar member name (relative to ``/``) of every directory under ``root``."""
    found: dict[tuple[int, int], bytes] = {}
    top = os.fsencode(root)
    root_dev = os.lstat(top).st_dev
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
            entries = list(os.scandir(path))
        except OSError:
            continue  # vanished or unreadable: tar will say so itself
        found[(st.st_dev, st.st_ino)] = os.path.relpath(path, b"/")
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if one_file_system and entry.stat(follow_symlinks=False).st_dev != root_dev:
                    continue
                stack.append(entry.path)
    return found


def neutralize_renames(snapshot: Path, root: Path, one_file_system: bool = True) -> list[str]:
    """Rewrite ``snapshot`` so tar sees no directory under ``root`` as renamed.

    Returns the old names whose entries were changed (their directories, now
    under a new name, are dumped in full).
    """
    snap = parse(snapshot.read_bytes())
    current = directory_inodes(root, one_file_system)
    changed = []
    for record in snap.dirs:
        now = current.get(record.key)
        if now is not None and now != record.name:
            record.ino = NO_INODE
            changed.append(os.fsdecode(record.name))
    if changed:
        atomic_write(snapshot, snap.dump())
    return changed
