"""The validators run the real tools (findmnt, grub-script-check, sh, grub-editenv) on texts before they are written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootcfg_cases import CORPUS, GOLDEN, read
from orchestrator.bootcfg import BootConfigError
from orchestrator.bootcfg.devices import to_tag
from orchestrator.bootcfg.fstab import rename_devices
from orchestrator.bootcfg.grubenv import edit_grubenv, new_grubenv
from orchestrator.bootcfg.validate import (check_default_grub, check_fstab, check_grub_cfg, check_grubenv,
                                           check_menulst, validator_for)

FSTABS = sorted(p.name for p in CORPUS.glob("*.fstab"))


def findmnt(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "fstab"
    path.write_text(text)
    return subprocess.run(["findmnt", "-C", "--verify", "--tab-file", str(path)], capture_output=True, text=True,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})


@pytest.mark.parametrize("name", FSTABS + [f"golden/{f}.{t}" for f, t in GOLDEN if t.startswith("fstab.")])
def test_every_corpus_and_golden_fstab_passes(name):
    assert check_fstab(read(name), name) == ([] if name != "ubuntu-1204-ec2.fstab" else
                                             ["ubuntu-1204-ec2.fstab:1: findmnt: recommended root FS passno is 1 "
                                              "(current is 0)"])


def test_devices_and_mount_points_this_box_lacks_do_not_fail_the_check(tmp_path):
    """findmnt itself fails this file here (no such UUID, no /srv/x here); the host that boots it has both."""
    text = "UUID=0b4ff1c3-4c55-4a9f-8d58-2c3c1e7c6b42 /srv/x ext4 defaults 0 2\n/dev/xvdq / auto defaults 0 1\n"
    raw = findmnt(text, tmp_path)
    assert raw.returncode != 0 and "[E] unreachable on boot required" in raw.stdout
    assert "[E] cannot detect on-disk filesystem type" in raw.stdout
    assert check_fstab(text) == []


@pytest.mark.parametrize("lines, message", [
    (["UUDI=0b4ff1c3 / ext4 defaults 0 1"], "fstab:2: findmnt: unsupported source tag: UUDI=0b4ff1c3"),
    (["/dev/xvdb none swap sw,pri=high 0 0"], "fstab:2: findmnt: failed to parse swaparea priority option"),
    (["/dev/xvdb none swap discard=always 0 0"], "fstab:2: findmnt: unsupported swaparea discard policy: always"),
    (["/dev/xvdc /usr/local/x ext4 defaults 0 2", "/dev/xvdd /usr/local ext4 defaults 0 2"],
     "fstab:2: findmnt: wrong order: /usr/local/x specified before /usr/local"),
])
def test_what_is_wrong_in_the_text_itself_is_refused_with_its_line(lines, message):
    text = "/dev/xvda1 / ext4 defaults 0 1\n" + "\n".join(lines) + "\n"
    with pytest.raises(BootConfigError) as refused:
        check_fstab(text)
    assert str(refused.value) == message


def test_text_level_warnings_come_back_naming_the_line():
    text = "# x\n/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdb /data ext4 defaults 0 2\n/dev/xvdc /data ext4 defaults 0 2\n"
    assert check_fstab(text) == ["fstab:3: findmnt: target specified more than once"]


def test_two_swap_areas_are_not_a_mount_point_listed_twice(tmp_path):
    text = "/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdb none swap sw 0 0\n/dev/xvdc none swap sw 0 0\n"
    assert "[W] target specified more than once" in findmnt(text, tmp_path).stdout
    assert check_fstab(text) == []


def test_an_unescaped_blank_in_a_label_is_caught_before_it_is_written():
    """What an editor that forgot to escape would write: the fields shift and 'defaults' lands in the dump column."""
    with pytest.raises(BootConfigError, match=r"^fstab:1: the dump field 'defaults' is not a number$"):
        check_fstab("LABEL=My Photos\t/photos\text4\tdefaults\t0 2\n")
    escaped = rename_devices("/dev/nvme1n1 /photos ext4 defaults 0 2\n", "fstab",
                             to_tag({"/dev/nvme1n1": {"LABEL": "My Photos"}}, "LABEL"))
    assert check_fstab(escaped) == []


@pytest.mark.parametrize("line", [
    "/dev/sda1 / ext4", "/dev/sda1 / ext4 defaults", "/dev/sda1 / ext4 defaults 0",
    "/dev/sda1 / ext4 defaults -1 +1", "/dev/sda1 / ext4 defaults 0 1 extra fields # note",
    "  \t/dev/sda1\t/\text4\tdefaults 0 1\r",
])
def test_lines_our_parser_tolerates_libmount_parses_too(line, tmp_path):
    assert "parse error at line" not in findmnt(line + "\n", tmp_path).stderr


@pytest.mark.parametrize("line", [
    "/dev/sda1 /", "/dev/sda1", "/dev/sda1 / ext4 defaults x 1", "/dev/sda1 / ext4 defaults 0 1x",
    "/dev/sda1 / ext4 defaults 0x 1",
])
def test_lines_our_parser_refuses_libmount_skips_with_a_parse_error(line, tmp_path):
    assert "parse error at line 1" in findmnt(line + "\n", tmp_path).stderr
    with pytest.raises(BootConfigError, match=r"^fstab:1: "):
        check_fstab(line + "\n")


@pytest.mark.parametrize("name", ["debian12-ec2.grub.cfg", "hand-written-oneshot.grub.cfg",
                                  *[f"golden/{f}.{t}" for f, t in GOLDEN if t.startswith("cfg.")]])
def test_corpus_and_golden_grub_cfgs_pass_grub_script_check(name):
    assert check_grub_cfg(read(name), name) is None


@pytest.mark.parametrize("text, message", [
    ("set default=0\nmenuentry 'a' {\n  linux /vmlinuz\n", "grub.cfg:3: grub-script-check: syntax error"),
    ("if [ -s $prefix/grubenv ]; then\n  load_env\n", "grub.cfg:2: grub-script-check: syntax error"),
    ("set default=\"0\nmenuentry 'a' {\n linux /v\n}\n", "grub.cfg:4: grub-script-check: syntax error"),
    ("menuentry 'a' {\n}\n", "grub.cfg:2: grub-script-check: syntax error"),
    ("}\n", "grub.cfg:1: grub-script-check: syntax error"),
])
def test_grub_cfg_syntax_errors_are_refused_with_the_line_grub_reports(text, message):
    with pytest.raises(BootConfigError) as refused:
        check_grub_cfg(text)
    assert str(refused.value) == message


def test_grub_script_check_knows_syntax_not_commands_so_a_menu_lst_proves_nothing():
    assert check_grub_cfg("frobnicate --now\nlinux\n") is None
    assert check_grub_cfg(read("seed-ec2.menu.lst")) is None


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*default-grub")) + ["ubuntu-2204-cloudimg-50.cfg"]
                         + [f"golden/{f}.{t}" for f, t in GOLDEN if t.startswith("default.")])
def test_corpus_and_golden_default_grub_files_parse_as_shell(name):
    assert check_default_grub(read(name), name) is None


def test_a_default_grub_sh_cannot_parse_is_refused_with_the_line_sh_names():
    """dash names the line it stopped at: for an unterminated quote, the end of the file."""
    with pytest.raises(BootConfigError,
                       match=r"^/etc/default/grub:4: sh -n: Syntax error: Unterminated quoted string$"):
        check_default_grub('GRUB_DEFAULT=0\n\nGRUB_CMDLINE_LINUX="quiet\n')


def test_a_default_grub_with_crlf_command_lines_is_refused_because_sh_keeps_the_cr():
    text = "# edited on Windows\r\nGRUB_DEFAULT=saved\r\n"
    assert subprocess.run(["sh", "-c", '. "$1"; [ "$GRUB_DEFAULT" = saved ]', "sh", "/dev/stdin"],
                          input=text, text=True).returncode == 1, "sh reads saved\\r, not saved"
    with pytest.raises(BootConfigError, match=r"^g:2: ends in CR LF, and sh keeps the CR in the value"):
        check_default_grub(text, "g")


def test_a_fresh_block_is_byte_for_byte_what_grub_editenv_creates(tmp_path):
    subprocess.run(["grub-editenv", str(tmp_path / "env"), "create"], check=True)
    assert new_grubenv() == (tmp_path / "env").read_text()


def test_grub_editenv_reads_our_blocks_as_we_do():
    env = edit_grubenv(read("debian12.grubenv"), "e", {"next_entry": "1", "odd": "a\\b\nc", "unicode": "ü"})
    assert check_grubenv(env, "e") == {"saved_entry": check_grubenv(read("debian12.grubenv"))["saved_entry"],
                                       "next_entry": "1", "odd": "a\\b\nc", "unicode": "ü"}
    assert check_grubenv(read("golden/debian12.grubenv.env.arm"))["next_entry"].startswith("gnulinux-advanced-")


def test_a_grubenv_of_the_wrong_size_is_refused_even_though_grub_editenv_lists_it():
    with pytest.raises(BootConfigError, match=r"^e: 1023 bytes; a GRUB environment block is exactly 1024$"):
        check_grubenv(new_grubenv()[:-1], "e")


def test_menu_lst_is_checked_by_our_parser():
    check_menulst(read("ubuntu-1004-ec2.menu.lst"))
    with pytest.raises(BootConfigError, match=r"^menu.lst:1: 'kernel' before the first 'title'$"):
        check_menulst("kernel /boot/vmlinuz\n")


@pytest.mark.parametrize("path, refused", [
    ("/etc/fstab", "/dev/xvda1\n"), ("/mnt/img/etc/fstab", "/dev/xvda1\n"), ("/boot/grub/menu.lst", "kernel /k\n"),
    ("/boot/grub/grub.conf", "kernel /k\n"), ("/etc/default/grub", "X='\n"),
    ("/etc/default/grub.d/50-cloudimg-settings.cfg", "X='\n"), ("/boot/grub/grub.cfg", "}\n"),
    ("/boot/grub2/grub.cfg", "}\n"), ("/boot/grub/grubenv", "x"),
])
def test_each_boot_file_has_its_validator(path, refused):
    with pytest.raises(BootConfigError, match=rf"^{path}"):
        validator_for(path)(refused)


def test_a_file_without_a_validator_is_refused():
    with pytest.raises(BootConfigError, match=r"^bootcfg: no validator for /etc/passwd$"):
        validator_for("/etc/passwd")


def test_a_missing_tool_is_one_line_naming_the_package_script(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BootConfigError,
                       match=r"^fstab: cannot check it: findmnt is not installed \(scripts/install-deps"):
        check_fstab("/dev/xvda1 / ext4 defaults 0 1\n")
