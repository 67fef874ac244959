"""``/etc/default/grub`` (and ``/etc/default/grub.d/*.cfg``): kernel command line and GRUB_DEFAULT edits.

These files are shell, sourced by ``grub-mkconfig``. Only plain assignments are
edited: ``[export ]NAME=value`` alone on its line, the value unquoted (one word),
``"double quoted"`` or ``'single quoted'``, optionally followed by a comment. The
quoting an assignment has is kept; an unquoted value that must hold several words
gets double quotes. What cannot be edited safely is refused with its line: a value
spanning lines (of any variable: the lines after it are no longer lines of shell),
backslashes or backticks in the value, a computed parameter (``root=$ROOT``), or
the variable assigned inside a compound command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import cmdline as kcmd
from .devices import Rename, Unmapped
from .text import BootConfigError, Line, is_blank_or_comment, join_lines, newline_of, refuse, split_lines, words

CMDLINE_VARIABLES = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")
ASSIGNMENT = re.compile(r"([ \t]*(?:export[ \t]+)?)([A-Za-z_][A-Za-z0-9_]*)=")
TAIL = re.compile(r"[ \t]*(?:#.*)?")
PLAIN_VALUE = re.compile(r"[^\s\"'`$\\;&|<>()]*")


@dataclass(frozen=True)
class Assignment:
    line: Line
    variable: str
    quote: str  # '"', "'" or "" (unquoted)
    start: int  # the value's span in line.body, quotes included
    end: int
    clean_tail: bool  # nothing but blanks and a comment after the value

    @property
    def value(self) -> str:
        """The value as written between its quotes (not unescaped: values with backslashes are refused)."""
        raw = self.line.body[self.start:self.end]
        return raw[1:-1] if self.quote else raw


def assignments(text: str, name: str) -> list[Assignment]:
    """Every plain assignment of ``text``, in order."""
    found = []
    for line in split_lines(text):
        if is_blank_or_comment(line.body):
            continue
        m = ASSIGNMENT.match(line.body)
        if m:
            found.append(_assignment(line, m, name))
    return found


def _assignment(line: Line, m: re.Match, name: str) -> Assignment:
    body, start = line.body, m.end()
    quote = body[start] if start < len(body) and body[start] in "\"'" else ""
    if quote:
        end = _closing_quote(body, start, quote)
        if end < 0:
            raise refuse(name, line.number, f"{m[2]}: the quoted value does not end on this line")
        end += 1
    else:
        end = start + len(re.match(r"[^ \t;#]*", body[start:])[0])
    return Assignment(line, m[2], quote, start, end, bool(TAIL.fullmatch(body[end:])))


def _closing_quote(body: str, start: int, quote: str) -> int:
    i = start + 1
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def _editable(text: str, name: str, variable: str) -> list[Assignment]:
    """The assignments of ``variable``; refused when one of them cannot be edited as text."""
    found = [a for a in assignments(text, name) if a.variable == variable]
    for a in found:
        value = a.value
        if not a.clean_tail or "\\" in value or "`" in value or (not a.quote and not PLAIN_VALUE.fullmatch(value)):
            raise refuse(name, a.line.number, f"{variable} is not a plain value this tool can edit; edit it by hand")
    lines = {a.line.number for a in found}
    for line in split_lines(text):
        if line.number not in lines and not is_blank_or_comment(line.body) and \
                re.search(rf"(?<![\w$]){variable}=", line.body):
            raise refuse(name, line.number, f"{variable} is assigned inside a command; edit it by hand")
    return found


def _with_value(a: Assignment, value: str) -> Line:
    """``a``'s line with the value replaced, in its own quotes (double quotes if it had none and needs them)."""
    quote = a.quote or ('"' if not PLAIN_VALUE.fullmatch(value) or not value else "")
    return a.line.with_body(a.line.body[:a.start] + quote + value + quote + a.line.body[a.end:])


def set_cmdline_params(text: str, name: str, params: Mapping[str, str],
                       variable: str = "GRUB_CMDLINE_LINUX") -> str:
    """``variable`` with each ``key=value`` of ``params`` set (``cmdline.set_params``); other words kept.

    EC2 wants ``console=ttyS0`` (the serial console ``get_console_output`` reads),
    ``nvme_core.io_timeout=4294967295`` (EBS I/O may stall longer than the NVMe
    default) and a ``panic=N`` so a failed one-shot boot reboots by itself. A
    variable assigned twice is refused: it is unclear which one should change.
    """
    found = _editable(text, name, variable)
    if len(found) > 1:
        raise refuse(name, found[1].line.number,
                     f"{variable} is assigned twice (also on line {found[0].line.number}); keep one")
    if not found:
        value = kcmd.set_params("", params)
        return _insert_assignment(text, variable, f'"{value}"')
    a = found[0]
    for key in params:
        if any("$" in w[0] and w[0].startswith(f"{key}=") for w in words(a.value)):
            raise refuse(name, a.line.number, f"{key}= in {variable} is computed by the shell; edit it by hand")
    new = kcmd.set_params(a.value, params)
    return text if new == a.value else _replace_line(text, _with_value(a, new))


def rename_cmdline_devices(text: str, name: str, rename: Rename) -> str:
    """``root=``/``real_root=``/``resume=`` renamed in ``GRUB_CMDLINE_LINUX`` and ``GRUB_CMDLINE_LINUX_DEFAULT``."""
    for variable in CMDLINE_VARIABLES:
        for a in _editable(text, name, variable):
            try:
                new = kcmd.rename_devices(a.value, rename)
            except Unmapped as exc:
                raise refuse(name, a.line.number, str(exc)) from None
            if new != a.value:
                text = _replace_line(text, _with_value(a, new))
    return text


def set_variable(text: str, name: str, variable: str, value: str) -> str:
    """``variable=value`` (``GRUB_DEFAULT=saved`` for a one-shot boot), in place or as a new line."""
    if not re.fullmatch(r"[^\s\"'`$\\]*", value):
        raise BootConfigError(f"{name}: {variable}={value!r}: blanks, quotes and shell characters are not allowed")
    found = _editable(text, name, variable)
    if len(found) > 1:
        raise refuse(name, found[1].line.number,
                     f"{variable} is assigned twice (also on line {found[0].line.number}); keep one")
    if not found:
        return _insert_assignment(text, variable, value)
    return text if found[0].value == value else _replace_line(text, _with_value(found[0], value))


def get_variable(text: str, name: str, variable: str) -> str | None:
    """The value of the last plain assignment of ``variable`` (what ``grub-mkconfig`` would see), or ``None``."""
    found = [a for a in assignments(text, name) if a.variable == variable]
    return found[-1].value if found else None


def _replace_line(text: str, new: Line) -> str:
    return join_lines([new if line.number == new.number else line for line in split_lines(text)])


def _insert_assignment(text: str, variable: str, value: str) -> str:
    """A new ``variable=value`` line after the commented example (``#GRUB_CMDLINE_LINUX=""``), else at the end."""
    lines = split_lines(text)
    nl = newline_of(lines)
    example = [i for i, line in enumerate(lines) if re.match(rf"#[ \t]*{variable}=", line.body)]
    at = example[0] + 1 if example else len(lines)
    if at and not lines[at - 1].end:
        lines[at - 1] = Line(lines[at - 1].number, lines[at - 1].body, nl)
    lines.insert(at, Line(0, f"{variable}={value}", nl))
    return join_lines(lines)
