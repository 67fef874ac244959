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
    """Incremental tree hash over a byte stream of any length.

    The current leaf is an incremental sha256 fed with slices, so unaligned
    updates copy nothing: throughput stays that of plain sha256.
    """

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._leaf = hashlib.sha256()
        self._leaf_len = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(MIB - self._leaf_len, len(view))
            self._leaf.update(view[:take])
            self._leaf_len += take
            view = view[take:]
            if self._leaf_len == MIB:
                self.leaves.append(self._leaf.digest())
                self._leaf = hashlib.sha256()
                self._leaf_len = 0

    def all_leaves(self) -> list[bytes]:
        """Every leaf digest, the unfinished last one included."""
        return self.leaves + ([self._leaf.digest()] if self._leaf_len else [])

    def digest(self) -> bytes:
        return combine(self.all_leaves())

    def hexdigest(self) -> str:
        return self.digest().hex()


def file_digests(path: Path) -> tuple[str, str, int]:
    """(sha256, tree hash, size) of a file, reading it once."""
    sha256, tree_hash, size, _ = file_hashes(path)
    return sha256, tree_hash, size


def file_sha256(path: Path) -> str:
    """sha256 alone: what checking a local copy against the catalog needs (half the work of file_digests)."""
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


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
    leaves = tree.all_leaves()
    return sha.hexdigest(), combine(leaves).hex(), size, b"".join(leaves)


def bytes_digests(data: bytes) -> tuple[str, str]:
    tree = TreeHasher()
    tree.update(data)
    return hashlib.sha256(data).hexdigest(), tree.hexdigest()
