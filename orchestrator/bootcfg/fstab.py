"""/etc/fstab: device renames that give back every other byte as it was.

The file is read the way libmount reads it (util-linux ``tab_parse.c``): blanks
are spaces and tabs, a line whose first non-blank character is ``#`` is a
comment, an entry has at least three fields, fields five and six (dump, pass)
are optional decimal numbers, anything after the sixth field is ignored, and
``\\NNN`` (three octal digits) stands for one byte, so ``/mnt/My\\040Disk`` is
one field. A line libmount would skip with a parse error is refused here with
its number: we do not edit a file the host cannot read whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .devices import Rename, Unmapped
from .text import Line, is_blank_or_comment, join_lines, refuse, splice, split_lines, words

NUMBER = re.compile(r"[+-]?[0-9]+")  # what strtol(s, &end, 10) takes whole
OCTAL = re.compile(r"\\([0-7]{3})")
MANGLED = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


@dataclass(frozen=True)
class Entry:
    line: Line
    fields: tuple[re.Match, ...]

    @property
    def source(self) -> str:
        return unescape(self.fields[0][0])

    @property
    def target(self) -> str:
        return unescape(self.fields[1][0])

    @property
    def fstype(self) -> str:
        return unescape(self.fields[2][0])


def unescape(field: str) -> str:
    return OCTAL.sub(lambda m: chr(int(m[1], 8)), field)


def escape(value: str) -> str:
    """The field for ``value``: blanks, newlines and backslashes as libmount writes them."""
    return "".join(MANGLED.get(c, c) for c in value)


def entries(text: str, name: str = "fstab") -> list[Entry]:
    """Every mount entry of ``text``; a line libmount would reject is refused with its number."""
    return [e for line in split_lines(text) if (e := _entry(line, name))]


def _entry(line: Line, name: str) -> Entry | None:
    if "\0" in line.body:
        raise refuse(name, line.number, "a NUL byte in the line")
    if is_blank_or_comment(line.body):
        return None
    fields = tuple(words(line.body))
    if len(fields) < 3:
        raise refuse(name, line.number, f"{len(fields)} field(s); an entry needs a device, a mount point and a type")
    for label, field in zip(("dump", "pass"), fields[4:6]):
        if not NUMBER.fullmatch(field[0]):
            raise refuse(name, line.number, f"the {label} field {field[0]!r} is not a number")
    return Entry(line, fields)


def rename_devices(text: str, name: str, rename: Rename) -> str:
    """``text`` with each entry's device (field 1) renamed by ``rename``; nothing else changes.

    Comments, blank lines, separators, line endings, options and lines already in
    ``UUID=``/``LABEL=`` form come back byte for byte; only the device field of an
    entry ``rename`` answers for is replaced. Applying it to its own result changes
    nothing (the renames here map into names they leave alone).
    """
    out = []
    for line in split_lines(text):
        entry = _entry(line, name)
        out.append(line.with_body(_renamed(entry, name, rename)) if entry else line)
    return join_lines(out)


def _renamed(entry: Entry, name: str, rename: Rename) -> str:
    field = entry.fields[0]
    try:
        new = rename(entry.source)
    except Unmapped as exc:
        raise refuse(name, entry.line.number, f"{exc} (mount point {entry.target})") from None
    if new is None or new == entry.source:
        return entry.line.body
    if not new or new.startswith("#"):
        raise refuse(name, entry.line.number, f"refusing to write the device {new!r}")
    return splice(entry.line.body, [(field.start(), field.end(), escape(new))])
