"""``blkid -o export`` output (the host's facts) as ``{device: {tag: value}}``."""

from __future__ import annotations

import re

from .text import refuse, split_lines

KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_blkid_export(text: str, name: str = "blkid -o export") -> dict[str, dict[str, str]]:
    """One dict per device, keyed by ``DEVNAME``; blkid's backslash escapes undone.

    blkid prints one ``KEY=value`` per line, a blank line between devices, and
    escapes blanks, quotes, ``$`` and backslashes in values with a backslash
    (``LABEL=My\\ Disk``). A device without DEVNAME, a line without ``=`` or a
    device listed twice is refused with its line.
    """
    devices: dict[str, dict[str, str]] = {}
    block: dict[str, str] = {}
    start = 0
    for line in split_lines(text) + [None]:
        if line is None or not line.body.strip():
            if block:
                _add_device(devices, block, name, start)
            block = {}
            continue
        key, sep, value = line.body.partition("=")
        if not sep or not KEY.fullmatch(key):
            raise refuse(name, line.number, f"expected KEY=value, got {line.body!r}")
        if key in block:
            raise refuse(name, line.number, f"{key} given twice for one device")
        if not block:
            start = line.number
        block[key] = re.sub(r"\\(.)", r"\1", value)
    return devices


def _add_device(devices: dict, block: dict[str, str], name: str, start: int) -> None:
    dev = block.pop("DEVNAME", None)
    if not dev:
        raise refuse(name, start, "a device without DEVNAME")
    if dev in devices:
        raise refuse(name, start, f"{dev} is listed twice")
    devices[dev] = block
