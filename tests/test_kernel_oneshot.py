"""The one-shot boot edits deploy writes (and the qemu one-shot test boots): grubenv, menu.lst, panic=."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bootcfg_cases import read
from orchestrator.bootcfg import BootConfigError
from orchestrator.bootcfg.grubenv import new_grubenv, parse_grubenv
from orchestrator.bootcfg.menulst import default_title, parse_menu
from orchestrator.kernel import oneshot

OLD = "Gentoo Linux 3.6.0-ec2"


def test_grub2_titles_are_what_10_linux_writes():
    assert oneshot.grub2_entry_title("Gentoo", "6.1.0") == "Gentoo GNU/Linux, with Linux 6.1.0"
    assert oneshot.grub2_entry_title("", "6.1.0") == "GNU/Linux, with Linux 6.1.0"
    assert oneshot.grub2_entry_path("Gentoo", "6.1.0") == (
        "Advanced options for Gentoo GNU/Linux>Gentoo GNU/Linux, with Linux 6.1.0")
    assert oneshot.grub2_entry_path("Gentoo", "6.1.0", submenu=False) == "Gentoo GNU/Linux, with Linux 6.1.0"
    with pytest.raises(BootConfigError):
        oneshot.grub2_entry_title("Gentoo", "6.1>evil")


def test_grub2_arm_is_grub_reboot_and_promote_clears_it():
    armed = oneshot.grub2_arm(new_grubenv(), "new", "old")
    assert parse_grubenv(armed) == {"saved_entry": "old", "next_entry": "new"}
    assert oneshot.grub2_armed(armed) == ("new", "old")
    assert oneshot.grub2_arm(armed, "new", "old") == armed
    promoted = oneshot.grub2_promote(armed, "new")
    assert parse_grubenv(promoted) == {"saved_entry": "new", "next_entry": ""}
    with pytest.raises(BootConfigError):
        oneshot.grub2_arm(new_grubenv(), "same", "same")


@pytest.mark.skipif(not shutil.which("grub-editenv"), reason="grub-editenv is not installed")
def test_grub2_arm_reads_back_like_grub_reboot_wrote_it(tmp_path):
    env = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(env), "create"], check=True)
    env.write_text(oneshot.grub2_arm(env.read_text(), "a>b", "c"))
    listed = subprocess.run(["grub-editenv", str(env), "list"], check=True, capture_output=True, text=True).stdout
    assert listed.splitlines() == ["saved_entry=c", "next_entry=a>b"]


def test_panic_param_refuses_zero_and_non_numbers():
    assert oneshot.panic_param(10) == ("panic", "10")
    for bad in (0, -1, "10", True):
        with pytest.raises(BootConfigError, match="panic_seconds"):
            oneshot.panic_param(bad)


def test_menulst_new_entry_has_panic_and_the_old_stays_fallback():
    seed = read("seed-ec2.menu.lst")
    added = oneshot.menulst_add(seed, "6.1.0-ec2", OLD, panic_seconds=10)
    new = oneshot.legacy_title("6.1.0-ec2")
    assert added.startswith(seed)
    assert "kernel /boot/vmlinuz-6.1.0-ec2 root=/dev/sda1 rootfstype=ext3 panic=10\n" in added
    assert "panic=" not in seed
    armed, default_file = oneshot.menulst_arm(added, new, OLD)
    menu = parse_menu(armed)
    assert menu.get("default").args == "saved" and menu.get("fallback").args == "0"
    assert oneshot.legacy_saved_default(default_file) == 1
    assert "savedefault fallback" in armed.split(f"title {new}")[1]
    promoted = oneshot.menulst_promote(armed, new)
    assert default_title(promoted) == new and "savedefault" not in promoted
    assert oneshot.menulst_add(added, "6.1.0-ec2", OLD, panic_seconds=10) == added
