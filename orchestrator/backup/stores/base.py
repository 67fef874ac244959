"""The store interface every backend implements: put/get/list/delete plus metadata.

A store behaves like a Glacier vault: it hands back opaque archive ids, checks
tree hashes on the way in, and can list what it holds (an inventory) with each
archive's description, so a lost catalog can be rebuilt from the store alone.

Reads and retries (see ``..retry``): a backend implements ``_read_once``, one
request whose answer it checks as far as the answer allows (length, a hash sent
with it), raising ``CorruptRangeError`` when it is wrong, and never loops.
``read_range`` of a range is that one read: its caller verifies it against the
catalog's leaves and retries (``download.download_verified``).  ``read_range``
with ``end=-1`` and ``get`` read whole small archives (manifests, catalog
copies) whose callers have nothing to check them against, so they are retried
here, through the same ``verified_read`` and the store's ``backoff``.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..retry import Backoff, verified_read
from ..treehash import bytes_digests


@dataclass(frozen=True)
class ArchiveInfo:
    archive_id: str
    size: int
    sha256: str
    tree_hash: str
    description: str
    created: float


@dataclass(frozen=True)
class Retrieval:
    """Where an archive stands for reading: ``ready`` now, ``pending`` after a request, or ``absent``."""

    state: Literal["ready", "pending", "absent"]
    job_id: str | None = None
    eta_hours: float | None = None


# Typical hours from a retrieval request to readable data, by where the data sits and the tier.
RETRIEVAL_HOURS = {
    ("GLACIER", "Expedited"): 0.08, ("GLACIER", "Standard"): 5, ("GLACIER", "Bulk"): 12,
    ("DEEP_ARCHIVE", "Standard"): 12, ("DEEP_ARCHIVE", "Bulk"): 48,
    ("vault", "Expedited"): 0.08, ("vault", "Standard"): 5, ("vault", "Bulk"): 12,
}


ARCHIVE_JOURNAL_PREFIX = "archive:"


class UploadJournal(Protocol):
    """Where a store keeps a multipart upload's id so a rerun resumes it (the catalog).

    When an upload completes, a store that cannot find its archives cheaply
    saves ``archive:<archive id>`` before returning, so a crash right after the
    upload never leads to storing the part twice.
    """

    def load(self) -> str | None: ...

    def save(self, upload_id: str) -> None: ...

    def clear(self) -> None: ...


class Store(ABC):
    #: key into MIN_STORAGE_DAYS and PriceConfig (lower-cased) for retention and the cost line
    storage_key: str = "directory"
    #: how a verified read of this store is retried (``..retry``); tests inject a sleeper here
    backoff: Backoff = Backoff()

    @property
    @abstractmethod
    def name(self) -> str:
        """Stable identity recorded in the catalog, e.g. ``directory:/srv/backup#vault``."""

    @abstractmethod
    def ensure(self) -> None:
        """Create the vault/bucket area if missing; a no-op when it exists."""

    @abstractmethod
    def put(self, path: Path, *, description: str, sha256: str, tree_hash: str,
            journal: UploadJournal | None = None) -> str:
        """Store a file; the store verifies ``tree_hash`` and returns the archive id.

        A store that uploads in parts records its upload id in ``journal`` and,
        given one that holds an id, resumes that upload instead of starting over.
        """

    def read_range(self, archive_id: str, start: int, end: int, job_id: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of a readable archive (``end=-1``: to its end; ``job_id``: a finished retrieval).

        A range (``end >= 0``) is read once; ``end=-1`` is a whole-archive read
        and is retried when its answer is wrong (see the module docstring).
        """
        if end >= 0:
            return self._read_once(archive_id, start, end, job_id)
        return verified_read(lambda: self._read_once(archive_id, start, end, job_id),
                             f"{self.name}: reading archive {self._label(archive_id)}", self.backoff)

    def _label(self, archive_id: str) -> str:
        """How a message names an archive (stores with long opaque ids shorten them)."""
        return archive_id

    @abstractmethod
    def _read_once(self, archive_id: str, start: int, end: int, job_id: str | None) -> bytes:
        """One read of ``[start, end)``, checked as far as the answer allows; ``CorruptRangeError`` when wrong."""

    def get(self, archive_id: str, dest: Path) -> None:
        """Write the whole archive to ``dest`` (small archives: manifests, catalogs), retried when wrong."""
        data = self.read_range(archive_id, 0, -1)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def abandon_upload(self, journal_value: str) -> None:
        """Drop an unfinished upload a discarded part left behind (a vault multipart upload)."""

    def retrieval(self, archive_id: str, job_id: str | None = None) -> Retrieval:
        """Whether the archive can be read now; hot stores always say ready."""
        return Retrieval("ready")

    def request_retrieval(self, archive_id: str, tier: str, days: int) -> Retrieval:
        """Ask cold storage for the archive; idempotent, returns the retrieval's state."""
        return Retrieval("ready")

    @abstractmethod
    def list(self) -> list[ArchiveInfo]:
        """Everything the store holds, with descriptions (an inventory)."""

    @abstractmethod
    def delete(self, archive_id: str) -> None:
        ...

    def find(self, description: str) -> list[str]:
        """Archive ids whose description matches: adopts an upload a crash left unrecorded."""
        return [a.archive_id for a in self.list() if a.description == description]

    def put_bytes(self, data: bytes, *, description: str, journal: UploadJournal | None = None) -> str:
        sha256, tree_hash = bytes_digests(data)
        fd, tmp = tempfile.mkstemp(prefix=".geo-put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return self.put(Path(tmp), description=description, sha256=sha256, tree_hash=tree_hash, journal=journal)
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
