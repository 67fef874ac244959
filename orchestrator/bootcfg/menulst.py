"""GRUB legacy ``menu.lst`` (``grub.conf``): device renames, a new entry, a one-shot boot, promotion.

A line is blank, a comment (``#`` first), or ``command[ \\t=]args`` the way GRUB
0.97 splits it (``default 0`` and ``default=0`` are the same). ``title`` starts an
entry, which runs until the next ``title``; commands before the first title are
global. Entries are numbered from 0 in file order, which is what ``default`` and
``fallback`` count. Nothing here renumbers: a new entry goes at the end, so every
existing ``default``/``fallback`` still means the entry it meant.

Debian's update-grub (and Ubuntu's update-grub-legacy-ec2) rebuild kernel lines
from the ``# kopt=`` magic comment at the next kernel update, so device renames
are made there too; every other comment is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import cmdline as kcmd
from .devices import Rename, Unmapped
from .text import BLANKS, Line, is_blank_or_comment, join_lines, newline_of, refuse, splice, split_lines, words

COMMAND = re.compile(r"([ \t]*)([A-Za-z_][A-Za-z0-9_]*)(?:([ \t=]+)(.*?))?[ \t]*")
KOPT = re.compile(r"(#[ \t]*kopt(?:_[0-9_]+)?=)(.*)")


@dataclass(frozen=True)
class Command:
    line: Line
    name: str
    args: str
    args_start: int  # where args begin in line.body
    indent: str
    sep: str  # what separates the name from the args: " ", "\t\t", "=", " = "


@dataclass(frozen=True)
class MenuEntry:
    index: int
    title: str
    commands: tuple[Command, ...]  # the title first

    def get(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)


@dataclass(frozen=True)
class Menu:
    lines: list[Line]
    globals: tuple[Command, ...]
    entries: tuple[MenuEntry, ...]

    def get(self, name: str) -> Command | None:
        return next((c for c in self.globals if c.name == name), None)


@dataclass(frozen=True)
class BootEntry:
    """A new entry: ``root`` is GRUB's device (``(hd0)``, ``(hd0,0)``); ``cmdline`` follows the kernel path."""

    title: str
    kernel: str
    cmdline: str = ""
    initrd: str | None = None
    root: str | None = None


def parse_menu(text: str, name: str = "menu.lst") -> Menu:
    """The commands of ``text``, grouped; a line GRUB would choke on is refused with its number."""
    lines = split_lines(text)
    globals_: list[Command] = []
    entries: list[list[Command]] = []
    for line in lines:
        if is_blank_or_comment(line.body):
            continue
        command = _command(line, name)
        if command.name == "title":
            entries.append([command])
        elif entries:
            entries[-1].append(command)
        elif command.name in ("kernel", "initrd"):
            raise refuse(name, line.number, f"'{command.name}' before the first 'title'")
        else:
            globals_.append(command)
    _check_globals(globals_, name)
    return Menu(lines, tuple(globals_),
                tuple(MenuEntry(i, cmds[0].args, tuple(cmds)) for i, cmds in enumerate(entries)))


def _command(line: Line, name: str) -> Command:
    m = COMMAND.fullmatch(line.body)
    if not m:
        raise refuse(name, line.number, f"not a GRUB command line: {line.body.strip()!r}")
    command = Command(line, m[2], m[4] or "", m.start(4) if m[4] else len(line.body), m[1], m[3] or " ")
    if command.name in ("title", "kernel", "root", "initrd") and not command.args:
        raise refuse(name, line.number, f"'{command.name}' without an argument")
    return command


def _check_globals(globals_: list[Command], name: str) -> None:
    for word in ("default", "fallback"):
        found = [c for c in globals_ if c.name == word]
        if len(found) > 1:
            raise refuse(name, found[1].line.number, f"'{word}' given twice (first on line {found[0].line.number})")
    for c in globals_:
        if c.name == "default" and not re.fullmatch(r"[0-9]+|saved", c.args):
            raise refuse(name, c.line.number, f"default {c.args!r} is neither an entry number nor 'saved'")
        if c.name == "fallback" and not re.fullmatch(r"[0-9]+([ \t]+[0-9]+)*", c.args):
            raise refuse(name, c.line.number, f"fallback {c.args!r} is not a list of entry numbers")


def find_entry(menu: Menu, title: str, name: str) -> MenuEntry:
    """The one entry titled ``title``; none or two are refused."""
    found = [e for e in menu.entries if e.title == title]
    if not found:
        raise refuse(name, None, f"no entry titled {title!r}")
    if len(found) > 1:
        raise refuse(name, found[1].commands[0].line.number,
                     f"two entries titled {title!r} (the other on line {found[0].commands[0].line.number})")
    return found[0]


def default_title(text: str, name: str = "menu.lst") -> str | None:
    """The title GRUB boots by default: entry ``default`` (0 when unset); ``None`` for ``default saved``."""
    menu = parse_menu(text, name)
    command = menu.get("default")
    if command and command.args == "saved":
        return None
    index = int(command.args) if command else 0
    if index >= len(menu.entries):
        raise refuse(name, command.line.number if command else None, f"default {index} names no entry")
    return menu.entries[index].title


# --- device renames -------------------------------------------------------------------

def rename_devices(text: str, name: str, rename: Rename) -> str:
    """``root=``, ``real_root=`` and ``resume=`` renamed on every ``kernel`` line and ``# kopt=`` comment.

    GRUB's own ``root (hd0,0)`` lines name BIOS disks, not Linux devices, and are
    left alone. An entry without ``initrd`` is refused ``root=UUID=``/``LABEL=``.
    """
    menu = parse_menu(text, name)
    initramfs = {c.line.number: e.get("initrd") is not None for e in menu.entries for c in e.commands}
    out = []
    for line in menu.lines:
        body = _renamed_line(line, name, rename, initramfs.get(line.number, True))
        out.append(line.with_body(body))
    return join_lines(out)


def _renamed_line(line: Line, name: str, rename: Rename, initramfs: bool) -> str:
    kopt = KOPT.fullmatch(line.body.lstrip(BLANKS))
    try:
        if kopt:
            start = len(line.body) - len(kopt[2])
            return line.body[:start] + kcmd.rename_devices(kopt[2], rename)
        if is_blank_or_comment(line.body):
            return line.body
        command = _command(line, name)
        if command.name != "kernel":
            return line.body
        start = command.args_start + _cmdline_offset(command.args)
        return line.body[:start] + kcmd.rename_devices(line.body[start:], rename, initramfs=initramfs)
    except Unmapped as exc:
        raise refuse(name, line.number, str(exc)) from None


def _cmdline_offset(args: str) -> int:
    """Where the kernel's command line starts in ``kernel [--option...] FILE cmdline``."""
    for word in words(args):
        if not word[0].startswith("--"):
            return word.end()
    return len(args)


def kernel_cmdline(entry: MenuEntry) -> str:
    kernel = entry.get("kernel")
    if kernel is None:
        return ""
    return kernel.args[_cmdline_offset(kernel.args):].strip(BLANKS)


# --- a new entry ----------------------------------------------------------------------

def entry_like(text: str, name: str, like: str, *, title: str, kernel: str, initrd: str | None,
               params: Mapping[str, str] | None = None) -> BootEntry:
    """A ``BootEntry`` for a new kernel with the GRUB root and command line of the entry titled ``like``.

    ``params`` (``{"panic": "10"}``) are set on the copied command line, so the new
    kernel reboots by itself after a panic and the one-shot falls back.
    """
    menu = parse_menu(text, name)
    template = find_entry(menu, like, name)
    root = template.get("root")
    cmdline = kcmd.set_params(kernel_cmdline(template), params or {})
    return BootEntry(title, kernel, cmdline, initrd, root.args if root else None)


def add_entry(text: str, name: str, entry: BootEntry) -> str:
    """``text`` with ``entry`` appended as the last entry; every existing line and number unchanged.

    The new lines copy the file's style (indent and separator of the last entry,
    its line endings). An entry with the same title is left alone when it already
    says the same, and refused when it says something else.
    """
    _check_entry(entry, name)
    menu = parse_menu(text, name)
    same = [e for e in menu.entries if e.title == entry.title]
    if same:
        if _entry_lines(same[0]) == _wanted_lines(entry):
            return text
        raise refuse(name, same[0].commands[0].line.number,
                     f"an entry titled {entry.title!r} already exists with other contents")
    lines = list(menu.lines)
    nl = newline_of(lines)
    if lines and not lines[-1].end:
        lines[-1] = Line(lines[-1].number, lines[-1].body, nl)
    head = "" if not lines or not lines[-1].body.strip() else nl
    return join_lines(lines) + head + _entry_text(entry, menu, nl)


def _check_entry(entry: BootEntry, name: str) -> None:
    for label, value in (("title", entry.title), ("kernel", entry.kernel), ("initrd", entry.initrd or "x"),
                         ("root", entry.root or "x")):
        if not value.strip() or "\n" in value or "\r" in value:
            raise refuse(name, None, f"new entry: {label} {value!r} must be one non-empty line")
    if "\n" in entry.cmdline or "\r" in entry.cmdline:
        raise refuse(name, None, "new entry: the command line must be one line")


def _wanted_lines(entry: BootEntry) -> list[tuple[str, str]]:
    wanted = [("root", entry.root)] if entry.root else []
    wanted.append(("kernel", " ".join(f"{entry.kernel} {entry.cmdline}".split())))
    if entry.initrd:
        wanted.append(("initrd", entry.initrd))
    return wanted


def _entry_lines(entry: MenuEntry) -> list[tuple[str, str]]:
    return [(c.name, " ".join(c.args.split())) for c in entry.commands[1:]
            if c.name in ("root", "kernel", "initrd")]


def _entry_text(entry: BootEntry, menu: Menu, nl: str) -> str:
    last = menu.entries[-1] if menu.entries else None
    title_sep = last.commands[0].sep if last else " "
    style = (last.get("kernel") or last.commands[-1]) if last else None
    indent, sep = (style.indent, style.sep) if style else ("", " ")
    text = f"title{title_sep}{entry.title}{nl}"
    return text + "".join(f"{indent}{word}{sep}{args}{nl}" for word, args in _wanted_lines(entry))


# --- one-shot boot and promotion ------------------------------------------------------

def arm_oneshot(text: str, name: str, new_title: str, old_title: str) -> str:
    """Boot the entry ``new_title`` once, with ``old_title`` as the fallback (GRUB 0.97's recipe).

    Globals become ``default saved`` and ``fallback <old> [earlier fallbacks]``; the new entry gets
    ``savedefault fallback``, so the moment GRUB starts it, the saved default
    becomes the old entry: a kernel that panics (``panic=N``) or hangs and is
    rebooted comes back on the old one. The saved default itself is GRUB's state,
    not this file's: the deploy step points it at the new entry once
    (``grub-set-default N``, or ``savedefault --default=N --once`` in the grub shell).
    """
    menu = parse_menu(text, name)
    new, old = find_entry(menu, new_title, name), find_entry(menu, old_title, name)
    if new.index == old.index:
        raise refuse(name, None, f"the new and the old entry are both {new_title!r}")
    menu = _set_global(menu, "default", "saved", name)
    menu = _set_global(menu, "fallback", _fallbacks(menu, old.index, new.index), name)
    return join_lines(_set_savedefault(menu, new_title, "fallback", name).lines)


def _fallbacks(menu: Menu, old: int, new: int) -> str:
    """``old`` first, then the fallbacks the file already had (GRUB tries them in order), never ``new``."""
    command = menu.get("fallback")
    before = [int(n) for n in command.args.split()] if command else []
    return " ".join(str(n) for n in dict.fromkeys([old, *before]) if n != new)


def promote(text: str, name: str, new_title: str) -> str:
    """Make ``new_title`` the default after it booted and was checked: ``default <new>``.

    Removes the ``savedefault fallback`` that ``arm_oneshot`` added to it and keeps
    ``fallback`` (GRUB still falls back when the new kernel cannot even be loaded).
    """
    menu = parse_menu(text, name)
    menu = _set_global(menu, "default", str(find_entry(menu, new_title, name).index), name)
    new = find_entry(menu, new_title, name)
    drop = {c.line.number for c in new.commands if c.name == "savedefault" and c.args == "fallback"}
    return join_lines([line for line in menu.lines if line.number not in drop])


def _set_global(menu: Menu, word: str, value: str, name: str) -> Menu:
    """``menu`` with the global ``word`` set to ``value``: in place, or as a new line after ``default``."""
    lines = list(menu.lines)
    command = menu.get(word)
    if command and command.args == value:
        return menu
    if command:
        lines[lines.index(command.line)] = _with_args(command, value)
    else:
        anchor = menu.get("default") or menu.get("timeout")
        sep = anchor.sep if anchor else " "
        at = lines.index(anchor.line) + 1 if anchor else _first_command_index(menu)
        if at and not lines[at - 1].end:
            lines[at - 1] = Line(0, lines[at - 1].body, newline_of(lines))
        lines.insert(at, Line(0, f"{word}{sep}{value}", newline_of(lines)))
    return parse_menu(join_lines(lines), name)


def _first_command_index(menu: Menu) -> int:
    first = menu.globals[0] if menu.globals else (menu.entries[0].commands[0] if menu.entries else None)
    return menu.lines.index(first.line) if first else len(menu.lines)


def _set_savedefault(menu: Menu, title: str, value: str, name: str) -> Menu:
    entry = find_entry(menu, title, name)
    lines = list(menu.lines)
    command = entry.get("savedefault")
    if command and command.args == value:
        return menu
    if command:
        lines[lines.index(command.line)] = _with_args(command, value)
    else:
        last = entry.commands[-1]
        style = entry.get("kernel") or last
        at = lines.index(last.line) + 1
        if not lines[at - 1].end:
            lines[at - 1] = Line(0, lines[at - 1].body, newline_of(lines))
        lines.insert(at, Line(0, f"{style.indent}savedefault{style.sep}{value}", newline_of(lines)))
    return parse_menu(join_lines(lines), name)


def _with_args(command: Command, value: str) -> Line:
    """``command``'s line with its arguments replaced by ``value`` (added after a blank when it had none)."""
    body = command.line.body
    if not command.args:
        return command.line.with_body(body + " " + value)
    return command.line.with_body(splice(body, [(command.args_start, command.args_start + len(command.args), value)]))


# --- removing an entry ------------------------------------------------------------------

def entry_kernel(entry: MenuEntry) -> str:
    """The kernel image path of an entry (``/boot/vmlinuz-6.1.0``), "" when it has no ``kernel`` line."""
    command = entry.get("kernel")
    ws = command.args.split() if command else []
    return ws[0] if ws else ""


def remove_entry(text: str, name: str, title: str) -> str:
    """``text`` without the entry titled ``title``; ``default N`` and ``fallback`` renumbered so each still
    means the entry it meant (entries count from 0 in file order, and this one's successors move up).

    Refused, one line: the default entry, the first fallback (what GRUB boots when the default cannot be
    loaded: deploy's previous kernel), and any entry under ``default saved`` (the saved number lives in
    ``/boot/grub/default``, which GRUB rewrites itself and this text cannot see). A later fallback is taken
    out of the ``fallback`` list with its entry: ``arm_oneshot`` prepends each previous kernel, so without
    this the list would grow with every deploy and keep every kernel forever.
    The entry's lines go, with the blank lines after it; comments before the next title stay.
    """
    menu = parse_menu(text, name)
    entry = find_entry(menu, title, name)
    default, fallback = menu.get("default"), menu.get("fallback")
    if default and default.args == "saved":
        raise refuse(name, default.line.number, f"'default saved': cannot remove {title!r} without renumbering "
                     "the saved default (set a numbered default first)")
    index = int(default.args) if default else 0
    if index == entry.index:
        raise refuse(name, entry.commands[0].line.number, f"{title!r} is the default entry: not removed")
    fallbacks = [int(n) for n in fallback.args.split()] if fallback else []
    if fallbacks[:1] == [entry.index]:
        raise refuse(name, fallback.line.number, f"{title!r} is the first fallback entry: not removed")
    lines = list(menu.lines)
    start, last = lines.index(entry.commands[0].line), lines.index(entry.commands[-1].line)
    end = last + 1
    while end < len(lines) and not lines[end].body.strip():
        end += 1
    menu = parse_menu(join_lines(lines[:start] + lines[end:]), name)
    if default and index > entry.index:
        menu = _set_global(menu, "default", str(index - 1), name)
    if fallback:
        left = [n - 1 if n > entry.index else n for n in fallbacks if n != entry.index]
        menu = _set_global(menu, "fallback", " ".join(str(n) for n in left), name)
    return join_lines(menu.lines)
