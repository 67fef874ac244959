"""The one-shot boot of a new kernel, as pure text -> text functions: what deploy writes, and what the qemu test boots.

A new kernel is booted **once** while the old one stays the default:

* GRUB 2: ``grubenv`` gets ``next_entry=<new>`` and ``saved_entry=<old>``
  (exactly what ``grub-reboot`` writes; grub.cfg from ``grub-mkconfig`` with
  ``GRUB_DEFAULT=saved`` boots ``next_entry`` once and clears it before booting).
  After the new kernel was seen running, ``saved_entry=<new>`` makes it the default.
* GRUB legacy: ``default saved``, ``fallback <old>``, ``savedefault fallback`` in the
  new entry, and the saved default (``/boot/grub/default``, what ``grub-set-default N``
  writes) pointing at the new entry: the moment GRUB starts the new kernel it saves
  the old one as the default, so any reboot after that comes back on the old kernel.

Either way the new entry carries ``panic=N`` on its command line (and only it), so a
new kernel that panics reboots by itself into the old default.
"""

from __future__ import annotations

from orchestrator.bootcfg import cmdline, grubcfg, grubenv, menulst
from orchestrator.bootcfg.text import BootConfigError, join_lines, split_lines, words

GRUBENV = "/boot/grub/grubenv"
MENU_LST = "/boot/grub/menu.lst"
LEGACY_DEFAULT = "/boot/grub/default"


def panic_param(seconds: int) -> tuple[str, str]:
    """``("panic", "N")``: the kernel reboots N seconds after a panic instead of hanging on it."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise BootConfigError(f"kernel.deploy.panic_seconds: {seconds!r} is not a positive number of seconds "
                              "(0 would make a panicking kernel hang instead of falling back)")
    return ("panic", str(seconds))


# --- GRUB 2 ---------------------------------------------------------------------------------

def grub2_os(distributor: str) -> str:
    """``$OS`` in grub-mkconfig's 10_linux: ``"<GRUB_DISTRIBUTOR> GNU/Linux"``, or ``GNU/Linux`` without one."""
    distributor = distributor.strip()
    return f"{distributor} GNU/Linux" if distributor else "GNU/Linux"


def grub2_entry_title(distributor: str, version: str) -> str:
    """The title 10_linux gives the entry of kernel ``version``: ``"Gentoo GNU/Linux, with Linux 6.1.0"``."""
    if not version or any(c in version for c in "\n'>"):
        raise BootConfigError(f"kernel version {version!r} cannot be a GRUB entry title")
    return f"{grub2_os(distributor)}, with Linux {version}"


def grub2_submenu_title(distributor: str) -> str:
    """The submenu 10_linux puts every kernel's entry in (unless ``GRUB_DISABLE_SUBMENU=y``)."""
    return f"Advanced options for {grub2_os(distributor)}"


def grub2_entry_path(distributor: str, version: str, *, submenu: bool = True) -> str:
    """What ``grub-reboot``/``next_entry`` names: ``"<submenu>><title>"``, or the bare title without a submenu."""
    title = grub2_entry_title(distributor, version)
    return f"{grub2_submenu_title(distributor)}>{title}" if submenu else title


def grub2_arm(grubenv_text: str, new_entry: str, old_entry: str, name: str = GRUBENV) -> str:
    """``grubenv`` booting ``new_entry`` once, ``old_entry`` staying the default (``grub-reboot``'s edit)."""
    if new_entry == old_entry:
        raise BootConfigError(f"{name}: the new and the old entry are both {new_entry!r}")
    return grubenv.arm_next_entry(grubenv_text, name, new_entry, old_entry)


def grub2_promote(grubenv_text: str, new_entry: str, name: str = GRUBENV) -> str:
    """``grubenv`` with ``new_entry`` the default, after it was seen running; a pending one-shot is cleared."""
    return grubenv.promote_saved_entry(grubenv_text, name, new_entry)


def grub2_armed(grubenv_text: str, name: str = GRUBENV) -> tuple[str, str]:
    """``(next_entry, saved_entry)`` of a block (empty strings when unset)."""
    values = grubenv.parse_grubenv(grubenv_text, name)
    return values.get("next_entry", ""), values.get("saved_entry", "")


# --- GRUB legacy ----------------------------------------------------------------------------

def legacy_title(version: str) -> str:
    """The title of the entry deploy adds for kernel ``version`` to menu.lst."""
    if not version or "\n" in version:
        raise BootConfigError(f"kernel version {version!r} cannot be a menu.lst title")
    return f"Gentoo Linux {version}"


def menulst_add(text: str, version: str, like: str, *, panic_seconds: int, boot_dir: str = "/boot",
                name: str = MENU_LST) -> str:
    """menu.lst with an entry for ``version`` copied from the entry titled ``like``, ``panic=N`` on it only."""
    key, value = panic_param(panic_seconds)
    entry = menulst.entry_like(text, name, like, title=legacy_title(version),
                               kernel=f"{boot_dir}/vmlinuz-{version}", initrd=f"{boot_dir}/initramfs-{version}.img",
                               params={key: value})
    return menulst.add_entry(text, name, entry)


def menulst_arm(text: str, new_title: str, old_title: str, name: str = MENU_LST) -> tuple[str, str]:
    """``(menu.lst, /boot/grub/default)`` booting ``new_title`` once with ``old_title`` as the fallback."""
    armed = menulst.arm_oneshot(text, name, new_title, old_title)
    index = menulst.find_entry(menulst.parse_menu(armed, name), new_title, name).index
    return armed, legacy_default_file(index)


def menulst_promote(text: str, new_title: str, name: str = MENU_LST) -> str:
    """menu.lst with ``new_title`` the default (``default N``), after it was seen running."""
    return menulst.promote(text, name, new_title)


def legacy_default_file(index: int) -> str:
    """``/boot/grub/default`` as ``grub-set-default N`` writes it.

    GRUB 0.97 rewrites this file in place at boot (``savedefault``), so it keeps
    the fixed padding lines grub-set-default gives it.
    """
    if index < 0:
        raise BootConfigError(f"{LEGACY_DEFAULT}: entry {index} does not exist")
    padding = "#\n" * 10
    return (f"{index}\n{padding}# WARNING: If you want to edit this file directly, do not remove any line\n"
            "# from this file, including this warning. Using `grub-set-default' is\n"
            "# strongly recommended.\n")


def legacy_saved_default(text: str) -> int | None:
    """The entry number ``/boot/grub/default`` holds (its first line), ``None`` when it holds none."""
    first = text.split("\n", 1)[0].strip()
    return int(first) if first.isdigit() else None


def grub2_find_entry(cfg_text: str, title: str, name: str = "/boot/grub/grub.cfg") -> str | None:
    """The ``next_entry`` path (ids where grub-mkconfig gave them) of the entry titled ``title``, if grub.cfg has it."""
    found = [entry.path for entry in grubcfg.menu_entries(cfg_text, name) if entry.title == title]
    return found[0] if found else None


def grub2_panic_on_entry(cfg_text: str, path: str, seconds: int, name: str = "/boot/grub/grub.cfg") -> str:
    """grub.cfg with ``panic=N`` on the ``linux`` line of the entry at ``path`` only; every other byte kept.

    grub-mkconfig gives every entry the same ``GRUB_CMDLINE_LINUX``, so the
    parameter goes onto the generated file: only the kernel on trial reboots by
    itself after a panic. The next grub-mkconfig drops it, which is right once
    the kernel was promoted.
    """
    key, value = panic_param(seconds)
    lines = {line.number: line for line in split_lines(cfg_text)}
    hits = [opened for entry, opened in grubcfg._walk(cfg_text, name) if entry.path == path and opened.linux]
    if not hits:
        raise BootConfigError(f"{name}: no entry {path!r} with a linux line")
    for opened in hits:
        line = opened.linux
        ws = words(line.body)
        start = ws[1].end() if len(ws) > 1 else len(line.body)
        lines[line.number] = line.with_body(line.body[:start] + cmdline.set_params(line.body[start:], {key: value}))
    return join_lines(list(lines.values()))
