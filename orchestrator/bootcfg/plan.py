"""What ``inv bootcfg --to uuid|xvd|nvme`` computes: the new text of every boot config file that changes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import default_grub, devices, fstab, grubcfg, menulst
from .blkid import parse_blkid_export
from .devices import Rename
from .text import BootConfigError

TARGETS = ("uuid", "xvd", "nvme")
Editor = Callable[[str, str, Rename], str]
EDITORS: tuple[tuple[re.Pattern, Editor], ...] = (
    (re.compile(r"/etc/fstab"), fstab.rename_devices),
    (re.compile(r"/boot/grub/(menu\.lst|grub\.conf)"), menulst.rename_devices),
    (re.compile(r"/etc/default/grub(\.d/[^/]+\.cfg)?"), default_grub.rename_cmdline_devices),
    (re.compile(r"/boot/grub2?/grub\.cfg"), grubcfg.rename_devices),
)


@dataclass(frozen=True)
class BootFacts:
    """What the host says about its disks, gathered before anything is planned.

    ``blkid``: ``{device: {"UUID": ..., "LABEL": ..., "TYPE": ...}}`` from
    ``blkid -o export``. ``nvme``: the per-host table from xvd/sd names (as the
    files write them) to NVMe names, built from EBS volume ids and mapping names.
    ``tag``: what ``--to uuid`` writes (UUID, LABEL, PARTUUID or PARTLABEL).
    """

    blkid: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    nvme: Mapping[str, str] = field(default_factory=dict)
    tag: str = "UUID"

    @classmethod
    def from_outputs(cls, blkid_export: str = "", nvme: Mapping[str, str] | None = None,
                     tag: str = "UUID", where: str = "blkid -o export") -> "BootFacts":
        return cls(parse_blkid_export(blkid_export, where), dict(nvme or {}), tag)


def renamer(facts: BootFacts, to: str) -> Rename:
    """The device rename ``--to`` asks for, built from the host's facts."""
    if to == "xvd":
        return devices.to_xvd(facts.nvme)
    if to == "nvme":
        return devices.to_nvme(facts.nvme)
    if to == "uuid":
        return devices.to_tag(facts.blkid, facts.tag, facts.nvme)
    raise BootConfigError(f"bootcfg: --to must be one of {', '.join(TARGETS)}, not {to!r}")


def editor_for(path: str) -> Editor:
    for pattern, editor in EDITORS:
        if pattern.fullmatch(path):
            return editor
    raise BootConfigError(f"bootcfg: no rule for {path} (known: fstab, menu.lst/grub.conf, default/grub, grub.cfg)")


def plan_bootcfg(files: Mapping[str, str], facts: BootFacts, to: str, where: str = "") -> dict[str, str]:
    """``{path: new text}`` for each of ``files`` (path on the host -> current text) that must change.

    Pure: the caller reads the files and the facts, validates each new text
    (``validate.validator_for``) and replaces the files. A file that needs no
    change is absent from the result; an error names ``where:path:line``.
    """
    rename = renamer(facts, to)
    planned = {}
    for path, text in files.items():
        new = editor_for(path)(text, f"{where}:{path}" if where else path, rename)
        if new != text:
            planned[path] = new
    return planned
