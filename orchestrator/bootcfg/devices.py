"""Device renames as data: sd -> xvd, xvd -> nvme through a per-host table, or UUID=/LABEL= from blkid.

A rename is a function from one device spec, exactly as written in a file (the
whole fstab field, or the whole value of ``root=``), to its new spelling, or
``None`` to leave it. Because it only ever sees a whole value, ``/dev/sda1`` can
never match inside ``/dev/sda10``. When it cannot rename a device it must not
guess: it raises ``Unmapped`` and the editor names the file and line.

Only the names the kernel hands out in discovery order are renamed: ``/dev/sdX``,
``/dev/xvdX`` and ``/dev/nvmeNnM`` (with partitions). ``/dev/mapper/*``,
``/dev/md*``, ``/dev/disk/by-*``, tags and network or pseudo sources are stable
and left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .text import BootConfigError

SD = re.compile(r"/dev/sd([a-z]+)([0-9]*)")
XVD = re.compile(r"/dev/xvd([a-z]+)([0-9]*)")
NVME = re.compile(r"/dev/nvme[0-9]+n[0-9]+(?:p[0-9]+)?")
TAGS = ("UUID", "LABEL", "PARTUUID", "PARTLABEL")
# The kernel resolves PARTUUID=/PARTLABEL= itself; UUID=/LABEL= need an initramfs to find the root.
KERNEL_NATIVE_TAGS = ("PARTUUID", "PARTLABEL")

Rename = Callable[[str], "str | None"]


class Unmapped(Exception):
    """A device the rename has no answer for; the message says why, the editor says where."""


def is_kernel_name(spec: str) -> bool:
    """True for the names whose numbering depends on the driver and discovery order."""
    return any(p.fullmatch(spec) for p in (SD, XVD, NVME))


def to_xvd(nvme_table: Mapping[str, str] | None = None) -> Rename:
    """``/dev/sda1`` -> ``/dev/xvda1`` (same letters, same partition); NVMe names back through the table.

    ``nvme_table`` is the same per-host table ``to_nvme`` takes (xvd or sd name ->
    NVMe name); it is read backwards, so a host moved to Nitro can go back to Xen.
    """
    back = _inverse(check_nvme_table(nvme_table or {}))

    def rename(spec: str) -> str | None:
        if m := SD.fullmatch(spec):
            return f"/dev/xvd{m[1]}{m[2]}"
        if NVME.fullmatch(spec):
            if spec not in back:
                raise Unmapped(f"{spec} is an NVMe name and the device table has no xvd name for it")
            return back[spec]
        return None

    return rename


def to_nvme(nvme_table: Mapping[str, str]) -> Rename:
    """``/dev/xvda1`` (or ``/dev/sda1``) -> its NVMe name, only through ``nvme_table``.

    The table is built elsewhere from facts (the EBS volume id is the NVMe serial;
    the mapping name comes from the EC2 API or ``ebsnvme-id``), never from the order
    the devices were found in, which can change from one boot to the next. A name
    the table does not have is refused rather than guessed.
    """
    table = check_nvme_table(nvme_table)

    def rename(spec: str) -> str | None:
        if SD.fullmatch(spec) or XVD.fullmatch(spec):
            if spec not in table:
                raise Unmapped(f"{spec} is not in the host's NVMe device table")
            return table[spec]
        return None

    return rename


def to_tag(blkid: Mapping[str, Mapping[str, str]], tag: str = "UUID",
           nvme_table: Mapping[str, str] | None = None) -> Rename:
    """A kernel device name -> ``UUID=...`` (or ``LABEL=``, ``PARTUUID=``) from the host's blkid.

    ``blkid`` maps each device the host sees to its tags (``parse_blkid_export``).
    A file may still name a device the way an older kernel did (``/dev/xvda1`` on a
    host that now sees ``/dev/nvme0n1p1``): ``nvme_table`` translates it first.
    A tag value that two devices share (a snapshot's volume attached to the host it
    was taken from) is refused: the kernel would mount whichever it finds first.
    """
    if tag not in TAGS:
        raise BootConfigError(f"bootcfg: tag must be one of {', '.join(TAGS)}, not {tag!r}")
    table = check_nvme_table(nvme_table or {})
    owners = _owners(blkid, tag)

    def rename(spec: str) -> str | None:
        if not is_kernel_name(spec):
            return None
        dev = spec if spec in blkid else table.get(spec, spec)
        if dev not in blkid:
            raise Unmapped(f"{spec} is not in the host's blkid output")
        value = blkid[dev].get(tag)
        if not value:
            raise Unmapped(f"{dev} has no {tag} in the host's blkid output")
        if len(owners[value]) > 1:
            raise Unmapped(f"{tag}={value} of {dev} is shared by {', '.join(sorted(owners[value]))}")
        return f"{tag}={value}"

    return rename


def _owners(blkid: Mapping[str, Mapping[str, str]], tag: str) -> dict[str, list[str]]:
    """Tag value -> the devices that carry it."""
    owners: dict[str, list[str]] = {}
    for dev, tags in blkid.items():
        if tags.get(tag):
            owners.setdefault(tags[tag], []).append(dev)
    return owners


def check_nvme_table(table: Mapping[str, str]) -> dict[str, str]:
    """The table as a dict, refused unless every key is an sd/xvd name and every value a distinct NVMe name."""
    for key, value in table.items():
        if not (SD.fullmatch(key) or XVD.fullmatch(key)):
            raise BootConfigError(f"NVMe device table: {key!r} is not an sd or xvd device name")
        if not NVME.fullmatch(value):
            raise BootConfigError(f"NVMe device table: {key} -> {value!r} is not an NVMe device name")
    values = list(table.values())
    for value in values:
        if values.count(value) > 1:
            names = sorted(k for k, v in table.items() if v == value)
            if {_as_xvd(n) for n in names} != {_as_xvd(names[0])}:
                raise BootConfigError(f"NVMe device table: {', '.join(names)} all map to {value}")
    return dict(table)


def _as_xvd(name: str) -> str:
    m = SD.fullmatch(name)
    return f"/dev/xvd{m[1]}{m[2]}" if m else name


def _inverse(table: dict[str, str]) -> dict[str, str]:
    """NVMe name -> xvd name; ``/dev/sdf`` and ``/dev/xvdf`` (one EC2 mapping, two spellings) give ``/dev/xvdf``."""
    return {nvme: _as_xvd(name) for name, nvme in table.items()}
