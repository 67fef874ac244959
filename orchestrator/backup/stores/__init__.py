"""Backends a backup set is stored in; chosen by ``backup.store.type``."""

from ...config import StoreConfig
from .base import RETRIEVAL_HOURS, ArchiveInfo, Retrieval, Store, UploadJournal
from .directory import DirectoryStore


def open_store(cfg: StoreConfig) -> Store:
    if cfg.type == "directory":
        return DirectoryStore(cfg.path, cfg.vault)
    raise AssertionError(f"unhandled store type {cfg.type}")


__all__ = ["RETRIEVAL_HOURS", "ArchiveInfo", "DirectoryStore", "Retrieval", "Store", "UploadJournal", "open_store"]
