"""Validators: the real tools read a new boot config text before it may replace the old file.

This is the one module of the room that does I/O: each check writes the text to
a temporary file, runs the tool on it (argv lists, ``LC_ALL=C`` for stable
messages) and turns what the tool says into one line naming the file and line.
They run on the build box, about files for another machine, so they keep what
depends on the text and drop what depends on the box they run on.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fstab, grubenv, menulst
from .text import BootConfigError, is_blank_or_comment, refuse, split_lines

TIMEOUT = 60
# findmnt --verify messages about the machine it runs on, not about the file: whether a mount
# point or device exists here, what the devices here hold, which file systems this kernel knows,
# whether this box's systemd has reloaded its own fstab. (util-linux misc-utils/findmnt-verify.c)
FINDMNT_HOST_CHECKS = (
    "unreachable on boot required target", "unreachable target", "target is not a directory",
    "non-canonical target path", "unreachable on boot required source", "unreachable: ",
    "unreachable source", "non-bind mount source", "is not a block device",
    "seems unsupported by the current kernel", "cannot detect on-disk filesystem type",
    "does not match with on-disk", "your fstab has been modified",
)
FINDMNT_MESSAGE = re.compile(r"   \[([EW ])\] (.*)")
FINDMNT_PARSE_ERROR = re.compile(r"findmnt: .*: parse error at line ([0-9]+) -- ignored")
FINDMNT_SUMMARY = re.compile(r"([0-9]+) parse errors?, ([0-9]+) errors?, ([0-9]+) warnings?")


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


def _run_on(text: str, argv: Callable[[str], list[str]], name: str, filename: str = "file") -> _Run:
    """Run ``argv(path)`` on ``text`` written to a temporary file named ``filename``."""
    with tempfile.TemporaryDirectory(prefix="bootcfg-check-") as scratch:
        path = Path(scratch) / filename
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        command = argv(str(path))
        try:
            done = subprocess.run(command, capture_output=True, timeout=TIMEOUT,
                                  env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError:
            raise BootConfigError(f"{name}: cannot check it: {command[0]} is not installed "
                                  "(scripts/install-deps installs it)") from None

    def decode(output: bytes) -> str:
        return output.decode("utf-8", "surrogateescape").replace(str(path), filename)

    return _Run(done.returncode, decode(done.stdout), decode(done.stderr))


def check_fstab(text: str, name: str = "fstab") -> list[str]:
    """``findmnt --verify`` on ``text``: refuse what libmount finds wrong in the file; return its warnings.

    Refused (about the text, whatever machine reads it): lines libmount cannot
    parse (it would skip them at boot), an undefined source or mount point, an
    unknown tag (``UUDI=...``), a mount point listed before the one it lives under
    (``/usr/local`` before ``/usr``), a bad swap ``pri=`` or ``discard=``.
    Ignored (about this build box, not the host that will boot the file): mount
    points and devices that do not exist here, tags no disk here carries, what
    the disks here hold, the file systems this kernel supports. ``-C`` keeps
    findmnt from resolving tags and paths through this box's disks and symlinks.
    Returned as warnings: a mount point listed twice (not two swap areas, whose
    ``none`` findmnt counts), a root pass number that is not 1, ``none`` as a
    type outside bind mounts.
    Our own parser runs first, so a malformed line is refused with its number
    even if findmnt changed its mind about it.
    """
    entries = fstab.entries(text, name)
    run = _run_on(text, lambda p: ["findmnt", "-C", "--verify", "--tab-file", p], name, "fstab")
    problems, warnings = _findmnt_messages(run.stdout, entries)
    warnings = [str(refuse(name, line, message)) for line, message in warnings]
    for m in FINDMNT_PARSE_ERROR.finditer(run.stderr):
        problems.insert(0, (int(m[1]), "findmnt: parse error"))
    summary = FINDMNT_SUMMARY.search(run.stderr)
    if summary and int(summary[1]) and not FINDMNT_PARSE_ERROR.search(run.stderr):
        problems.append((None, f"findmnt: {summary[0]}"))
    if not summary and run.returncode and "Success" not in run.stdout:
        problems.append((None, f"findmnt exited {run.returncode}: {run.stderr.strip() or run.stdout.strip()}"))
    if problems:
        raise refuse(name, problems[0][0], problems[0][1])
    return warnings


def _findmnt_messages(stdout: str, entries: list[fstab.Entry]) -> tuple[list, list]:
    """Text problems and warnings as ``(line, message)``, each tied to its entry's line."""
    problems, warnings, pos, entry = [], [], 0, None
    for out in stdout.splitlines():
        m = FINDMNT_MESSAGE.fullmatch(out)
        if not m:
            entry, pos = _next_entry(out, entries, pos)
            continue
        kind, message = m.groups()
        if kind == " " or any(check in message for check in FINDMNT_HOST_CHECKS) or _swap_twice(entry, message):
            continue
        line = entry.line.number if entry else None
        (problems if kind == "E" else warnings).append((line, f"findmnt: {message}"))
    return problems, warnings


def _swap_twice(entry: fstab.Entry | None, message: str) -> bool:
    """Every swap area has the mount point ``none``: findmnt calls the second one a duplicate; it is not."""
    return entry is not None and entry.fstype == "swap" and message == "target specified more than once"


def _next_entry(target: str, entries: list[fstab.Entry], pos: int) -> tuple[fstab.Entry | None, int]:
    """The next entry (from ``pos``) whose mount point findmnt printed as ``target``."""
    for i in range(pos, len(entries)):
        if entries[i].target == target:
            return entries[i], i + 1
    return None, pos


def check_grub_cfg(text: str, name: str = "grub.cfg") -> None:
    """``grub-script-check``: refuse a grub.cfg GRUB's script parser rejects.

    It catches syntax only: an unclosed ``{``, ``if`` without ``fi``, an
    unterminated quote, a stray ``}`` or ``fi``, a menuentry with an empty body.
    It does not know commands (``foo bar`` passes), arguments, or whether a
    kernel exists; and GRUB legacy's menu.lst passes it as a list of commands,
    so it proves nothing about one.
    """
    run = _run_on(text, lambda p: ["grub-script-check", p], name, "grub.cfg")
    if run.returncode:
        m = re.search(r"Syntax error at line ([0-9]+)", run.stderr)
        detail = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
        raise refuse(name, int(m[1]) if m else None, "grub-script-check: syntax error" if m else detail)


def check_default_grub(text: str, name: str = "/etc/default/grub") -> None:
    """``sh -n``: the file is shell that grub-mkconfig sources; refuse it when sh cannot parse it.

    Syntax only (an unterminated quote, a dangling ``if``): nothing is run, so a
    bad value is not caught here; the editors keep values plain. A command line
    ending in CR LF is refused first: sh keeps the CR, so ``GRUB_DEFAULT=saved``
    would be ``saved\r`` to grub-mkconfig, which does not know that entry.
    """
    for line in split_lines(text):
        if line.end == "\r\n" and not is_blank_or_comment(line.body):
            raise refuse(name, line.number, "ends in CR LF, and sh keeps the CR in the value; "
                                            "convert the file to LF line endings")
    run = _run_on(text, lambda p: ["sh", "-n", p], name, "grub")
    if run.returncode:
        m = re.search(r": ([0-9]+): (.*)", run.stderr)
        raise refuse(name, int(m[1]) if m else None, f"sh -n: {m[2] if m else run.stderr.strip()}")


def check_grubenv(text: str, name: str = "grubenv") -> dict[str, str]:
    """Our reading of the block (exactly 1024 bytes, well formed) must be ``grub-editenv list``'s."""
    ours = grubenv.parse_grubenv(text, name)
    run = _run_on(text, lambda p: ["grub-editenv", p, "list"], name, "grubenv")
    expected = "".join(f"{k}={v}\n" for k, v in ours.items())
    if run.returncode or run.stdout != expected:
        detail = run.stderr.strip() or f"it lists {run.stdout!r}, we read {expected!r}"
        raise refuse(name, None, f"grub-editenv: {detail}")
    return ours


def check_menulst(text: str, name: str = "menu.lst") -> None:
    """No tool reads GRUB legacy's menu.lst on Debian (grub-legacy is gone): our own parser must accept it."""
    menulst.parse_menu(text, name)


CHECKS: tuple[tuple[re.Pattern, Callable[[str, str], object]], ...] = (
    (re.compile(r".*/etc/fstab"), check_fstab),
    (re.compile(r".*/boot/grub/(menu\.lst|grub\.conf)"), check_menulst),
    (re.compile(r".*/etc/default/grub(\.d/[^/]+\.cfg)?"), check_default_grub),
    (re.compile(r".*/boot/grub2?/grub\.cfg"), check_grub_cfg),
    (re.compile(r".*/boot/grub2?/grubenv"), check_grubenv),
)


def validator_for(path: str) -> Callable[[str], list[str]]:
    """The check for the file at ``path``, as ``text -> warnings`` (raises on a refused text)."""
    for pattern, check in CHECKS:
        if pattern.fullmatch(path):
            def validate(text: str, _check=check) -> list[str]:
                result = _check(text, path)
                return result if isinstance(result, list) else []
            return validate
    raise BootConfigError(f"bootcfg: no validator for {path}")
