"""GRUB legacy menu.lst: renames on kernel lines, a new entry, the one-shot boot and its promotion."""

from __future__ import annotations

import pytest

from bootcfg_cases import NEW_KERNEL, read
from orchestrator.bootcfg import BootConfigError
from orchestrator.bootcfg.devices import to_tag, to_xvd
from orchestrator.bootcfg.menulst import (BootEntry, add_entry, arm_oneshot, default_title, entry_like, parse_menu,
                                          promote, rename_devices)

SEED = read("seed-ec2.menu.lst")
OLD = "Gentoo Linux 3.6.0-ec2"
NEW = NEW_KERNEL["title"]


def seed_with_new_kernel() -> str:
    return add_entry(SEED, "menu.lst", entry_like(SEED, "menu.lst", OLD, **NEW_KERNEL))


def test_the_seed_edit_root_sda1_to_xvda1_on_the_kernel_line_only():
    out = rename_devices(SEED, "menu.lst", to_xvd())
    assert out == SEED.replace("root=/dev/sda1", "root=/dev/xvda1")
    assert "root (hd0)\n" in out


def test_only_device_parameters_are_renamed_on_a_kernel_line():
    text = ("title t\nroot (hd0,0)\nkernel /boot/sda1 root=/dev/sda1 xroot=/dev/sda1 root2=/dev/sda1 "
            "init=/dev/sda1 resume=/dev/sda10 real_root=/dev/sda2 root=/dev/sda1x\ninitrd /boot/i\n")
    assert rename_devices(text, "menu.lst", to_xvd()) == (
        "title t\nroot (hd0,0)\nkernel /boot/sda1 root=/dev/xvda1 xroot=/dev/sda1 root2=/dev/sda1 "
        "init=/dev/sda1 resume=/dev/xvda10 real_root=/dev/xvda2 root=/dev/sda1x\ninitrd /boot/i\n")


def test_kernel_options_before_the_path_are_not_the_command_line():
    text = "title t\nkernel --no-mem-option --type=linux /boot/vmlinuz root=/dev/sda1\n"
    assert rename_devices(text, "menu.lst", to_xvd()).endswith(" /boot/vmlinuz root=/dev/xvda1\n")


def test_the_kopt_magic_comment_is_renamed_so_update_grub_does_not_undo_it():
    text = read("ubuntu-1004-ec2.menu.lst")
    out = rename_devices(text, "menu.lst", to_xvd())
    assert "# kopt=root=/dev/xvda1 ro console=hvc0\n" in out
    assert "##      kopt_2_6_8=root=/dev/hdc1 ro\n" in out, "documentation comments stay as they are"


def test_uuid_needs_an_initramfs_but_partuuid_does_not():
    text = "title old\nkernel /boot/vmlinuz root=/dev/nvme0n1p1\n"
    blkid = {"/dev/nvme0n1p1": {"UUID": "u-1", "PARTUUID": "p-1"}}
    with pytest.raises(BootConfigError, match=r"^menu.lst:2: root=UUID=u-1 needs an initramfs"):
        rename_devices(text, "menu.lst", to_tag(blkid, "UUID"))
    assert rename_devices(text, "menu.lst", to_tag(blkid, "PARTUUID")).endswith("root=PARTUUID=p-1\n")


def test_a_label_with_a_blank_cannot_go_on_a_kernel_line():
    text = "title t\nkernel /boot/vmlinuz root=/dev/nvme0n1p1\ninitrd /boot/i\n"
    with pytest.raises(BootConfigError, match=r"^menu.lst:2: root=LABEL=my root cannot be written on a kernel"):
        rename_devices(text, "menu.lst", to_tag({"/dev/nvme0n1p1": {"LABEL": "my root"}}, "LABEL"))


def test_a_new_entry_copies_root_and_command_line_and_adds_panic():
    entry = entry_like(SEED, "menu.lst", OLD, **NEW_KERNEL)
    assert entry == BootEntry(NEW, "/boot/kernel-genkernel-x86_64-3.7.1-ec2",
                              "root=/dev/sda1 rootfstype=ext3 panic=10",
                              "/boot/initramfs-genkernel-x86_64-3.7.1-ec2", "(hd0)")


def test_a_new_entry_goes_last_so_every_number_still_means_the_same_entry():
    out = seed_with_new_kernel()
    assert out.startswith(SEED)
    assert [e.title for e in parse_menu(out).entries] == [OLD, NEW]
    assert default_title(out) == OLD


def test_adding_the_same_entry_again_changes_nothing_and_a_different_one_is_refused():
    out = seed_with_new_kernel()
    assert add_entry(out, "menu.lst", entry_like(SEED, "menu.lst", OLD, **NEW_KERNEL)) == out
    other = BootEntry(NEW, "/boot/other-kernel")
    with pytest.raises(BootConfigError, match=rf"^menu.lst:10: an entry titled '{NEW}' already exists with other"):
        add_entry(out, "menu.lst", other)


def test_an_entry_is_added_after_a_last_line_without_newline_and_in_crlf():
    out = add_entry("default 0\r\ntitle a\r\nkernel /k", "m", BootEntry("b", "/k2", "ro"))
    assert out == "default 0\r\ntitle a\r\nkernel /k\r\n\r\ntitle b\r\nkernel /k2 ro\r\n"


def test_a_new_entry_with_a_newline_in_it_is_refused():
    with pytest.raises(BootConfigError, match=r"^m: new entry: title 'a\\nkernel /evil' must be one non-empty line$"):
        add_entry(SEED, "m", BootEntry("a\nkernel /evil", "/k"))


def test_arming_boots_the_new_entry_once_with_the_old_one_as_fallback():
    out = arm_oneshot(seed_with_new_kernel(), "menu.lst", NEW, OLD)
    menu = parse_menu(out)
    assert (menu.get("default").args, menu.get("fallback").args) == ("saved", "0")
    new = menu.entries[1]
    assert [(c.name, c.args) for c in new.commands][-1] == ("savedefault", "fallback")
    assert menu.entries[0].get("savedefault") is None, "the old entry is left as it was"


def test_arming_twice_is_arming_once_and_promotion_too():
    armed = arm_oneshot(seed_with_new_kernel(), "menu.lst", NEW, OLD)
    assert arm_oneshot(armed, "menu.lst", NEW, OLD) == armed
    promoted = promote(armed, "menu.lst", NEW)
    assert promote(promoted, "menu.lst", NEW) == promoted


def test_promotion_makes_the_new_entry_the_default_and_drops_only_what_arming_added():
    text = read("gentoo-two-kernels.menu.lst")
    text = add_entry(text, "m", entry_like(text, "m", "Gentoo 3.6.0-ec2", **NEW_KERNEL))
    armed = arm_oneshot(text, "m", NEW, "Gentoo 3.6.0-ec2")
    promoted = promote(armed, "m", NEW)
    menu = parse_menu(promoted)
    assert (menu.get("default").args, menu.get("fallback").args) == ("2", "1 0")
    assert menu.entries[1].get("savedefault").args == "", "the old entry's own savedefault stays"
    assert menu.entries[2].get("savedefault") is None
    assert default_title(promoted) == NEW


def test_promoting_in_a_menu_without_default_adds_it_and_drops_the_right_line():
    text = "timeout 5\ntitle old\nkernel /a\ntitle new\nkernel /b\nsavedefault fallback\n"
    assert promote(text, "m", "new") == "timeout 5\ndefault 1\ntitle old\nkernel /a\ntitle new\nkernel /b\n"


def test_a_savedefault_without_argument_on_the_new_entry_becomes_savedefault_fallback():
    text = "default 0\ntitle old\nkernel /a\ntitle new\nkernel /b\nsavedefault\n"
    assert arm_oneshot(text, "m", "new", "old") == \
        "default saved\nfallback 0\ntitle old\nkernel /a\ntitle new\nkernel /b\nsavedefault fallback\n"


def test_a_menu_without_default_gets_it_after_timeout_or_before_the_first_entry():
    text = "# menu\ntimeout 5\ntitle old\nkernel /a\ntitle new\nkernel /b\n"
    assert arm_oneshot(text, "m", "new", "old") == \
        "# menu\ntimeout 5\ndefault saved\nfallback 0\ntitle old\nkernel /a\ntitle new\nkernel /b\n" \
        "savedefault fallback\n"
    text = "# menu\n\ntitle old\nkernel /a\ntitle new\nkernel /b"
    assert arm_oneshot(text, "m", "new", "old") == \
        "# menu\n\ndefault saved\nfallback 0\ntitle old\nkernel /a\ntitle new\nkernel /b\nsavedefault fallback\n"


@pytest.mark.parametrize("new, old, message", [
    ("new", "new", "m: the new and the old entry are both 'new'"),
    ("missing", "old", "m: no entry titled 'missing'"),
    ("twin", "old", "m:6: two entries titled 'twin' (the other on line 4)"),
])
def test_arming_refuses_what_would_not_be_a_one_shot(new, old, message):
    text = "default 0\ntitle old\nkernel /a\ntitle twin\nkernel /b\ntitle twin\nkernel /c\ntitle new\nkernel /d\n"
    with pytest.raises(BootConfigError) as refused:
        arm_oneshot(text, "m", new, old)
    assert str(refused.value) == message


def test_default_title_follows_default_and_says_none_for_saved():
    assert default_title("title a\nkernel /a\ntitle b\nkernel /b\n") == "a"
    assert default_title("default=1\ntitle a\nkernel /a\ntitle b\nkernel /b\n") == "b"
    assert default_title("default saved\ntitle a\nkernel /a\n") is None
    with pytest.raises(BootConfigError, match=r"^menu.lst:1: default 3 names no entry$"):
        default_title("default 3\ntitle a\nkernel /a\n")


@pytest.mark.parametrize("text, message", [
    ("timeout 5\ndefault one\n", "m:2: default 'one' is neither an entry number nor 'saved'"),
    ("fallback 1 x\n", "m:1: fallback '1 x' is not a list of entry numbers"),
    ("default 0\ndefault 1\n", "m:2: 'default' given twice (first on line 1)"),
    ("kernel /boot/vmlinuz root=/dev/sda1\n", "m:1: 'kernel' before the first 'title'"),
    ("title\nkernel /k\n", "m:1: 'title' without an argument"),
    ("title t\nkernel\n", "m:2: 'kernel' without an argument"),
    ("title t\nkernel/boot/vmlinuz\n", "m:2: not a GRUB command line: 'kernel/boot/vmlinuz'"),
    ("title t\n{ kernel /k }\n", "m:2: not a GRUB command line: '{ kernel /k }'"),
])
def test_a_malformed_menu_is_refused_with_file_and_line(text, message):
    with pytest.raises(BootConfigError) as refused:
        rename_devices(text, "m", to_xvd())
    assert str(refused.value) == message


def test_equals_and_tabs_as_separators_are_read_like_grub_does():
    menu = parse_menu("default = saved\ntimeout=5\ntitle\t\tUbuntu, kernel 2.6\nkernel=/boot/vmlinuz ro\n")
    assert [(c.name, c.args) for c in menu.globals] == [("default", "saved"), ("timeout", "5")]
    assert menu.entries[0].title == "Ubuntu, kernel 2.6"
    assert menu.entries[0].get("kernel").args == "/boot/vmlinuz ro"
