"""The boot config corpus and the host facts the golden files were made with.

Every corpus file is in tests/bootcfg_corpus/ (README.md there says where each
comes from); ``GOLDEN`` lists (corpus file, transformation) pairs whose expected
output is tests/bootcfg_corpus/golden/<file>.<transformation>.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.bootcfg import default_grub, fstab, grubcfg, grubenv, menulst
from orchestrator.bootcfg.blkid import parse_blkid_export
from orchestrator.bootcfg.devices import to_nvme, to_tag, to_xvd
from orchestrator.bootcfg.plan import BootFacts

CORPUS = Path(__file__).resolve().parent / "bootcfg_corpus"
GOLDEN_DIR = CORPUS / "golden"


def read(name: str) -> str:
    """A corpus file as text, every byte kept (CRLF, no final newline, non-UTF-8 bytes)."""
    return (CORPUS / name).read_bytes().decode("utf-8", "surrogateescape")


def _with_xvd_aliases(table: dict[str, str]) -> dict[str, str]:
    """The EC2 mapping name /dev/sdf is /dev/xvdf to a Xen kernel: a table holds both spellings."""
    return {**table, **{k.replace("/dev/sd", "/dev/xvd"): v for k, v in table.items()}}


# An m1.small from the seed's days (kernel 2.6 names), and the same data moved to a Nitro type.
XEN_2012 = BootFacts(
    blkid=parse_blkid_export(read("xen-2012.blkid")),
    nvme=_with_xvd_aliases({"/dev/sda1": "/dev/nvme0n1p1", "/dev/sda2": "/dev/nvme1n1", "/dev/sda3": "/dev/nvme2n1"}),
)
# The grown Gentoo box of gentoo-ec2-mixed.fstab, now on Nitro; blkid sees NVMe names only.
NITRO = BootFacts(
    blkid=parse_blkid_export(read("nitro.blkid")),
    nvme=_with_xvd_aliases({
        "/dev/sda1": "/dev/nvme0n1p1", "/dev/sda2": "/dev/nvme0n1p2", "/dev/sda10": "/dev/nvme0n1p10",
        "/dev/sdb": "/dev/nvme1n1", "/dev/sdf1": "/dev/nvme2n1p1", "/dev/sdg": "/dev/nvme3n1",
        "/dev/sdh1": "/dev/nvme4n1p1",
    }),
)
HOSTS = {
    "gentoo-ec2-2012.fstab": XEN_2012, "windows-crlf.fstab": XEN_2012, "seed-ec2.menu.lst": XEN_2012,
    "windows-crlf.menu.lst": XEN_2012, "ubuntu-1004-ec2.menu.lst": XEN_2012, "hand-edited.default-grub": XEN_2012,
    "gentoo-ec2-mixed.fstab": NITRO, "gentoo-two-kernels.menu.lst": NITRO, "debian12-ec2.grub.cfg": NITRO,
    "hand-written-oneshot.grub.cfg": NITRO, "ubuntu-1204-ec2.fstab": XEN_2012,
}
EC2_PARAMS = {"console": "ttyS0", "panic": "10", "nvme_core.io_timeout": "4294967295"}
NEW_KERNEL = {"title": "Gentoo Linux 3.7.1-ec2", "kernel": "/boot/kernel-genkernel-x86_64-3.7.1-ec2",
              "initrd": "/boot/initramfs-genkernel-x86_64-3.7.1-ec2", "params": {"panic": "10"}}
DEBIAN_OLD = ("gnulinux-advanced-5d6a6e3b-1b6d-4b2f-9c71-3a4c5d4e2f10>"
              "gnulinux-6.1.0-25-cloud-amd64-advanced-5d6a6e3b-1b6d-4b2f-9c71-3a4c5d4e2f10")
DEBIAN_NEW = ("gnulinux-advanced-5d6a6e3b-1b6d-4b2f-9c71-3a4c5d4e2f10>"
              "gnulinux-6.1.0-27-cloud-amd64-advanced-5d6a6e3b-1b6d-4b2f-9c71-3a4c5d4e2f10")


def rename_with(module, to: str):
    """``module.rename_devices`` with the ``--to`` rename built from the corpus file's host facts."""
    def transform(text: str, name: str) -> str:
        facts = HOSTS[Path(name).name]
        rename = {"xvd": lambda: to_xvd(facts.nvme), "nvme": lambda: to_nvme(facts.nvme),
                  "uuid": lambda: to_tag(facts.blkid, "UUID", facts.nvme),
                  "partuuid": lambda: to_tag(facts.blkid, "PARTUUID", facts.nvme)}[to]()
        edit = getattr(module, "rename_cmdline_devices", None) or module.rename_devices
        return edit(text, name, rename)
    return transform


def add_new_kernel(text: str, name: str) -> str:
    like = menulst.default_title(text, name)
    entry = menulst.entry_like(text, name, like, **NEW_KERNEL)
    return menulst.add_entry(text, name, entry)


def arm_new_kernel(text: str, name: str) -> str:
    text = add_new_kernel(text, name)
    old = menulst.default_title(text, name)
    return menulst.arm_oneshot(text, name, NEW_KERNEL["title"], old)


def promote_new_kernel(text: str, name: str) -> str:
    return menulst.promote(arm_new_kernel(text, name), name, NEW_KERNEL["title"])


TRANSFORMS = {
    "fstab.xvd": rename_with(fstab, "xvd"),
    "fstab.nvme": rename_with(fstab, "nvme"),
    "fstab.uuid": rename_with(fstab, "uuid"),
    "menu.xvd": rename_with(menulst, "xvd"),
    "menu.nvme": rename_with(menulst, "nvme"),
    "menu.uuid": rename_with(menulst, "uuid"),
    "menu.partuuid": rename_with(menulst, "partuuid"),
    "menu.add": add_new_kernel,
    "menu.arm": arm_new_kernel,
    "menu.promote": promote_new_kernel,
    "default.ec2": lambda t, n: default_grub.set_cmdline_params(t, n, EC2_PARAMS),
    "default.saved": lambda t, n: default_grub.set_variable(t, n, "GRUB_DEFAULT", "saved"),
    "default.xvd": rename_with(default_grub, "xvd"),
    "default.nvme": rename_with(default_grub, "nvme"),
    "default.uuid": rename_with(default_grub, "uuid"),
    "cfg.xvd": rename_with(grubcfg, "xvd"),
    "cfg.nvme": rename_with(grubcfg, "nvme"),
    "cfg.uuid": rename_with(grubcfg, "uuid"),
    "env.arm": lambda t, n: grubenv.arm_next_entry(t, n, DEBIAN_NEW, DEBIAN_OLD),
    "env.promote": lambda t, n: grubenv.promote_saved_entry(grubenv.arm_next_entry(t, n, DEBIAN_NEW, DEBIAN_OLD),
                                                            n, DEBIAN_NEW),
}

GOLDEN = [
    ("gentoo-ec2-2012.fstab", "fstab.xvd"), ("gentoo-ec2-2012.fstab", "fstab.nvme"),
    ("gentoo-ec2-2012.fstab", "fstab.uuid"),
    ("gentoo-ec2-mixed.fstab", "fstab.xvd"), ("gentoo-ec2-mixed.fstab", "fstab.nvme"),
    ("gentoo-ec2-mixed.fstab", "fstab.uuid"),
    ("windows-crlf.fstab", "fstab.xvd"), ("windows-crlf.fstab", "fstab.uuid"),
    ("seed-ec2.menu.lst", "menu.xvd"), ("seed-ec2.menu.lst", "menu.nvme"), ("seed-ec2.menu.lst", "menu.uuid"),
    ("seed-ec2.menu.lst", "menu.add"), ("seed-ec2.menu.lst", "menu.arm"), ("seed-ec2.menu.lst", "menu.promote"),
    ("windows-crlf.menu.lst", "menu.xvd"), ("windows-crlf.menu.lst", "menu.arm"),
    ("gentoo-two-kernels.menu.lst", "menu.xvd"), ("gentoo-two-kernels.menu.lst", "menu.partuuid"),
    ("gentoo-two-kernels.menu.lst", "menu.arm"),
    ("ubuntu-1004-ec2.menu.lst", "menu.xvd"), ("ubuntu-1004-ec2.menu.lst", "menu.uuid"),
    ("ubuntu-1004-ec2.menu.lst", "menu.arm"),
    ("amazon-linux-1.menu.lst", "menu.arm"), ("amazon-linux-1.menu.lst", "menu.promote"),
    ("debian12.default-grub", "default.ec2"), ("debian12.default-grub", "default.saved"),
    ("gentoo.default-grub", "default.ec2"), ("gentoo.default-grub", "default.saved"),
    ("ubuntu-2204-cloudimg-50.cfg", "default.ec2"), ("amazon-linux-2.default-grub", "default.ec2"),
    ("hand-edited.default-grub", "default.ec2"), ("hand-edited.default-grub", "default.saved"),
    ("hand-edited.default-grub", "default.xvd"), ("hand-edited.default-grub", "default.uuid"),
    ("debian12-ec2.grub.cfg", "cfg.xvd"), ("debian12-ec2.grub.cfg", "cfg.uuid"),
    ("hand-written-oneshot.grub.cfg", "cfg.nvme"),
    ("debian12.grubenv", "env.arm"), ("debian12.grubenv", "env.promote"),
]

# Files every device rename leaves byte for byte: no kernel device names in them.
UNCHANGED = {
    "fstab": ["gentoo-baselayout.fstab", "ubuntu-cloudimg.fstab", "amazon-linux-2.fstab", "debian12-ec2.fstab"],
    "menu": ["amazon-linux-1.menu.lst", "gentoo-sample.grub.conf"],
    "default": ["debian12.default-grub", "gentoo.default-grub", "ubuntu-2204-cloudimg-50.cfg",
                "amazon-linux-2.default-grub"],
}

# (file, transformation, the one line it is refused with): devices the facts do not cover, and what cannot boot.
REFUSED = [
    ("ubuntu-1204-ec2.fstab", "fstab.nvme",
     "ubuntu-1204-ec2.fstab:2: /dev/xvdb is not in the host's NVMe device table (mount point /mnt)"),
    ("ubuntu-1204-ec2.fstab", "fstab.uuid",
     "ubuntu-1204-ec2.fstab:2: /dev/xvdb is not in the host's blkid output (mount point /mnt)"),
    ("gentoo-two-kernels.menu.lst", "menu.uuid",
     "gentoo-two-kernels.menu.lst:8: root=UUID=3e6be9de-8139-4ecd-9f56-7a4d2c1b0f11 needs an initramfs and this "
     "entry has none (PARTUUID= works without)"),
    ("hand-written-oneshot.grub.cfg", "cfg.uuid",
     "hand-written-oneshot.grub.cfg:19: root=UUID=3e6be9de-8139-4ecd-9f56-7a4d2c1b0f11 needs an initramfs and this "
     "entry has none (PARTUUID= works without)"),
    ("seed-ec2.menu.lst", "menu.partuuid",
     "seed-ec2.menu.lst:7: /dev/sda1 has no PARTUUID in the host's blkid output"),
]
