"""How the AWS stores reach AWS: ``backup.store``'s settings handed to the shared ``orchestrator.aws``."""

from __future__ import annotations

from ... import aws
from ...config import StoreConfig
from ...errors import OrchestratorError

STORE_SETTINGS = aws.SettingHints(profile="backup.store.profile", region="backup.store.region",
                                  endpoint_url="backup.store.endpoint_url", bucket="backup.store.bucket",
                                  vault="backup.store.vault")


def client(service: str, cfg: StoreConfig):
    """A client for ``service`` (``s3``, ``glacier``); enough pooled connections for every upload worker."""
    return aws.client(service, region=cfg.region, endpoint_url=cfg.endpoint_url, profile=cfg.profile,
                      max_attempts=cfg.max_attempts, max_pool_connections=max(10, cfg.upload_workers * 2),
                      setting_hints=STORE_SETTINGS)


def store_error(exc: Exception, what: str) -> OrchestratorError:
    """One line, no secrets, naming the ``backup.store`` setting to fix where there is one."""
    return aws.aws_error(exc, what, STORE_SETTINGS)
