"""Build awkward trees and compare trees by meaning: content, type, mode, owner, mtime, links, xattrs."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path


def make_awkward_tree(root: Path, big_size: int = 3 * 1024 * 1024) -> Path:
    """Names with spaces, newlines and non-UTF-8 bytes; links; sparse, empty and multi-chunk files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "with space.txt").write_text("space\n")
    (root / "new\nline").write_text("newline in name\n")
    bad = os.path.join(os.fsencode(root), b"bad\xffname\xfe.bin")
    with open(bad, "wb") as fh:
        fh.write(b"non-utf8 name\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "file").write_text("deep\n")
    os.chmod(root / "sub", 0o750)
    (root / "big.bin").write_bytes(os.urandom(big_size))
    with open(root / "sparse.img", "wb") as fh:
        fh.seek(40 * 1024 * 1024)
        fh.write(b"end")
        fh.seek(1024)
        fh.write(b"start")
    os.symlink("with space.txt", root / "rel-link")
    os.symlink("/nonexistent/target", root / "dangling-link")
    os.link(root / "with space.txt", root / "hard link")
    owned = root / "owned"
    owned.write_text("owned by nobody we know\n")
    os.chown(owned, 12345, 23456)
    os.chmod(owned, 0o640)
    suid = root / "suid-tool"
    suid.write_text("#!/bin/sh\n")
    os.chmod(suid, 0o4755)
    os.setxattr(root / "empty", "user.note", b"xattr value")
    subprocess.run(["setfacl", "-m", "u:12345:r", str(root / "big.bin")], check=True)
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root), topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(1_600_000_000_000_000_000,) * 2, follow_symlinks=False)
    return root


def fingerprint(root: Path) -> dict:
    """Everything a faithful restore must reproduce, keyed by relative path (bytes)."""
    base = os.fsencode(root)
    entries = {}
    inode_groups: dict[tuple, list] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            entry = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "owner": (st.st_uid, st.st_gid),
                "mtime": None if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) else int(st.st_mtime),
                "xattrs": _xattrs(path, st),
                "acl": _acl(path, st),
            }
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = _sha256(path)
                entry["size"] = st.st_size
                if st.st_nlink > 1:
                    inode_groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            entries[rel] = entry
    entries[b"<hardlinks>"] = sorted(sorted(group) for group in inode_groups.values())
    return entries


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _xattrs(path: bytes, st) -> dict:
    if stat.S_ISLNK(st.st_mode):
        return {}
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}


def _acl(path: bytes, st) -> str:
    if stat.S_ISLNK(st.st_mode):
        return ""
    out = subprocess.run(["getfacl", "-c", "-p", os.fsdecode(path)], capture_output=True, text=True)
    return out.stdout


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512
