"""The embedded default store: a directory (local disk or NAS mount) that acts like a vault."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

from ...errors import OrchestratorError
from ..retry import Backoff
from ..treehash import file_digests
from .base import ArchiveInfo, Store


class DirectoryStore(Store):
    """``<path>/<vault>/archives/<id>`` plus ``<id>.json`` holding the archive's metadata.

    An upload lands in ``incoming/`` first and is renamed into place only after
    its tree hash matched, so a crash never leaves a half archive that looks whole.

    A verified read that came back wrong is read again at once: backing off
    gives a remote service or a network time to recover, and a local (or NAS)
    file system that returned bad bytes is not helped by waiting.
    """

    backoff = Backoff(first=0.0)

    def __init__(self, path: Path, vault: str):
        self.root = Path(path) / vault
        self.vault = vault

    @property
    def name(self) -> str:
        return f"directory:{self.root.parent}#{self.vault}"

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    def ensure(self) -> None:
        try:
            (self.root / "incoming").mkdir(parents=True, exist_ok=True)
            self.archives.mkdir(exist_ok=True)
        except OSError as exc:
            raise OrchestratorError(f"backup.store.path: cannot create {self.root}: {exc.strerror}") from None
        self._sweep_incoming()

    def _sweep_incoming(self) -> None:
        """Uploads a crash interrupted never became archives; drop them."""
        for leftover in (self.root / "incoming").iterdir():
            leftover.unlink(missing_ok=True)

    def put(self, path: Path, *, description: str, sha256: str, tree_hash: str, journal=None) -> str:
        archive_id = secrets.token_urlsafe(48)
        incoming = self.root / "incoming" / archive_id
        shutil.copyfile(path, incoming)
        with open(incoming, "rb") as fh:
            os.fsync(fh.fileno())
        got_sha, got_tree, size = file_digests(incoming)
        if got_tree != tree_hash or got_sha != sha256:
            incoming.unlink()
            raise OrchestratorError(f"{self.name}: upload of {path.name} arrived corrupted (tree hash mismatch)")
        meta = {"size": size, "sha256": sha256, "tree_hash": tree_hash, "description": description, "created": time.time()}
        sidecar = self.archives / f"{archive_id}.json.tmp"
        sidecar.write_text(json.dumps(meta))
        os.replace(incoming, self.archives / archive_id)
        os.replace(sidecar, self.archives / f"{archive_id}.json")
        return archive_id

    def _label(self, archive_id: str) -> str:
        return archive_id[:16] + "..."

    def _existing(self, archive_id: str) -> Path:
        if not (self.archives / f"{archive_id}.json").exists():
            raise OrchestratorError(f"{self.name}: archive {archive_id[:16]}... is not in the store")
        return self.archives / archive_id

    def get(self, archive_id: str, dest: Path) -> None:
        source = self._existing(archive_id)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    def _read_once(self, archive_id: str, start: int, end: int, job_id: str | None) -> bytes:
        with open(self._existing(archive_id), "rb") as fh:
            fh.seek(start)
            return fh.read() if end < 0 else fh.read(end - start)

    def list(self) -> list[ArchiveInfo]:
        found = []
        for sidecar in sorted(self.archives.glob("*.json")):
            meta = json.loads(sidecar.read_text())
            found.append(ArchiveInfo(archive_id=sidecar.name[: -len(".json")], **meta))
        return found

    def delete(self, archive_id: str) -> None:
        (self.archives / f"{archive_id}.json").unlink(missing_ok=True)
        (self.archives / archive_id).unlink(missing_ok=True)
