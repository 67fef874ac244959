"""GRUB 2: /etc/default/grub command lines, grubenv's one-shot next_entry, grub.cfg entries and renames."""

from __future__ import annotations

import pytest

from bootcfg_cases import DEBIAN_NEW, DEBIAN_OLD, EC2_PARAMS, read
from orchestrator.bootcfg import BootConfigError
from orchestrator.bootcfg.default_grub import get_variable, rename_cmdline_devices, set_cmdline_params, set_variable
from orchestrator.bootcfg.devices import to_tag, to_xvd
from orchestrator.bootcfg.grubcfg import menu_entries
from orchestrator.bootcfg.grubcfg import rename_devices as rename_cfg
from orchestrator.bootcfg.grubenv import (arm_next_entry, edit_grubenv, new_grubenv, parse_grubenv,
                                          promote_saved_entry)


@pytest.mark.parametrize("line, expected", [
    ('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="console=ttyS0 panic=10 nvme_core.io_timeout=4294967295"'),
    ("GRUB_CMDLINE_LINUX='quiet'", "GRUB_CMDLINE_LINUX='quiet console=ttyS0 panic=10 nvme_core.io_timeout=4294967295'"),
    ("GRUB_CMDLINE_LINUX=quiet", 'GRUB_CMDLINE_LINUX="quiet console=ttyS0 panic=10 nvme_core.io_timeout=4294967295"'),
    ("GRUB_CMDLINE_LINUX=", 'GRUB_CMDLINE_LINUX="console=ttyS0 panic=10 nvme_core.io_timeout=4294967295"'),
    ('export GRUB_CMDLINE_LINUX="a  b " # keep', 'export GRUB_CMDLINE_LINUX="a  b console=ttyS0 panic=10 '
                                                 'nvme_core.io_timeout=4294967295 " # keep'),
    ('GRUB_CMDLINE_LINUX="panic=0 console=ttyS0,115200 x panic=1"',
     'GRUB_CMDLINE_LINUX="panic=10 console=ttyS0,115200 x panic=10 nvme_core.io_timeout=4294967295"'),
    ('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX quiet"',
     'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX quiet console=ttyS0 panic=10 nvme_core.io_timeout=4294967295"'),
])
def test_ec2_parameters_keep_the_quoting_and_every_other_word(line, expected):
    text = f"# head\n{line}\nGRUB_TIMEOUT=5\n"
    out = set_cmdline_params(text, "grub", EC2_PARAMS)
    assert out == f"# head\n{expected}\nGRUB_TIMEOUT=5\n"
    assert set_cmdline_params(out, "grub", EC2_PARAMS) == out


def test_a_console_on_another_device_is_kept_and_ttys0_added_last():
    out = set_cmdline_params('GRUB_CMDLINE_LINUX="console=tty1"\n', "g", {"console": "ttyS0"})
    assert out == 'GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0"\n'


def test_a_missing_variable_is_added_after_its_commented_example():
    text = read("gentoo.default-grub")
    out = set_cmdline_params(text, "g", {"panic": "10"})
    assert out.replace('#GRUB_CMDLINE_LINUX=""\nGRUB_CMDLINE_LINUX="panic=10"\n', '#GRUB_CMDLINE_LINUX=""\n') == text


@pytest.mark.parametrize("text, message", [
    ('GRUB_CMDLINE_LINUX="quiet\nsplash"\n', "g:1: GRUB_CMDLINE_LINUX: the quoted value does not end on this line"),
    ('GRUB_CMDLINE_LINUX="a \\"b\\""\n',
     "g:1: GRUB_CMDLINE_LINUX is not a plain value this tool can edit; edit it by hand"),
    ('GRUB_CMDLINE_LINUX="a"b\n', "g:1: GRUB_CMDLINE_LINUX is not a plain value this tool can edit; edit it by hand"),
    ("GRUB_CMDLINE_LINUX=`cat /etc/cmdline`\n",
     "g:1: GRUB_CMDLINE_LINUX is not a plain value this tool can edit; edit it by hand"),
    ('GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX="b"\n',
     "g:2: GRUB_CMDLINE_LINUX is assigned twice (also on line 1); keep one"),
    ('[ -e /x ] && GRUB_CMDLINE_LINUX="a"\n', "g:1: GRUB_CMDLINE_LINUX is assigned inside a command; edit it by hand"),
    ('GRUB_CMDLINE_LINUX="panic=$PANIC"\n',
     "g:1: panic= in GRUB_CMDLINE_LINUX is computed by the shell; edit it by hand"),
])
def test_what_cannot_be_edited_as_text_is_refused_with_its_line(text, message):
    with pytest.raises(BootConfigError) as refused:
        set_cmdline_params(text, "g", {"panic": "10"})
    assert str(refused.value) == message


@pytest.mark.parametrize("params", [{"panic": "10 init=/bin/sh"}, {"console": 'tty"S0'}, {"pan ic": "1"},
                                    {"panic": "$(reboot)"}])
def test_a_parameter_that_is_not_one_plain_word_is_refused(params):
    with pytest.raises(BootConfigError, match="blanks, quotes and shell characters are not allowed"):
        set_cmdline_params('GRUB_CMDLINE_LINUX=""\n', "g", params)


def test_renames_reach_both_command_line_variables_and_every_assignment():
    text = ('GRUB_CMDLINE_LINUX="root=/dev/sda1"\nGRUB_CMDLINE_LINUX_DEFAULT=\'resume=/dev/sda2 quiet\'\n'
            'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX real_root=/dev/sda1"\nGRUB_DEVICE=/dev/sda1\n')
    assert rename_cmdline_devices(text, "g", to_xvd()) == (
        'GRUB_CMDLINE_LINUX="root=/dev/xvda1"\nGRUB_CMDLINE_LINUX_DEFAULT=\'resume=/dev/xvda2 quiet\'\n'
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX real_root=/dev/xvda1"\nGRUB_DEVICE=/dev/sda1\n')


def test_a_device_blkid_lacks_is_refused_on_its_line():
    with pytest.raises(BootConfigError, match=r"^g:2: /dev/sda9 is not in the host's blkid output$"):
        rename_cmdline_devices('# x\nGRUB_CMDLINE_LINUX="root=/dev/sda9"\n', "g", to_tag({}))


def test_grub_default_saved_in_place_keeping_export_or_added():
    assert set_variable("export GRUB_DEFAULT='0' # first\n", "g", "GRUB_DEFAULT", "saved") == \
        "export GRUB_DEFAULT='saved' # first\n"
    assert set_variable("GRUB_TIMEOUT=5", "g", "GRUB_DEFAULT", "saved") == "GRUB_TIMEOUT=5\nGRUB_DEFAULT=saved\n"
    assert get_variable(read("debian12.default-grub"), "g", "GRUB_CMDLINE_LINUX_DEFAULT") == "quiet"


# --- grubenv ---------------------------------------------------------------------------

ENV = read("debian12.grubenv")


def test_the_corpus_block_reads_as_grub_editenv_wrote_it():
    assert parse_grubenv(ENV) == {"saved_entry": DEBIAN_OLD, "next_entry": ""}


def test_arming_sets_next_entry_and_keeps_the_old_default_in_1024_bytes():
    armed = arm_next_entry(ENV, "grubenv", DEBIAN_NEW, DEBIAN_OLD)
    assert len(armed.encode()) == 1024
    assert parse_grubenv(armed) == {"saved_entry": DEBIAN_OLD, "next_entry": DEBIAN_NEW}
    assert armed.startswith(ENV[:ENV.index("next_entry=")]), "the signature, warning and saved_entry lines stay"
    assert arm_next_entry(armed, "grubenv", DEBIAN_NEW, DEBIAN_OLD) == armed


def test_promotion_saves_the_new_entry_and_clears_a_pending_one_shot():
    promoted = promote_saved_entry(arm_next_entry(ENV, "grubenv", DEBIAN_NEW, DEBIAN_OLD), "grubenv", DEBIAN_NEW)
    assert parse_grubenv(promoted) == {"saved_entry": DEBIAN_NEW, "next_entry": ""}
    assert promote_saved_entry(promoted, "grubenv", DEBIAN_NEW) == promoted


def test_values_with_backslashes_and_newlines_round_trip():
    env = edit_grubenv(new_grubenv(), "e", {"a": "x\\y", "b": "line1\nline2", "c": "é"}, unset=["none"])
    assert parse_grubenv(env) == {"a": "x\\y", "b": "line1\nline2", "c": "é"}
    assert parse_grubenv(edit_grubenv(env, "e", unset=["b"])) == {"a": "x\\y", "c": "é"}


@pytest.mark.parametrize("text, message", [
    (ENV[:-1], "e: 1023 bytes; a GRUB environment block is exactly 1024"),
    (ENV + "#", "e: 1025 bytes; a GRUB environment block is exactly 1024"),
    ("# GRUB Environment Blocx\n" + ENV[25:], "e:1: no '# GRUB Environment Block' signature"),
    (ENV.replace("next_entry=\n", "next_entry\n#"), "e:4: not a name=value line: 'next_entry'"),
    (ENV[:-3] + "x##", "e:5: padding holds something other than '#'"),
])
def test_a_block_that_is_not_a_grubenv_is_refused(text, message):
    with pytest.raises(BootConfigError) as refused:
        parse_grubenv(text, "e")
    assert str(refused.value) == message


def test_a_block_that_would_outgrow_1024_bytes_is_refused_not_truncated():
    with pytest.raises(BootConfigError,
                       match=r"^e: the variables need 1[0-9]{3} bytes; a GRUB environment block holds 1024$"):
        edit_grubenv(ENV, "e", {"saved_entry": "x" * 1000})


# --- grub.cfg --------------------------------------------------------------------------

def test_entry_paths_are_what_next_entry_takes_submenu_first():
    entries = menu_entries(read("debian12-ec2.grub.cfg"))
    assert [e.path for e in entries] == [
        "gnulinux-simple-5d6a6e3b-1b6d-4b2f-9c71-3a4c5d4e2f10", DEBIAN_NEW, DEBIAN_OLD]
    assert entries[1].title == "Debian GNU/Linux, with Linux 6.1.0-27-cloud-amd64"
    assert entries[1].linux.startswith("/boot/vmlinuz-6.1.0-27-cloud-amd64 root=/dev/nvme0n1p1 ro")
    assert all(e.has_initrd for e in entries)


def test_entries_without_ids_are_named_by_title():
    entries = menu_entries(read("hand-written-oneshot.grub.cfg"))
    assert [(e.path, e.has_initrd) for e in entries] == [("Gentoo 6.1.0 (proven)", True), ("Gentoo 6.6.0 (new)", False)]


def test_only_linux_lines_inside_entries_are_renamed():
    text = "set root=/dev/sda1\nmenuentry 'a' {\n\tlinux\t/vmlinuz root=/dev/sda1\n\tinitrd /i\n}\n"
    assert rename_cfg(text, "cfg", to_xvd()) == text.replace("root=/dev/sda1\n\tinitrd", "root=/dev/xvda1\n\tinitrd")


@pytest.mark.parametrize("text, message", [
    ("menuentry 'a' {\n linux /v\n", "cfg:1: 'menuentry' opened here is never closed"),
    ("}\n", "cfg:1: '}' closes nothing"),
    ("menuentry 'a {\n}\n", "cfg:1: cannot read the menuentry line: No closing quotation"),
    ("menuentry {\n}\n", "cfg:1: menuentry without a title"),
])
def test_a_grub_cfg_we_cannot_follow_is_refused(text, message):
    with pytest.raises(BootConfigError) as refused:
        menu_entries(text, "cfg")
    assert str(refused.value) == message
