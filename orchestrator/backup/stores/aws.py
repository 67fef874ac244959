"""boto3 clients from the normal credential chain, with retries, and errors without secrets."""

from __future__ import annotations

import re

import boto3
import botocore.exceptions
from botocore.config import Config

from ...config import StoreConfig
from ...errors import ConfigError, OrchestratorError

SECRETISH = re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,}|(?i:signature|credential|token|secret)[=:]\S+")


def client(service: str, cfg: StoreConfig):
    """A client for ``service`` using env, profile or instance role; retries with backoff.

    ``backup.store.max_attempts`` counts every request, the first included
    (botocore's ``total_max_attempts``; its ``max_attempts`` in a ``Config``
    would count retries only, one request more than the setting says).  These
    are the only retries of a request: ``..retry`` re-reads an answer that
    arrived wrong, never one botocore gave up on.
    """
    try:
        session = boto3.Session(profile_name=cfg.profile or None, region_name=cfg.region or None)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f"backup.store.profile: AWS profile {cfg.profile!r} not found") from None
    config = Config(retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
                    region_name=cfg.region or session.region_name or "us-east-1",
                    max_pool_connections=max(10, cfg.upload_workers * 2),
                    s3={"addressing_style": "path"} if cfg.endpoint_url else None)
    return session.client(service, endpoint_url=cfg.endpoint_url or None, config=config)


def scrub(text: str) -> str:
    """Remove anything shaped like a key id, signature or token from a message."""
    return SECRETISH.sub("[redacted]", text)


def aws_error(exc: Exception, what: str) -> OrchestratorError:
    """One line saying what failed and why, naming the setting to fix where there is one."""
    error = _aws_error(exc, what)
    error.args = (" ".join(scrub(str(error)).split()),)
    return error


def _aws_error(exc: Exception, what: str) -> OrchestratorError:
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ConfigError(f"{what}: no AWS credentials found (environment, profile or instance role)")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        message = error.get("Message") or ""
        code = {"404": "NotFound", "403": "AccessDenied", "301": "PermanentRedirect"}.get(code, code)
        if code in ("NoSuchBucket",):
            return ConfigError(f"backup.store.bucket: {what}: bucket does not exist")
        if code in ("ResourceNotFoundException",) and "vault" in message.lower():
            return ConfigError(f"backup.store.vault: {what}: {scrub(message)}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                    "ExpiredToken", "AccessDenied", "AccessDeniedException"):
            return OrchestratorError(f"{what}: AWS refused the credentials ({code})")
        return OrchestratorError(f"{what}: {code}" + (f": {scrub(message)}" if message else ""))
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return OrchestratorError(f"{what}: cannot reach the endpoint (backup.store.endpoint_url / region)")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OrchestratorError(f"{what}: {scrub(str(exc))}")
    return OrchestratorError(f"{what}: {type(exc).__name__}: {scrub(str(exc))}")
