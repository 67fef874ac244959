"""SHA-256 tree hashes as Amazon Glacier defines them, plus a plain SHA-256, in one pass.

The tree hash is the root of a binary tree over the SHA-256 digests of each
1 MiB slice; an odd node is promoted unchanged to the next level.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1024 * 1024
READ_SIZE = 8 * MIB


def combine(leaves: list[bytes]) -> bytes:
    """Fold leaf digests into the root digest."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    while len(level) > 1:
        nxt = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class TreeHasher:
    """Incremental tree hash over a byte stream of any length."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._pending = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._pending:
            take = min(MIB - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == MIB:
                self.leaves.append(hashlib.sha256(self._pending).digest())
                self._pending.clear()
        full = len(view) - len(view) % MIB
        for offset in range(0, full, MIB):
            self.leaves.append(hashlib.sha256(view[offset : offset + MIB]).digest())
        self._pending += view[full:]

    def digest(self) -> bytes:
        leaves = self.leaves + ([hashlib.sha256(self._pending).digest()] if self._pending else [])
        return combine(leaves)

    def hexdigest(self) -> str:
        return self.digest().hex()


def file_digests(path: Path) -> tuple[str, str, int]:
    """(sha256, tree hash, size) of a file, reading it once."""
    sha256, tree_hash, size, _ = file_hashes(path)
    return sha256, tree_hash, size


def file_hashes(path: Path) -> tuple[str, str, int, bytes]:
    """(sha256, tree hash, size, leaf digests concatenated): the leaves verify any 1 MiB-aligned range."""
    sha = hashlib.sha256()
    tree = TreeHasher()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            chunk = view[:n]
            sha.update(chunk)
            tree.update(chunk)
            size += n
    leaves = tree.leaves + ([hashlib.sha256(tree._pending).digest()] if tree._pending else [])
    return sha.hexdigest(), tree.hexdigest(), size, b"".join(leaves)


def bytes_digests(data: bytes) -> tuple[str, str]:
    tree = TreeHasher()
    tree.update(data)
    return hashlib.sha256(data).hexdigest(), tree.hexdigest()
