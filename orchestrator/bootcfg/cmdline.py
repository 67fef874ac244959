"""Kernel command lines as blank-separated words: rename device parameters, set others.

Shared by menu.lst ``kernel`` lines, ``/etc/default/grub`` values and grub.cfg
``linux`` lines. A word is changed in place (its neighbours and the blanks between
them stay as they were); a new word goes after the last one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .devices import KERNEL_NATIVE_TAGS, TAGS, Rename, Unmapped
from .text import BootConfigError, splice, words

# Parameters whose value is a block device: the root (genkernel's initramfs reads real_root=)
# and the hibernation image, which dracut waits for at boot when it is missing.
DEVICE_PARAMS = ("root", "real_root", "resume")
# Parameters that may be given more than once with different values: "set" means "present".
MULTI_VALUED = ("console",)
SAFE_WORD = re.compile(r"[^\s\"'`$\\;&|<>(){}#]+")


def rename_devices(cmdline: str, rename: Rename, *, initramfs: bool = True) -> str:
    """``cmdline`` with the value of every ``root=``, ``real_root=`` and ``resume=`` renamed.

    ``initramfs=False`` (an entry without one) refuses ``UUID=``/``LABEL=`` values:
    only an initramfs can find a root by them; the kernel alone knows ``PARTUUID=``.
    """
    edits = []
    for word in words(cmdline):
        key, eq, value = word[0].partition("=")
        if key not in DEVICE_PARAMS or not eq:
            continue
        new = rename(value)
        if new is None or new == value:
            continue
        _check_writable(key, new, initramfs)
        edits.append((word.start(), word.end(), f"{key}={new}"))
    return splice(cmdline, edits)


def _check_writable(key: str, new: str, initramfs: bool) -> None:
    if not SAFE_WORD.fullmatch(new):
        raise Unmapped(f"{key}={new} cannot be written on a kernel command line; use UUID")
    tag = new.partition("=")[0]
    if not initramfs and tag in TAGS and tag not in KERNEL_NATIVE_TAGS:
        raise Unmapped(f"{key}={new} needs an initramfs and this entry has none (PARTUUID= works without)")


def set_params(cmdline: str, params: Mapping[str, str]) -> str:
    """``cmdline`` with ``key=value`` for each of ``params``: existing words get the value in place.

    Every occurrence of a key gets the value (the kernel obeys the last one, so
    changing only the first would change nothing). ``console`` may legitimately
    appear several times (``console=tty1 console=ttyS0``): it is only added when
    no console names that device yet (``console=ttyS0,115200n8`` already is
    ``console=ttyS0``, with its speed, and is kept as it is).
    """
    for key, value in params.items():
        cmdline = _set_param(cmdline, key, check_param(key, value))
    return cmdline


def check_param(key: str, value: str) -> str:
    """``key=value`` as one safe word, or a one-line error naming it."""
    word = f"{key}={value}"
    if not SAFE_WORD.fullmatch(word) or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise BootConfigError(f"kernel parameter {word!r}: blanks, quotes and shell characters are not allowed")
    return word


def _set_param(cmdline: str, key: str, word: str) -> str:
    found = [w for w in words(cmdline) if w[0].partition("=")[0] == key]
    if key in MULTI_VALUED:
        device = _device_of(word)
        return cmdline if any(_device_of(w[0]) == device for w in found) else append_word(cmdline, word)
    if not found:
        return append_word(cmdline, word)
    return splice(cmdline, [(w.start(), w.end(), word) for w in found if w[0] != word])


def _device_of(word: str) -> str:
    """``console=ttyS0,115200n8`` -> ``ttyS0``: the same console with other options is the same console."""
    return word.partition("=")[2].partition(",")[0]


def append_word(cmdline: str, word: str) -> str:
    """``word`` after the last word of ``cmdline``, keeping any blanks that trail it."""
    last = words(cmdline)
    if not last:
        return cmdline + word
    end = last[-1].end()
    return cmdline[:end] + " " + word + cmdline[end:]


def get_params(cmdline: str, key: str) -> list[str]:
    """The values ``key=`` has on ``cmdline``, in order."""
    return [w[0].partition("=")[2] for w in words(cmdline) if w[0].partition("=")[0] == key and "=" in w[0]]
