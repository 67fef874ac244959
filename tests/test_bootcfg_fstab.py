"""fstab editing: device renames on whole fields, facts as data, malformed lines refused with file:line."""

from __future__ import annotations

import pytest

from orchestrator.bootcfg import BootConfigError, parse_blkid_export
from orchestrator.bootcfg.devices import check_nvme_table, to_nvme, to_tag, to_xvd
from orchestrator.bootcfg.fstab import entries, escape, rename_devices, unescape


def test_sda1_never_matches_inside_sda10_or_sdaa1():
    text = "/dev/sda10 /a ext4 defaults 0 2\n/dev/sda1 / ext4 defaults 0 1\n/dev/sdaa1 /b ext4 defaults 0 2\n"
    assert rename_devices(text, "fstab", to_xvd()) == (
        "/dev/xvda10 /a ext4 defaults 0 2\n/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdaa1 /b ext4 defaults 0 2\n")


def test_each_partition_keeps_its_own_number_unlike_the_seed_text():
    """The seed changed "all the /dev/sda[0-9] entries" to /dev/xvda1: swap and data on the root device."""
    text = "/dev/sda1 / ext3 noatime 0 1\n/dev/sda2 /mnt ext3 noatime 0 0\n/dev/sda3 none swap sw 0 0\n"
    out = rename_devices(text, "fstab", to_xvd())
    assert [e.source for e in entries(out)] == ["/dev/xvda1", "/dev/xvda2", "/dev/xvda3"]


def test_a_whole_disk_is_renamed_too():
    assert rename_devices("/dev/sdb\t/srv\text4\tdefaults\t0 2\n", "fstab", to_xvd()) == \
        "/dev/xvdb\t/srv\text4\tdefaults\t0 2\n"


def test_device_names_elsewhere_on_the_line_are_not_touched():
    """Only the device field is a device: a mount point, an option or a comment that spells one stays."""
    text = "/dev/sda1 /mnt/dev/sda1 ext4 x-systemd.requires=/dev/sda1 0 2 # was /dev/sda1\n"
    assert rename_devices(text, "fstab", to_xvd()) == \
        "/dev/xvda1 /mnt/dev/sda1 ext4 x-systemd.requires=/dev/sda1 0 2 # was /dev/sda1\n"


def test_nvme_names_come_only_from_the_table_never_from_the_order():
    """xvdf was attached first but is nvme3n1 on this boot: the table (from EBS volume ids) says so."""
    text = "/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdf /data xfs nofail 0 2\n"
    table = {"/dev/xvda1": "/dev/nvme0n1p1", "/dev/xvdf": "/dev/nvme3n1"}
    assert rename_devices(text, "fstab", to_nvme(table)) == \
        "/dev/nvme0n1p1 / ext4 defaults 0 1\n/dev/nvme3n1 /data xfs nofail 0 2\n"


def test_a_device_the_table_lacks_is_refused_naming_the_line_and_mount_point():
    text = "# root\n/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdg /logs ext4 nofail 0 2\n"
    with pytest.raises(BootConfigError) as refused:
        rename_devices(text, "web1:/etc/fstab", to_nvme({"/dev/xvda1": "/dev/nvme0n1p1"}))
    assert str(refused.value) == \
        "web1:/etc/fstab:3: /dev/xvdg is not in the host's NVMe device table (mount point /logs)"


def test_back_to_xvd_reads_the_table_backwards_and_refuses_an_nvme_name_it_lacks():
    table = {"/dev/sda1": "/dev/nvme0n1p1", "/dev/xvda1": "/dev/nvme0n1p1", "/dev/xvdf": "/dev/nvme1n1"}
    text = "/dev/nvme0n1p1 / ext4 defaults 0 1\n/dev/nvme1n1 /data ext4 defaults 0 2\n"
    assert rename_devices(text, "fstab", to_xvd(table)) == \
        "/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdf /data ext4 defaults 0 2\n"
    with pytest.raises(BootConfigError, match=r"^fstab:1: /dev/nvme0n1p1 is an NVMe name and the device table "
                                              r"has no xvd name for it \(mount point /\)$"):
        rename_devices(text, "fstab", to_xvd())


@pytest.mark.parametrize("table, message", [
    ({"/dev/nvme0n1": "/dev/nvme0n1"}, "NVMe device table: '/dev/nvme0n1' is not an sd or xvd device name"),
    ({"/dev/xvda1": "/dev/xvda1"}, "NVMe device table: /dev/xvda1 -> '/dev/xvda1' is not an NVMe device name"),
    ({"/dev/xvdf": "/dev/nvme1n1", "/dev/xvdg": "/dev/nvme1n1"},
     "NVMe device table: /dev/xvdf, /dev/xvdg all map to /dev/nvme1n1"),
])
def test_a_table_that_cannot_be_right_is_refused(table, message):
    with pytest.raises(BootConfigError) as refused:
        check_nvme_table(table)
    assert str(refused.value) == message


def test_sdf_and_xvdf_are_one_mapping_and_may_share_an_nvme_name():
    assert check_nvme_table({"/dev/sdf": "/dev/nvme1n1", "/dev/xvdf": "/dev/nvme1n1"})


BLKID = parse_blkid_export(
    "DEVNAME=/dev/nvme0n1p1\nLABEL=root\nUUID=aaaa-1\nTYPE=ext4\n\n"
    "DEVNAME=/dev/nvme1n1\nLABEL=My\\ Photos\nUUID=bbbb-2\nTYPE=ext4\n")


def test_uuid_comes_from_blkid_through_the_table_when_the_file_uses_an_older_name():
    text = "/dev/xvda1\t/\text4\tdefaults\t0 1\n/dev/nvme1n1 /photos ext4 defaults 0 2\n"
    out = rename_devices(text, "fstab", to_tag(BLKID, "UUID", {"/dev/xvda1": "/dev/nvme0n1p1"}))
    assert out == "UUID=aaaa-1\t/\text4\tdefaults\t0 1\nUUID=bbbb-2 /photos ext4 defaults 0 2\n"


def test_a_label_with_a_blank_is_written_escaped_and_reads_back_whole():
    out = rename_devices("/dev/nvme1n1 /photos ext4 defaults 0 2\n", "fstab", to_tag(BLKID, "LABEL"))
    assert out == "LABEL=My\\040Photos /photos ext4 defaults 0 2\n"
    assert entries(out)[0].source == "LABEL=My Photos"


def test_a_device_without_the_wanted_tag_is_refused():
    with pytest.raises(BootConfigError, match=r"^fstab:1: /dev/nvme0n1p1 has no PARTUUID in the host's blkid output"):
        rename_devices("/dev/nvme0n1p1 / ext4 defaults 0 1\n", "fstab", to_tag(BLKID, "PARTUUID"))


def test_a_uuid_two_devices_share_is_refused():
    """A volume made from a snapshot of the root, attached to the same host, carries the root's UUID."""
    clone = parse_blkid_export("DEVNAME=/dev/nvme0n1p1\nUUID=aaaa-1\n\nDEVNAME=/dev/nvme2n1p1\nUUID=aaaa-1\n")
    with pytest.raises(BootConfigError) as refused:
        rename_devices("/dev/nvme0n1p1 / ext4 defaults 0 1\n", "fstab", to_tag(clone))
    assert str(refused.value) == \
        "fstab:1: UUID=aaaa-1 of /dev/nvme0n1p1 is shared by /dev/nvme0n1p1, /dev/nvme2n1p1 (mount point /)"


def test_an_unknown_tag_is_refused():
    with pytest.raises(BootConfigError, match="tag must be one of UUID, LABEL, PARTUUID, PARTLABEL, not 'ID'"):
        to_tag(BLKID, "ID")


def test_stable_sources_are_left_alone_by_every_rename():
    text = ("UUID=aaaa-1 / ext4 defaults 0 1\nLABEL=data /data ext4 defaults 0 2\n"
            "PARTUUID=6a2d1e8f-01 /p ext4 defaults 0 2\n/dev/mapper/vg-lv /lv ext4 defaults 0 2\n"
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc /v ext4 nofail 0 2\n"
            "/dev/md0 /raid ext4 defaults 0 2\ntmpfs /tmp tmpfs size=1G 0 0\nnfs:/x /x nfs ro 0 0\n"
            "/srv/a /srv/b none bind 0 0\n/swapfile none swap sw 0 0\n")
    for rename in (to_xvd(), to_nvme({}), to_tag(BLKID)):
        assert rename_devices(text, "fstab", rename) == text


def test_crlf_tabs_comments_and_a_missing_final_newline_are_kept():
    text = "# c\r\n\t/dev/sda1\t \t/\text4\tdefaults\t0\t1\r\n\r\n  # indented\r\n/dev/sda2 none swap sw"
    assert rename_devices(text, "fstab", to_xvd()) == \
        "# c\r\n\t/dev/xvda1\t \t/\text4\tdefaults\t0\t1\r\n\r\n  # indented\r\n/dev/xvda2 none swap sw"


@pytest.mark.parametrize("line, message", [
    ("/dev/sda1 /\n", "fstab:2: 2 field(s); an entry needs a device, a mount point and a type"),
    ("/dev/sda1\n", "fstab:2: 1 field(s); an entry needs a device, a mount point and a type"),
    ("/dev/sda1 / ext4 defaults x 1\n", "fstab:2: the dump field 'x' is not a number"),
    ("/dev/sda1 / ext4 defaults 0 1x\n", "fstab:2: the pass field '1x' is not a number"),
    ("/dev/sda1 / ext4 defaults 0x 1\n", "fstab:2: the dump field '0x' is not a number"),
    ("/dev/sda1 / ext4\0 defaults 0 1\n", "fstab:2: a NUL byte in the line"),
])
def test_a_line_libmount_would_skip_is_refused_with_its_number(line, message):
    text = "# fine\n" + line + "/dev/sda2 /data ext4 defaults 0 2\n"
    with pytest.raises(BootConfigError) as refused:
        rename_devices(text, "fstab", to_xvd())
    assert str(refused.value) == message


@pytest.mark.parametrize("line", [
    "/dev/sda1 / ext4\n", "/dev/sda1 / ext4 defaults\n", "/dev/sda1 / ext4 defaults 0\n",
    "/dev/sda1 / ext4 defaults -1 +1\n", "/dev/sda1 / ext4 defaults 0 1 extra fields # note\n",
])
def test_lines_libmount_tolerates_are_tolerated(line):
    assert rename_devices(line, "fstab", to_xvd()) == line.replace("/dev/sda1", "/dev/xvda1", 1)


def test_escapes_are_undone_the_way_libmount_does():
    assert unescape(r"/mnt/My\040Photos\011x\134y\04z") == "/mnt/My Photos\tx\\y\\04z"
    assert escape("a b\tc\\d\ne") == r"a\040b\011c\134d\012e"


def test_blkid_parser_undoes_escapes_and_refuses_what_is_not_blkid_output():
    parsed = parse_blkid_export("DEVNAME=/dev/a\nLABEL=My\\ Disk\\$\\\"x\nUUID=1\n\n\nDEVNAME=/dev/b\nTYPE=swap")
    assert parsed == {"/dev/a": {"LABEL": 'My Disk$"x', "UUID": "1"}, "/dev/b": {"TYPE": "swap"}}
    for text, message in [
        ("DEVNAME=/dev/a\nUUID\n", "blkid -o export:2: expected KEY=value, got 'UUID'"),
        ("UUID=1\nTYPE=ext4\n", "blkid -o export:1: a device without DEVNAME"),
        ("DEVNAME=/dev/a\n\nDEVNAME=/dev/a\n", "blkid -o export:3: /dev/a is listed twice"),
        ("DEVNAME=/dev/a\nUUID=1\nUUID=2\n", "blkid -o export:3: UUID given twice for one device"),
    ]:
        with pytest.raises(BootConfigError) as refused:
            parse_blkid_export(text)
        assert str(refused.value) == message
