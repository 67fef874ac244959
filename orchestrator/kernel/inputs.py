"""What a kernel is built from, read on the build box: the image's config files, and the fingerprint.

The fingerprint is what makes a second build of the same thing a no-op: the
sources' version, the text of the config files (or the make target that is the
base), and the settings that change what is built. The job count is not in it
(``-j2`` and ``-j8`` build the same kernel), nor the EC2 check's settings
(the check is run again on the stored config instead).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..buildenv import SCRIPTS_DIR
from ..config import ImageConfig, KernelConfig
from ..errors import ConfigError
from .ec2check import parse_config

FORMAT = 1  # bumped when what a build produces changes, so older artifacts are rebuilt once


@dataclass(frozen=True)
class ConfigFile:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """The image's files from ``kernel.config_dir/<image>/``: a full config and/or fragments."""

    config: ConfigFile | None
    fragments: tuple[ConfigFile, ...]

    def files(self) -> list[ConfigFile]:
        return ([self.config] if self.config else []) + list(self.fragments)


def config_dir(kcfg: KernelConfig) -> Path:
    return kcfg.config_dir or SCRIPTS_DIR / "kernel"


def read_inputs(kcfg: KernelConfig, image: ImageConfig, index: int) -> Inputs:
    """Every file the image names, read now: a missing one fails before any session opens."""
    base = config_dir(kcfg) / image.name
    key = f"kernel.images[{index}]"
    config = _read(base / image.config, f"{key}.config") if image.config else None
    fragments = tuple(_read(base / name, f"{key}.fragments[{i}]") for i, name in enumerate(image.fragments))
    return Inputs(config, fragments)


def _read(path: Path, key: str) -> ConfigFile:
    try:
        return ConfigFile(path.name, path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None


def fingerprint(image: ImageConfig, sources: dict, inputs: Inputs) -> str:
    """sha256 of everything that decides what gets built (see the module's docstring)."""
    data = {
        "format": FORMAT,
        "sources": sources,
        "config": inputs.config.sha256 if inputs.config else None,
        "base": None if inputs.config or image.builder == "portage" else image.base,
        "fragments": [[f.name, f.sha256] for f in inputs.fragments],
        "builder": image.builder,
        "initramfs": image.initramfs,
        "drivers": image.drivers if image.initramfs == "dracut" else [],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def unmet(fragments: tuple[ConfigFile, ...], final: str) -> list[str]:
    """Values a fragment asks for that the final .config does not have (``olddefconfig`` drops a
    symbol whose dependencies are off, without a word; merge_config.sh -m does not check)."""
    have = parse_config(final)
    found = []
    for fragment in fragments:
        for symbol, value in parse_config(fragment.text).items():
            if have.get(symbol) != value:
                got = f"{symbol}={have[symbol]}" if symbol in have else "it unset"
                found.append(f"{fragment.name} asks for {symbol}={value}, the final .config has {got}")
    return found
