"""Lines with their own endings, and the one error every boot config editor raises.

Every editor here works line by line and must give back every byte it did not
mean to change, so a line keeps its own ending: ``"\\n"``, ``"\\r\\n"`` (a file
edited on Windows still boots) or ``""`` for a last line without one.
``str.splitlines`` is not used: it also splits on form feeds, ``\\x1c`` and
Unicode line separators, which fstab and grub treat as ordinary characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import OrchestratorError

BLANKS = " \t"
WORD = re.compile(r"[^ \t]+")


class BootConfigError(OrchestratorError):
    """A boot config file we were asked to edit is malformed, or the edit cannot be made safely."""


def refuse(name: str, number: int | None, message: str) -> BootConfigError:
    """The one-line error ``name:number: message`` (``name: message`` when no line is to blame)."""
    where = f"{name}:{number}" if number else name
    return BootConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    body: str  # without its ending
    end: str  # "\n", "\r\n" or "" (the last line of a file without a final newline)

    def with_body(self, body: str) -> "Line":
        return Line(self.number, body, self.end)

    @property
    def text(self) -> str:
        return self.body + self.end


def split_lines(text: str) -> list[Line]:
    """``text`` as lines; ``"".join(l.text for l in split_lines(t)) == t`` for every ``t``."""
    lines = []
    for number, chunk in enumerate(re.findall(r"[^\n]*\n|[^\n]+$", text), start=1):
        body = chunk.removesuffix("\n")
        end = chunk[len(body):]
        if end and body.endswith("\r"):
            body, end = body[:-1], "\r\n"
        lines.append(Line(number, body, end))
    return lines


def join_lines(lines: list[Line]) -> str:
    return "".join(line.text for line in lines)


def newline_of(lines: list[Line]) -> str:
    """The ending a new line should get: the file's first one (``"\\n"`` for an empty file)."""
    return next((line.end for line in lines if line.end), "\n")


def is_blank_or_comment(body: str) -> bool:
    """fstab, menu.lst and shell alike: nothing, or ``#`` as the first non-blank character."""
    stripped = body.lstrip(BLANKS)
    return not stripped or stripped.startswith("#")


def words(body: str) -> list[re.Match]:
    """The blank-separated words of ``body``, as matches (their spans say where to splice)."""
    return list(WORD.finditer(body))


def splice(body: str, edits: list[tuple[int, int, str]]) -> str:
    """``body`` with each ``(start, end, new)`` span replaced; spans must not overlap."""
    for start, end, new in sorted(edits, reverse=True):
        body = body[:start] + new + body[end:]
    return body
