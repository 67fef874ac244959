"""The I/O around the pure boot config editors: read the files and facts from a target, plan, validate, replace.

``apply_bootcfg`` is ``inv bootcfg`` and deploy's ``kernel.deploy.root_to``. The
files are read under the host's system root; the facts come from the host:
``blkid -o export`` (on a live root only: under another root, the disks blkid sees
are not that root's, so ``--to uuid`` is refused there), and the NVMe table from
``/sys/class/nvme/*/serial`` (an EBS volume's serial is its id without the dash)
joined with the mapping names of the instance's ``BlockDeviceMappings`` (given as
``{volume id: device name}`` by the caller, from the EC2 API).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from ..errors import OrchestratorError
from .plan import BootFacts, plan_bootcfg
from .text import BootConfigError
from .validate import validator_for

BOOT_FILES = ("/etc/fstab", "/boot/grub/menu.lst", "/boot/grub/grub.conf", "/etc/default/grub",
              "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
EBS_SERIAL = re.compile(r"vol([0-9a-f]{8,17})")


def _at(root: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(root, path.lstrip("/")))


def read_boot_files(target, root: str) -> dict[str, str]:
    """``{path as the host names it: text}`` of the boot config files present under ``root``."""
    files = {}
    for path in BOOT_FILES:
        text = target.read_file(_at(root, path))
        if text is not None:
            files[path] = text
    return files


def nvme_serials(target, root: str) -> dict[str, str]:
    """``{"/dev/nvme0n1": "vol-0abc..."}`` from ``<root>/sys/class/nvme/*/serial`` (EBS volumes only)."""
    listing = target.run(["sh", "-c", 'for f in "$1"/*/serial; do [ -r "$f" ] && echo "$f $(cat "$f")"; done',
                          "sh", _at(root, "/sys/class/nvme")], check=False, mutates=False)
    found = {}
    for line in listing.stdout.splitlines():
        path, _, serial = line.partition(" ")
        m = EBS_SERIAL.fullmatch(serial.strip())
        if m:
            controller = posixpath.basename(posixpath.dirname(path))
            found[f"/dev/{controller}n1"] = f"vol-{m[1]}"
    return found


def nvme_table(serials: Mapping[str, str], mappings: Mapping[str, str]) -> dict[str, str]:
    """``{"/dev/xvdf": "/dev/nvme1n1"}``: each NVMe disk under its EC2 mapping name, found by volume id."""
    table = {}
    for nvme, volume in serials.items():
        name = mappings.get(volume)
        if name:
            table[name if name.startswith("/dev/") else f"/dev/{name}"] = nvme
    return table


def gather_facts(target, root: str, to: str, mappings: Mapping[str, str] | None = None,
                 serials: Mapping[str, str] | None = None) -> BootFacts:
    """The facts ``--to`` needs: blkid for ``uuid``, the NVMe table for ``nvme`` (and to translate old names).

    ``serials`` (``{"/dev/nvme0n1": "vol-..."}``): the NVMe volumes when the caller has them already
    (deploy, from ``fleet.facts``); else they are read from the host here.
    """
    blkid = ""
    if to == "uuid":
        if posixpath.normpath(root) != "/":
            raise BootConfigError(f"bootcfg --to uuid under {root}: blkid there describes this machine's disks, "
                                  "not that root's; run it on the host itself")
        blkid = target.run(["blkid", "-o", "export"], mutates=False).stdout
    table = nvme_table(nvme_serials(target, root) if serials is None else serials, mappings or {})
    return BootFacts.from_outputs(blkid, table)


def apply_bootcfg(run, target, host, to: str, mappings: Mapping[str, str] | None = None, *,
                  serials: Mapping[str, str] | None = None) -> list[str]:
    """Plan ``--to`` over the host's boot files, validate each new text, replace it (previous kept).

    ``host`` has ``root`` (a ``HostRoot`` or anything with that attribute).
    Returns the paths that changed (under ``--dry``: would change, diffs printed).
    """
    root = getattr(host, "root", "/")
    files = read_boot_files(target, root)
    if not files:
        raise OrchestratorError(f"{target.describe()}: no boot config under {root} (looked for {', '.join(BOOT_FILES)})")
    planned = plan_bootcfg(files, gather_facts(target, root, to, mappings, serials), to, where=target.describe())
    changed = []
    for path, text in planned.items():
        full = _at(root, path)
        if target.replace_file(full, text, validate=validator_for(path)):
            changed.append(full)
    return changed
