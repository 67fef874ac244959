"""The one-shot boot of a new kernel, proven in qemu: GRUB 2 boots the new entry once, and a new kernel
that panics brings the machine back on the old one by itself.

The boot config is what our code writes: /etc/default/grub edited by ``bootcfg.default_grub``
(``GRUB_DEFAULT=saved``), the grubenv armed by ``kernel.oneshot.grub2_arm`` (``next_entry`` = the new
entry's ``submenu>title`` path, ``saved_entry`` = the old one's) and promoted by ``grub2_promote``, and
``panic=N`` from ``oneshot.panic_param`` on the new kernel's command line only. grub.cfg's header is
what this machine's own ``/etc/grub.d/00_header`` emits for those settings, its entries are laid out
as 10_linux lays them out (see ``qemu_lab``). GRUB (grub-pc-bin, i386-pc) runs from a raw disk image:
no loop devices, no mounts.

Both kernels are Debian's cloud kernel (it boots fastest under TCG), unpacked by install-deps --test,
never installed; what tells them apart is their entry and their initramfs: the "broken" one's /init
exits, so the kernel panics, and ``panic=N`` reboots the guest (qemu resets it: no ``-no-reboot``); a good /init prints a marker with
its command line and powers off, which ends qemu.
"""

from __future__ import annotations

import os
import re

import pytest

import qemu_lab
from kernel_lab import busybox_initramfs
from orchestrator.bootcfg import cmdline, validate
from orchestrator.bootcfg.grubenv import new_grubenv
from orchestrator.kernel import oneshot

KERNEL = qemu_lab.test_kernel()

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the initramfs images need mknod /dev/console (root)"),
    pytest.mark.slow,  # 20-25 s a test on 2 idle cores, 35-47 s on a busy build box: TCG, two boots each
    pytest.mark.timeout(600),  # hangs fail in the guest's own deadline first, with the console's tail
]

GRUBENV = "/boot/grub/grubenv"
PANIC_S = 2
DISTRIBUTOR = "Gentoo"  # sys-boot/grub's /etc/default/grub, the one qemu_lab edits
GOOD_INIT = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo "oneshot-lab: {name} kernel up, cmdline [$(/bin/busybox cat /proc/cmdline)]"
/bin/busybox poweroff -f
"""
BROKEN_INIT = """#!/bin/sh
echo "oneshot-lab: broken init exits"
exit 1
"""


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The initramfs images (built once) and the /etc/default/grub every disk is configured from."""
    base = tmp_path_factory.mktemp("oneshot-parts")
    missing = qemu_lab.missing_tools()
    assert not missing, f"missing {missing}: sh scripts/install-deps --test installs them"
    assert KERNEL is not None, (f"no {qemu_lab.TEST_KERNEL_DIR}/boot/vmlinuz-*: sh scripts/install-deps --test "
                                "unpacks Debian's cloud kernel there")
    return {
        "old": busybox_initramfs(base, GOOD_INIT.format(name="old"), "old.img"),
        "new": busybox_initramfs(base, GOOD_INIT.format(name="new"), "new.img"),
        "broken": busybox_initramfs(base, BROKEN_INIT, "broken.img"),
        "settings": qemu_lab.default_grub_text(),
    }


def kernels(parts, new_init: str) -> tuple[qemu_lab.Kernel, qemu_lab.Kernel]:
    """(new, old): the new one with ``panic=N`` added to its command line only."""
    release = KERNEL.name.removeprefix("vmlinuz-")
    base = qemu_lab.kernel_cmdline(parts["settings"])
    new = qemu_lab.Kernel(f"{release}-new", KERNEL, parts[new_init],
                          cmdline.set_params(base, dict([oneshot.panic_param(PANIC_S)])))
    old = qemu_lab.Kernel(release, KERNEL, parts["old"], base)
    return new, old


def path_of(kernel: qemu_lab.Kernel) -> str:
    return oneshot.grub2_entry_path(DISTRIBUTOR, kernel.version)


def loading(kernel: qemu_lab.Kernel) -> str:
    """GRUB's echo as the entry of ``kernel`` starts (10_linux's ``Loading Linux <version> ...``)."""
    return rf"^\s*Loading Linux {re.escape(kernel.version)} \.\.\.\s*$"


def grubenv_on(disk: qemu_lab.BootDisk) -> dict[str, str]:
    """The disk's grubenv as ``grub-editenv list`` reads it (and our parser agrees)."""
    return validate.check_grubenv(disk.read(GRUBENV), GRUBENV)


def armed_disk(tmp_path, parts, new, old) -> qemu_lab.BootDisk:
    armed = oneshot.grub2_arm(new_grubenv(), path_of(new), path_of(old))
    assert validate.check_grubenv(armed, GRUBENV) == {"saved_entry": path_of(old), "next_entry": path_of(new)}
    return qemu_lab.make_disk(tmp_path, [new, old], armed, parts["settings"])


def test_a_panicking_new_kernel_boots_once_and_grub_comes_back_on_the_old_one(tmp_path, parts):
    new, old = kernels(parts, "broken")
    disk = armed_disk(tmp_path, parts, new, old)
    with qemu_lab.booted(disk.path, tmp_path / "console.log") as guest:
        guest.expect(loading(new))
        guest.expect(r"oneshot-lab: broken init exits")
        guest.expect(r"Kernel panic - not syncing")
        guest.expect(rf"Rebooting in {PANIC_S} seconds")
        guest.expect(loading(old))
        up = guest.expect(r"oneshot-lab: old kernel up")
        assert guest.powered_off() == 0
        assert guest.count(loading(new)) == 1, guest.tail()
    assert f"/boot/vmlinuz-{old.version} " in up and "panic=" not in up
    assert grubenv_on(disk) == {"saved_entry": path_of(old), "next_entry": ""}


def test_after_promote_the_new_kernel_boots_by_default(tmp_path, parts):
    new, old = kernels(parts, "new")
    disk = armed_disk(tmp_path, parts, new, old)
    with qemu_lab.booted(disk.path, tmp_path / "once.log") as guest:
        guest.expect(loading(new))
        guest.expect(r"oneshot-lab: new kernel up")
        assert guest.powered_off() == 0
    seen = grubenv_on(disk)
    assert seen == {"saved_entry": path_of(old), "next_entry": ""}, "GRUB did not clear the one-shot entry"

    disk.replace(GRUBENV, oneshot.grub2_promote(disk.read(GRUBENV), path_of(new)))
    with qemu_lab.booted(disk.path, tmp_path / "promoted.log") as guest:
        up = guest.expect(r"oneshot-lab: new kernel up")
        assert guest.powered_off() == 0
        assert guest.count(loading(new)) == 1 and guest.count(loading(old)) == 0, guest.tail()
    assert f"/boot/vmlinuz-{new.version} " in up and f"panic={PANIC_S}" in up
    assert grubenv_on(disk) == {"saved_entry": path_of(new), "next_entry": ""}
