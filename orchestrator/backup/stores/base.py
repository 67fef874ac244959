"""The store interface every backend implements: put/get/list/delete plus metadata.

A store behaves like a Glacier vault: it hands back opaque archive ids, checks
tree hashes on the way in, and can list what it holds (an inventory) with each
archive's description, so a lost catalog can be rebuilt from the store alone.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ..treehash import bytes_digests


@dataclass(frozen=True)
class ArchiveInfo:
    archive_id: str
    size: int
    sha256: str
    tree_hash: str
    description: str
    created: float


class Store(ABC):
    @property
    @abstractmethod
    def name(self) -> str:
        """Stable identity recorded in the catalog, e.g. ``directory:/srv/backup#vault``."""

    @abstractmethod
    def ensure(self) -> None:
        """Create the vault/bucket area if missing; a no-op when it exists."""

    @abstractmethod
    def put(self, path: Path, *, description: str, sha256: str, tree_hash: str) -> str:
        """Store a file; the store verifies ``tree_hash`` and returns the archive id."""

    @abstractmethod
    def get(self, archive_id: str, dest: Path) -> None:
        """Write the archive's bytes to ``dest`` (the caller verifies them)."""

    @abstractmethod
    def list(self) -> list[ArchiveInfo]:
        """Everything the store holds, with descriptions (an inventory)."""

    @abstractmethod
    def delete(self, archive_id: str) -> None:
        ...

    def find(self, description: str) -> list[str]:
        """Archive ids whose description matches: adopts an upload a crash left unrecorded."""
        return [a.archive_id for a in self.list() if a.description == description]

    def put_bytes(self, data: bytes, *, description: str) -> str:
        sha256, tree_hash = bytes_digests(data)
        fd, tmp = tempfile.mkstemp(prefix=".geo-put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return self.put(Path(tmp), description=description, sha256=sha256, tree_hash=tree_hash)
        finally:
            os.unlink(tmp)

    def get_bytes(self, archive_id: str) -> bytes:
        fd, tmp = tempfile.mkstemp(prefix=".geo-get-")
        os.close(fd)
        try:
            self.get(archive_id, Path(tmp))
            return Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)
