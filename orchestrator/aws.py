"""boto3 clients from the normal credential chain, with retries, and one-line errors without secrets.

Shared by the backup stores (S3, Glacier vaults) and EC2. Nothing here knows a
setting: each caller passes the names of its own (``SettingHints``), so an
error says which setting to fix (``backup.store.bucket: ...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import boto3
import botocore.exceptions
from botocore.config import Config

from .errors import ConfigError, OrchestratorError

SECRETISH = re.compile(r"(AKIA|ASIA)[A-Z0-9]{12,}|(?i:signature|credential|token|secret)[=:]\S+")
DEFAULT_REGION = "us-east-1"
CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
                    "AccessDenied", "AccessDeniedException", "AuthFailure", "UnauthorizedOperation")


@dataclass(frozen=True)
class SettingHints:
    """The caller's setting names, for errors; None where the caller has no such setting."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    bucket: str | None = None
    vault: str | None = None


NO_HINTS = SettingHints()


def client(service: str, *, region: str | None = None, endpoint_url: str | None = None,
           profile: str | None = None, max_attempts: int = 10, max_pool_connections: int = 10,
           setting_hints: SettingHints = NO_HINTS):
    """A client for ``service`` using env, profile or instance role; retries with backoff.

    ``max_attempts`` counts every request, the first included (botocore's
    ``total_max_attempts``; its ``max_attempts`` in a ``Config`` would count
    retries only, one request more than the setting says). These are the only
    retries of a request: callers re-read an answer that arrived wrong, never
    one botocore gave up on. With an ``endpoint_url`` (MinIO, Ceph, moto) S3
    is addressed by path, which such servers expect.
    """
    try:
        session = boto3.Session(profile_name=profile or None, region_name=region or None)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(_named(setting_hints.profile, f"AWS profile {profile!r} not found")) from None
    config = Config(retries={"mode": "standard", "total_max_attempts": max_attempts},
                    region_name=region or session.region_name or DEFAULT_REGION,
                    max_pool_connections=max_pool_connections,
                    s3={"addressing_style": "path"} if endpoint_url else None)
    return session.client(service, endpoint_url=endpoint_url or None, config=config)


def scrub(text: str) -> str:
    """Remove anything shaped like a key id, signature or token from a message."""
    return SECRETISH.sub("[redacted]", text)


def aws_error(exc: Exception, what: str, setting_hints: SettingHints = NO_HINTS) -> OrchestratorError:
    """One line saying what failed and why, naming the caller's setting to fix where there is one."""
    error = _aws_error(exc, what, setting_hints)
    error.args = (" ".join(scrub(str(error)).split()),)
    return error


def _aws_error(exc: Exception, what: str, hints: SettingHints) -> OrchestratorError:
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ConfigError(f"{what}: no AWS credentials found (environment, profile or instance role)")
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_error(exc, what, hints)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        settings = " / ".join(name for name in (hints.endpoint_url, hints.region) if name)
        return OrchestratorError(f"{what}: cannot reach the endpoint" + (f" ({settings})" if settings else ""))
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OrchestratorError(f"{what}: {scrub(str(exc))}")
    return OrchestratorError(f"{what}: {type(exc).__name__}: {scrub(str(exc))}")


def _client_error(exc: botocore.exceptions.ClientError, what: str, hints: SettingHints) -> OrchestratorError:
    error = exc.response.get("Error", {})
    code = error.get("Code", "Error")
    message = error.get("Message") or ""
    code = {"404": "NotFound", "403": "AccessDenied", "301": "PermanentRedirect"}.get(code, code)
    if code == "NoSuchBucket":
        return ConfigError(_named(hints.bucket, f"{what}: bucket does not exist"))
    if code == "ResourceNotFoundException" and "vault" in message.lower():
        return ConfigError(_named(hints.vault, f"{what}: {scrub(message)}"))
    if code in CREDENTIAL_CODES:
        return OrchestratorError(f"{what}: AWS refused the credentials ({code})")
    return OrchestratorError(f"{what}: {code}" + (f": {scrub(message)}" if message else ""))


def _named(setting: str | None, text: str) -> str:
    return f"{setting}: {text}" if setting else text


__all__ = ["NO_HINTS", "SettingHints", "aws_error", "client", "scrub"]
