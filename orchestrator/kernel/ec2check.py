"""The EC2 check: what a kernel and its initramfs need to boot on EC2, as pure functions on text.

``check_config`` reads the final ``.config``; ``check_initramfs`` reads the
listing of the initramfs (``lsinitrd``, ``lsinitramfs`` or ``cpio -t``). A
piece built in (``=y``) needs nothing in the initramfs; a module (``=m``) is
only there at boot if the initramfs carries it. Each missing piece is one
``Finding``: ``fatal`` when an EC2 boot cannot do without it (the instance
never finds its root disk or network, and there is no console to log in on),
otherwise a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: dracut --add-drivers is always given these (when the config builds them at all)
FORCED_DRIVERS = ("nvme", "ena", "xen-blkfront", "xen-netfront")


@dataclass(frozen=True)
class Piece:
    name: str
    symbol: str
    why: str
    module: str = ""  # the module's file name without .ko when it can be =m; "" for a bool option
    hypervisor: str = ""  # "nitro" or "xen": fatal only for images meant to run there
    fatal: bool = True


PIECES = (
    Piece("NVMe driver", "CONFIG_BLK_DEV_NVME", "EBS volumes on Nitro instances are NVMe devices",
          "nvme", "nitro"),
    Piece("ENA network driver", "CONFIG_ENA_ETHERNET", "Nitro instances have no network without it",
          "ena", "nitro"),
    Piece("xen-blkfront", "CONFIG_XEN_BLKDEV_FRONTEND", "disks of Xen instances (xvda)",
          "xen-blkfront", "xen"),
    Piece("xen-netfront", "CONFIG_XEN_NETDEV_FRONTEND", "network of Xen instances", "xen-netfront", "xen"),
    Piece("devtmpfs", "CONFIG_DEVTMPFS", "udev and dracut's initramfs need /dev as devtmpfs"),
    Piece("ELF executables", "CONFIG_BINFMT_ELF", "init and every program is an ELF binary"),
    Piece("serial console", "CONFIG_SERIAL_8250_CONSOLE",
          "the EC2 console output (get_console_output) stays empty without it", fatal=False),
    Piece("devtmpfs automount", "CONFIG_DEVTMPFS_MOUNT", "a root without an initramfs gets no /dev",
          fatal=False),
)
ROOT_FS = {
    "ext4": Piece("root file system ext4", "CONFIG_EXT4_FS", "the root file system", "ext4"),
    "ext3": Piece("root file system ext3 (the ext4 driver)", "CONFIG_EXT4_FS", "the root file system", "ext4"),
    "xfs": Piece("root file system xfs", "CONFIG_XFS_FS", "the root file system", "xfs"),
    "btrfs": Piece("root file system btrfs", "CONFIG_BTRFS_FS", "the root file system", "btrfs"),
}
INITRD = Piece("initramfs support", "CONFIG_BLK_DEV_INITRD", "the kernel cannot load the initramfs")
_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Finding:
    piece: Piece
    problem: str
    fatal: bool

    def line(self) -> str:
        return f"{self.piece.name} ({self.problem}): {self.piece.why}"


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines into a mapping (quotes kept); ``is not set`` lines are absent."""
    values = {}
    for raw in text.splitlines():
        match = _LINE.match(raw.strip())
        if match:
            values[match[1]] = match[2]
    return values


def pieces_for(root_fs: str, initramfs: bool) -> list[Piece]:
    return [*PIECES, ROOT_FS[root_fs], *([INITRD] if initramfs else [])]


def check_config(text: str, *, root_fs: str = "ext4", hypervisors: Iterable[str] = ("nitro", "xen"),
                 initramfs: bool = True) -> list[Finding]:
    """Every piece the final ``.config`` does not build, in the order of ``pieces_for``."""
    values = parse_config(text)
    found = []
    for piece in pieces_for(root_fs, initramfs):
        if values.get(piece.symbol) not in ("y", "m"):
            found.append(Finding(piece, f"{piece.symbol} is not set", _fatal(piece, hypervisors)))
    return found


def check_initramfs(text: str, listing: str | None, *, root_fs: str = "ext4",
                    hypervisors: Iterable[str] = ("nitro", "xen")) -> list[Finding]:
    """Every piece built as a module (``=m``) that the initramfs does not carry.

    ``listing`` is ``None`` when there is no initramfs at all; pieces the
    config does not build are ``check_config``'s to name.
    """
    values = parse_config(text)
    found = []
    for piece in pieces_for(root_fs, initramfs=False):
        if not piece.module or values.get(piece.symbol) != "m":
            continue
        if listing is None:
            problem = f"{piece.symbol}=m but there is no initramfs to load {piece.module}.ko from"
        elif not has_module(listing, piece.module):
            problem = f"{piece.symbol}=m but {piece.module}.ko is not in the initramfs"
        else:
            continue
        found.append(Finding(piece, problem, _fatal(piece, hypervisors)))
    return found


def has_module(listing: str, module: str) -> bool:
    """``module.ko`` (maybe compressed) in a listing; a module's name treats - and _ alike."""
    stem = "".join("[-_]" if c in "-_" else re.escape(c) for c in module)
    return re.search(rf"(?:^|[\s/]){stem}\.ko(?:\.(?:xz|zst|gz))?(?:\s|$)", listing, re.M) is not None


def module_drivers(text: str, extra: Iterable[str] = ()) -> list[str]:
    """What dracut --add-drivers gets: the forced EC2 drivers this config builds, then ``extra``.

    A driver the config does not build at all is left out (dracut would stop on
    it); the check names it instead.
    """
    values = parse_config(text)
    by_module = {p.module: p.symbol for p in PIECES if p.module}
    forced = [d for d in FORCED_DRIVERS if values.get(by_module[d]) in ("y", "m")]
    return forced + [d for d in extra if d not in forced]


def _fatal(piece: Piece, hypervisors: Iterable[str]) -> bool:
    return piece.fatal and (not piece.hypervisor or piece.hypervisor in set(hypervisors))


def summary(findings: Iterable[Finding]) -> Mapping[str, list[str]]:
    """For the run report: the lines, fatal ones apart."""
    findings = list(findings)
    return {"fatal": [f.line() for f in findings if f.fatal], "warnings": [f.line() for f in findings if not f.fatal]}
