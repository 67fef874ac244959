"""The EC2 check on real kernel config text and a real dracut listing.

``kernel/tinyconfig-qemu.config`` is the final .config of `make tinyconfig` plus
``kernel/qemu-tiny.config`` on Debian's linux-source-6.1 (the kernel the slow tests
build and boot); ``kernel/lsinitrd-dracut-059.txt`` is `lsinitrd` of a dracut 059
``--no-hostonly`` initramfs made on this machine. The passing config is the shipped
``chroot/kernel/ec2/ec2.config`` merged onto x86_64 defconfig (the slow test in
test_kernel_build.py does that merge with the kernel's own tools).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.kernel import ec2check

DATA = Path(__file__).parent / "kernel"
TINY = (DATA / "tinyconfig-qemu.config").read_text()
LISTING = (DATA / "lsinitrd-dracut-059.txt").read_text()
# The lines of an x86_64 defconfig + ec2.config that the check reads (copied from the real file).
EC2_SNIPPET = """\
CONFIG_64BIT=y
CONFIG_BINFMT_ELF=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_BLK_DEV_NVME=y
CONFIG_NET_VENDOR_AMAZON=y
CONFIG_ENA_ETHERNET=y
CONFIG_XEN=y
CONFIG_XEN_PVHVM=y
CONFIG_XEN_BLKDEV_FRONTEND=y
CONFIG_XEN_NETDEV_FRONTEND=y
CONFIG_EXT4_FS=y
CONFIG_XFS_FS=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
"""


def _module_line(path: str) -> str:
    """A listing line for a module, in lsinitrd's own format (as its other lines)."""
    return f"-rw-r--r--   1 root     root        61344 Nov 27 12:50 {path}\n"


def lines(findings) -> list[tuple[bool, str]]:
    return [(f.fatal, f.line()) for f in findings]


def test_tinyconfig_fails_with_each_missing_piece_named():
    assert lines(ec2check.check_config(TINY)) == [
        (True, "NVMe driver (CONFIG_BLK_DEV_NVME is not set): EBS volumes on Nitro instances are NVMe devices"),
        (True, "ENA network driver (CONFIG_ENA_ETHERNET is not set): Nitro instances have no network without it"),
        (True, "xen-blkfront (CONFIG_XEN_BLKDEV_FRONTEND is not set): disks of Xen instances (xvda)"),
        (True, "xen-netfront (CONFIG_XEN_NETDEV_FRONTEND is not set): network of Xen instances"),
        (False, "devtmpfs automount (CONFIG_DEVTMPFS_MOUNT is not set): a root without an initramfs gets no /dev"),
        (True, "root file system ext4 (CONFIG_EXT4_FS is not set): the root file system"),
    ]


def test_plain_tinyconfig_also_misses_the_console_and_basics():
    """Without our qemu fragment: no ELF, no devtmpfs, no serial console, no initramfs."""
    bare = TINY.replace("CONFIG_BINFMT_ELF=y", "# CONFIG_BINFMT_ELF is not set")
    bare = bare.replace("CONFIG_DEVTMPFS=y", "# CONFIG_DEVTMPFS is not set")
    bare = bare.replace("CONFIG_SERIAL_8250_CONSOLE=y", "# CONFIG_SERIAL_8250_CONSOLE is not set")
    bare = bare.replace("CONFIG_BLK_DEV_INITRD=y", "# CONFIG_BLK_DEV_INITRD is not set")
    names = [(f.fatal, f.piece.name) for f in ec2check.check_config(bare)]
    assert names == [(True, "NVMe driver"), (True, "ENA network driver"), (True, "xen-blkfront"),
                     (True, "xen-netfront"), (True, "devtmpfs"), (True, "ELF executables"),
                     (False, "serial console"), (False, "devtmpfs automount"), (True, "root file system ext4"),
                     (True, "initramfs support")]


def test_a_config_with_the_ec2_pieces_passes():
    assert ec2check.check_config(EC2_SNIPPET) == []
    assert ec2check.check_config(EC2_SNIPPET, root_fs="xfs") == []
    assert ec2check.check_initramfs(EC2_SNIPPET, LISTING) == []
    assert ec2check.check_initramfs(EC2_SNIPPET, None) == []  # all built in: no initramfs needed


def test_the_shipped_fragment_sets_every_piece_the_check_reads():
    fragment = ec2check.parse_config((Path(__file__).parents[1] / "chroot/kernel/ec2/ec2.config").read_text())
    for piece in ec2check.pieces_for("ext4", initramfs=True) + [ec2check.ROOT_FS["xfs"]]:
        assert fragment.get(piece.symbol) == "y", piece.symbol


def test_root_file_system_follows_the_image_setting():
    no_xfs = EC2_SNIPPET.replace("CONFIG_XFS_FS=y\n", "")
    assert ec2check.check_config(no_xfs, root_fs="ext4") == []
    assert lines(ec2check.check_config(no_xfs, root_fs="xfs")) == [
        (True, "root file system xfs (CONFIG_XFS_FS is not set): the root file system")]
    ext3 = ec2check.check_config(EC2_SNIPPET.replace("CONFIG_EXT4_FS=y\n", ""), root_fs="ext3")
    assert lines(ext3) == [(True, "root file system ext3 (the ext4 driver) (CONFIG_EXT4_FS is not set): "
                                  "the root file system")]


def test_a_module_missing_from_the_initramfs_fails():
    config = EC2_SNIPPET.replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m")
    assert ec2check.check_config(config) == []  # the config builds it ...
    assert lines(ec2check.check_initramfs(config, LISTING)) == [  # ... but the initramfs does not carry it
        (True, "NVMe driver (CONFIG_BLK_DEV_NVME=m but nvme.ko is not in the initramfs): "
               "EBS volumes on Nitro instances are NVMe devices")]
    assert lines(ec2check.check_initramfs(config, None)) == [
        (True, "NVMe driver (CONFIG_BLK_DEV_NVME=m but there is no initramfs to load nvme.ko from): "
               "EBS volumes on Nitro instances are NVMe devices")]


@pytest.mark.parametrize("path", [
    "usr/lib/modules/6.1.60-gentoo/kernel/drivers/nvme/host/nvme.ko",
    "usr/lib/modules/6.1.60-gentoo/kernel/drivers/nvme/host/nvme.ko.xz",
    "lib/modules/6.1.60-gentoo/kernel/drivers/nvme/host/nvme.ko.zst",
])
def test_a_module_in_the_initramfs_passes(path):
    config = EC2_SNIPPET.replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m")
    assert ec2check.check_initramfs(config, LISTING + _module_line(path)) == []


def test_a_similar_module_name_is_not_the_module():
    config = EC2_SNIPPET.replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m")
    listing = LISTING + _module_line("usr/lib/modules/6.1.60/kernel/drivers/nvme/host/nvme-core.ko.xz")
    assert [f.piece.name for f in ec2check.check_initramfs(config, listing)] == ["NVMe driver"]


def test_dashes_and_underscores_name_the_same_module():
    config = EC2_SNIPPET.replace("CONFIG_XEN_BLKDEV_FRONTEND=y", "CONFIG_XEN_BLKDEV_FRONTEND=m")
    listing = LISTING + _module_line("usr/lib/modules/6.1.60/kernel/drivers/block/xen_blkfront.ko.xz")
    assert ec2check.check_initramfs(config, listing) == []


def test_cpio_listing_works_too():
    """`cpio -t` prints bare names, one per line."""
    config = EC2_SNIPPET.replace("CONFIG_ENA_ETHERNET=y", "CONFIG_ENA_ETHERNET=m")
    cpio = "usr\nusr/lib/modules/6.1.60/kernel/drivers/net/ethernet/amazon/ena/ena.ko\n"
    assert ec2check.check_initramfs(config, cpio) == []
    assert len(ec2check.check_initramfs(config, "usr\nusr/bin/sh\n")) == 1


def test_a_hypervisor_the_image_does_not_run_on_only_warns():
    findings = ec2check.check_config(TINY, hypervisors=["nitro"])
    assert [(f.fatal, f.piece.name) for f in findings if "xen" in f.piece.name] == [
        (False, "xen-blkfront"), (False, "xen-netfront")]
    assert [f.piece.name for f in findings if f.fatal] == ["NVMe driver", "ENA network driver",
                                                           "root file system ext4"]


def test_dracut_gets_the_ec2_drivers_the_config_builds():
    assert ec2check.module_drivers(EC2_SNIPPET) == ["nvme", "ena", "xen-blkfront", "xen-netfront"]
    assert ec2check.module_drivers(TINY, ["virtio_blk"]) == ["virtio_blk"]
    partial = EC2_SNIPPET.replace("CONFIG_ENA_ETHERNET=y\n", "").replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m")
    assert ec2check.module_drivers(partial, ["nvme", "virtio_net"]) == ["nvme", "xen-blkfront", "xen-netfront",
                                                                        "virtio_net"]


def test_parse_config_keeps_values_and_skips_unset():
    values = ec2check.parse_config(TINY)
    assert values["CONFIG_LOCALVERSION"] == '"-geo-tiny"'
    assert "CONFIG_MODULES" not in values
    assert values["CONFIG_SERIAL_8250_CONSOLE"] == "y"
