"""Typed, validated configuration on top of invoke's own config system.

invoke merges its levels (lowest to highest: the defaults registered here,
the project ``invoke.yaml``, ``INVOKE_*`` environment variables, the ``-f``
site file) into one tree; this package turns each of our sections of that
tree into frozen dataclasses.  Every problem is one line that names the file,
the variable or the dotted key and says why, before any work starts.

Rooms:

* ``validator``: the validator (``_build``/``_coerce``) and the value types
  (``Size``, ``Port``, ``Cidr``, ``Between`` ranges), ``human_size``;
* one module per section: ``general`` (``orchestrator``), ``backup``, ``binhost``, ``kernel``,
  ``ec2``, ``fleet``, ``guard`` (its images' ``syslog`` in ``syslog``), ``logs``;
  each section class checks its own cross-field rules in ``check(key)``;
* ``sections``: the registry of our sections, their defaults for invoke, loading one;
* ``strict``: the one layer that checks the whole merged config before a job;
* ``files``: invoke's files and ``INVOKE_*`` variables read strictly (``StrictConfig``).

Everything other modules import is importable from ``orchestrator.config``.
"""

from .audit import AuditConfig
from .backup import (
    LEVELS,
    MIN_STORAGE_DAYS,
    STORAGE_CLASSES,
    BackupConfig,
    CompressionConfig,
    EncryptionConfig,
    HookConfig,
    PriceConfig,
    RemoteRetentionConfig,
    StoreConfig,
)
from .binhost import BinhostConfig, ClientConfig, ServeConfig, SigningConfig
from .ec2 import Ec2Config
from .files import StrictConfig, adopt
from .fleet import FleetConfig, HostConfig
from .general import GeneralConfig
from .guard import Fail2banConfig, FirewallConfig, GuardConfig, GuardImage, Knock, KnockConfig
from .kernel import ImageConfig, KernelConfig, SourceConfig
from .logs import LogsConfig
from .sections import SECTIONS, check_store, defaults, from_invoke, load_section
from .strict import check_config
from .syslog import SyslogConfig
from .validator import (
    MAX_WORKERS,
    MIB,
    SIZE_UNITS,
    Between,
    Cidr,
    Port,
    Size,
    TcpPort,
    _build,
    _coerce,
    human_size,
    plain,
)

__all__ = [
    "AuditConfig", "LEVELS", "MAX_WORKERS", "MIB", "MIN_STORAGE_DAYS", "SECTIONS", "SIZE_UNITS", "STORAGE_CLASSES",
    "BackupConfig", "Between", "BinhostConfig", "Cidr", "ClientConfig", "CompressionConfig", "Ec2Config",
    "EncryptionConfig", "Fail2banConfig", "FirewallConfig", "FleetConfig", "GeneralConfig", "GuardConfig", "GuardImage", "HookConfig", "HostConfig", "ImageConfig", "KernelConfig", "Knock", "KnockConfig", "LogsConfig",
    "Port", "PriceConfig", "RemoteRetentionConfig", "ServeConfig", "SigningConfig", "Size", "SourceConfig",
    "StoreConfig", "StrictConfig", "SyslogConfig", "TcpPort", "_build", "_coerce", "adopt", "check_config", "check_store",
    "defaults", "from_invoke", "human_size", "load_section", "plain",
]
