"""The strict layer: the whole merged config, checked once before any job starts.

Everything the settings alone can tell is found here, each problem one line
naming the file, the section, the variable or the dotted key, exit code 2
(``ConfigError``), before a lock, a report or a directory is made:

* a config file given with ``-f`` (or INVOKE_RUNTIME_CONFIG) that does not exist;
* a top-level section that is neither ours nor invoke's own (``bakup:``);
* an ``INVOKE_ORCHESTRATOR_*``, ``INVOKE_BACKUP_*``, ``INVOKE_BINHOST_*``, ``INVOKE_KERNEL_*``,
  ``INVOKE_EC2_*``, ``INVOKE_FLEET_*`` or ``INVOKE_GUARD_*``
  variable that names no setting (invoke only maps variables onto keys that
  exist, and ignores the rest without a word);
* every setting of every section: type, range, and the settings that only
  make sense together (each section class's ``check``);
* a setting that names something in another section (``binhost.clients[].host``
  a ``fleet.hosts`` entry).

What needs the machine (a directory exists, gpg can encrypt to a key) is each
job's preflight; syntax errors in the files are found while invoke reads them
(``files.StrictConfig``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from invoke.config import Config

from ..errors import ConfigError
from .sections import SECTIONS, load_section
from .validator import closest, plain

#: invoke's own top-level keys (run, runners, sudo, tasks, timeouts): always allowed
INVOKE_SECTIONS = frozenset(Config.global_defaults())


def check_config(config: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check everything; return every section of ours, validated, by name."""
    check_runtime_file(config)
    tree = plain(config)
    check_sections(tree)
    if isinstance(config, Config):
        check_environment(tree, os.environ if environ is None else environ, config._env_prefix)
    sections = {name: load_section(name, tree.get(name)) for name in SECTIONS}
    check_references(sections)
    return sections


def check_references(sections: Mapping[str, Any]) -> None:
    """Settings of one section that name something in another: ``binhost.clients[].host`` a ``fleet.hosts`` entry."""
    sections["binhost"].check_hosts(sections["fleet"].names)
    sections["guard"].check_hosts(sections["fleet"].names, sections["fleet"].groups)
    sections["logs"].check_hosts(sections["fleet"].names)


def check_runtime_file(config: Any) -> None:
    """invoke quietly runs with defaults when the ``-f`` file is missing; we refuse."""
    path = getattr(config, "_runtime_path", None)
    if path and not getattr(config, "_runtime_found", None) and not Path(path).expanduser().exists():
        raise ConfigError(f"{path}: config file not found")


def check_sections(tree: Mapping[str, Any]) -> None:
    allowed = sorted(set(SECTIONS) | INVOKE_SECTIONS)
    for name in tree:
        if name not in allowed:
            close = closest(str(name), allowed)
            raise ConfigError(f"{name}: unknown section" + (f" (did you mean {close}?)" if close else ""))


def check_environment(tree: Mapping[str, Any], environ: Mapping[str, str], prefix: str = "INVOKE_") -> None:
    """A variable for one of our sections must be one invoke maps onto a setting.

    invoke's name for ``backup.store.part_size`` is ``INVOKE_BACKUP_STORE_PART_SIZE``:
    the prefix, then the key path joined by ``_`` and upper-cased.
    """
    known: dict[str, str] = {}
    for section in SECTIONS:
        _variables(tree.get(section), [section], prefix, known)
    for variable in sorted(environ):
        section = next((s for s in SECTIONS if variable.startswith(f"{prefix}{s.upper()}_")), None)
        if section is None or variable in known:
            continue
        ours = [v for v, key in known.items() if key.split(".")[0] == section]
        close = closest(variable, ours)
        hint = f" (did you mean {close} for {known[close]}?)" if close else ""
        raise ConfigError(f"{variable}: no such setting{hint}")


def _variables(node: Any, path: list[str], prefix: str, known: dict[str, str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _variables(value, [*path, str(key)], prefix, known)
    else:
        known[prefix + "_".join(path).upper()] = ".".join(path)
