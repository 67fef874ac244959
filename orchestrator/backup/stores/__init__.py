"""Backends a backup set is stored in; chosen by ``backup.store.type``."""

from ...config import StoreConfig
from .base import RETRIEVAL_HOURS, ArchiveInfo, Retrieval, Store, UploadJournal
from .directory import DirectoryStore


def open_store(cfg: StoreConfig) -> Store:
    """The store ``cfg`` names; its settings were checked when the section was loaded (``StoreConfig.check``)."""
    if cfg.type == "directory":
        return DirectoryStore(cfg.path, cfg.vault)
    if cfg.type == "s3":
        from .s3 import S3Store

        return S3Store.from_config(cfg)
    if cfg.type == "glacier":
        from .glacier import GlacierVaultStore

        return GlacierVaultStore.from_config(cfg)
    raise AssertionError(f"unhandled store type {cfg.type}")


__all__ = ["RETRIEVAL_HOURS", "ArchiveInfo", "DirectoryStore", "Retrieval", "Store", "UploadJournal", "open_store"]
