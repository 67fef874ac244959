"""PAM service files (``/etc/pam.d/NAME``): does the session stack set the login uid, and the one line that makes it.

Pure text -> text, no I/O (the host side is ``orchestrator.security.loginuid``). A file is read the way
Linux-PAM reads it (``libpam/pam_handlers.c``):

* a physical line that is blank or whose first non-blank is ``#`` is skipped, even inside a continuation;
* ``#`` anywhere else ends the logical line (``session optional pam_mail.so standard # [1]``);
* a line ending in ``\\`` (trailing blanks allowed) goes on with the next; a file that ends inside such a
  continuation makes PAM abort, so it is refused here;
* fields: ``[-]type control module [args]``: type ``auth``/``account``/``password``/``session`` in any case,
  a leading ``-`` only silences a missing module; control a keyword or ``[value=action ...]`` (blanks allowed);
* ``TYPE include NAME`` and ``TYPE substack NAME`` pull NAME's lines of that type (Gentoo's
  ``session include system-login``), Debian's ``@include NAME`` pulls NAME's lines of every type.

A line PAM would turn into a failing entry (unknown type or control, missing module, unclosed ``[``) is
refused with its number: we do not edit a file the host cannot read whole.

What counts as having the login uid set: a ``pam_loginuid.so`` session entry, in the file or in a file it
includes, whose failure fails the session (``required``, ``requisite``, or brackets sending ``session_err``
to ``bad``/``die``). ``optional`` (Gentoo's pambase ships ``session optional pam_loginuid.so`` in
system-login and system-services), ``sufficient`` and a leading ``-`` only set it when they can, silently.
In that case, or when the module is absent or commented out, ``ensure_loginuid`` adds ONE line to the
service's own file and changes no other byte: the admin's lines (their optional entry, their comment) stay,
shared files (system-login, common-session) are never edited, and a second run changes nothing. Running
pam_loginuid twice is harmless: it writes only when the value differs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config.guard import never_loginuid
from ..errors import OrchestratorError

TYPES = ("auth", "account", "password", "session")
CONTROLS = ("required", "requisite", "sufficient", "optional", "include", "substack")
INCLUDES = ("include", "substack", "@include")
ACTIONS = re.compile(r"ignore|bad|die|ok|done|reset|[0-9]+", re.IGNORECASE)
MODULE = "pam_loginuid.so"
TAG = "# inv harden: the login uid (auid) follows sudo -i and every fork"
BRACKET = re.compile(r"\[(?:\\.|[^\\\]])*\]")  # "[" to its "]"; "\]" inside does not close it
MAX_DEPTH = 16  # Linux-PAM's PAM_SUBSTACK_MAX_LEVEL; an include loop must end somewhere

#: An included file's text by its name (``system-login``, ``/etc/pam.d/x``); None when there is no such file.
Resolver = Callable[[str], "str | None"]


class PamError(OrchestratorError):
    """A PAM file we were asked to read or edit is malformed, or the edit would not be safe."""


def refuse(name: str, number: int | None, message: str) -> PamError:
    """The one-line error ``name:number: message`` (``name: message`` when no line is to blame)."""
    return PamError(f"{name}:{number}: {message}" if number else f"{name}: {message}")


@dataclass(frozen=True)
class Rule:
    """One logical line: ``first``/``last`` are 0-based indexes of its physical lines."""

    first: int
    last: int
    type: str  # auth, account, password, session (lower case); "" for Debian's @include (every type)
    quiet: bool  # a leading "-": a missing module is skipped without a word
    control: str  # a keyword in lower case, "@include", or the bracket text as written
    module: str  # the module path, or the included file's name
    args: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        return self.first + 1

    @property
    def includes(self) -> bool:
        return self.control in INCLUDES


@dataclass(frozen=True)
class Found:
    """A ``pam_loginuid.so`` session entry and the files that lead to it (``sshd``, ``system-remote-login``...)."""

    chain: tuple[str, ...]
    rule: Rule
    enforcing: bool  # a failure to set the login uid fails the session

    def describe(self) -> str:
        how = self.rule.control if not self.rule.quiet else f"-{self.rule.control}"
        return f"{how} in {' -> '.join(self.chain)}:{self.rule.number}"


# --- reading ---------------------------------------------------------------------------------


def physical_lines(text: str) -> list[str]:
    """``text`` split after each ``\\n``, endings kept: ``"".join(physical_lines(t)) == t``."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def parse(text: str, name: str = "pam") -> list[Rule]:
    """Every logical line of a PAM service file; a line PAM would not read is refused with its number."""
    rules, pieces, start = [], [], None
    for index, line in enumerate(physical_lines(text)):
        body = line.removesuffix("\n")
        if "\0" in body or "\r" in body:
            what = "a NUL byte" if "\0" in body else "a carriage return (PAM would read it as part of a word)"
            raise refuse(name, index + 1, f"{what} in the line")
        stripped = body.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        start = index if start is None else start
        content, comment, _ = stripped.partition("#")
        if not comment and content.rstrip(" \t").endswith("\\"):
            pieces.append(content.rstrip(" \t")[:-1])
            continue
        pieces.append(content)
        rules.append(_rule(" ".join(pieces), start, index, name))
        pieces, start = [], None
    if start is not None:
        raise refuse(name, start + 1, "the line continued with \\ runs past the end of the file (PAM refuses "
                                      "the whole file)")
    return rules


def _rule(line: str, first: int, last: int, name: str) -> Rule:
    words = _tokens(line, name, first + 1)
    if words[0] == "@include":
        if len(words) < 2:
            raise refuse(name, first + 1, "@include without a file name")
        return Rule(first, last, "", False, "@include", words[1], tuple(words[2:]))
    quiet = words[0].startswith("-")
    kind = words[0][1:] if quiet else words[0]
    if kind.lower() not in TYPES:
        raise refuse(name, first + 1, f"{words[0]!r} is not a PAM type (auth, account, password, session)")
    if len(words) < 3:
        raise refuse(name, first + 1, "a rule needs a type, a control and a module (or a file to include)")
    return Rule(first, last, kind.lower(), quiet, _control(words[1], name, first + 1), words[2], tuple(words[3:]))


def _tokens(line: str, name: str, number: int) -> list[str]:
    """Blank-separated words; a ``[`` opens a part that runs to its ``]``, blanks and all (``\\]`` escapes)."""
    words, i = [], 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        j = i
        while j < len(line) and line[j] not in " \t":
            if line[j] == "[":
                match = BRACKET.match(line, j)
                if not match:
                    raise refuse(name, number, "a '[' without its ']'")
                j = match.end()
            else:
                j += 1
        words.append(line[i:j])
        i = j
    return words


def _control(word: str, name: str, number: int) -> str:
    if not word.startswith("["):
        if word.lower() not in CONTROLS:
            raise refuse(name, number, f"{word!r} is not a PAM control ({', '.join(CONTROLS)} or [value=action])")
        return word.lower()
    for item in word[1:-1].split():
        value, equals, action = item.partition("=")
        if not value or not equals or not ACTIONS.fullmatch(action):
            raise refuse(name, number, f"{item!r} in {word} is not value=action (action: ignore, bad, die, ok, "
                                       "done, reset or a number)")
    return word


def _actions(control: str) -> dict[str, str]:
    return dict(item.lower().partition("=")[::2] for item in control[1:-1].split())


def enforcing(rule: Rule) -> bool:
    """Whether a failure of this entry fails the session: pam_loginuid reports a failed write as
    ``session_err``; brackets without ``default`` treat every unlisted value as ``bad``."""
    if rule.quiet:
        return False
    if rule.control.startswith("["):
        actions = _actions(rule.control)
        return actions.get("session_err", actions.get("default", "bad")) in ("bad", "die")
    return rule.control in ("required", "requisite")


def is_loginuid(rule: Rule) -> bool:
    return rule.type == "session" and not rule.includes and posixpath.basename(rule.module) == MODULE


# --- the session stack -----------------------------------------------------------------------


def loginuid_entries(text: str, name: str, resolver: Resolver | None = None) -> list[Found]:
    """Every ``pam_loginuid.so`` entry of the session stack of service ``name``, in stack order, through
    include/substack/@include when a ``resolver`` is given (else the file's own lines only)."""
    return list(_walk(text, (name,), resolver))


def _walk(text: str, chain: tuple[str, ...], resolver: Resolver | None) -> Iterator[Found]:
    for rule in parse(text, chain[-1]):
        if rule.includes and rule.type in ("", "session") and resolver is not None:
            yield from _walk(_included(rule, chain, resolver), chain + (rule.module,), resolver)
        elif is_loginuid(rule):
            yield Found(chain, rule, enforcing(rule))


def _included(rule: Rule, chain: tuple[str, ...], resolver: Resolver) -> str:
    if len(chain) >= MAX_DEPTH:
        raise refuse(chain[-1], rule.number, f"includes nest deeper than {MAX_DEPTH} ({' -> '.join(chain)}); "
                                             "an include loop?")
    text = resolver(rule.module)
    if text is None:
        raise refuse(chain[-1], rule.number, f"includes {rule.module}, which does not exist (PAM fails every "
                                             "session of this service)")
    return text


def has_loginuid(text: str, resolver: Resolver | None = None, name: str = "service") -> bool:
    """True when the session stack of ``name`` runs pam_loginuid so that a failure fails the session."""
    return any(found.enforcing for found in loginuid_entries(text, name, resolver))


def _feeds_session(rule: Rule, chain: tuple[str, ...], resolver: Resolver | None) -> bool:
    """Whether the rule adds entries to the session stack. An ``@include`` does when the file it names holds
    session entries (without a resolver: when that name says ``session``, Debian's ``common-session``)."""
    if rule.type == "session":
        return True
    if rule.control != "@include":
        return False
    if resolver is None:
        return "session" in rule.module
    included = parse(_included(rule, chain, resolver), rule.module)
    return any(_feeds_session(inner, chain + (rule.module,), resolver) for inner in included)


# --- the edit --------------------------------------------------------------------------------


def ensure_loginuid(text: str, name: str = "service", resolver: Resolver | None = None) -> str:
    """``text`` with ``session required pam_loginuid.so`` added where the session stack lacks an enforcing
    one; ``text`` itself when it has one (so a second call returns its input).

    The line goes before the first line of the session stack (after leading ``pam_selinux.so close``
    entries, which Debian and Red Hat keep first, and above the comment lines right over that first line),
    its fields separated like that line's (tabs or spaces). Nothing else changes (a missing final newline
    is added when the line goes last). Refused for su/sudo and their kin, and for a file
    with no session entries at all: PAM then takes the session stack from ``other``, and one line of ours
    would replace that whole stack.
    """
    if never_loginuid(name):
        raise refuse(name, None, "pam_loginuid must never be set for su/sudo (it would overwrite the admin's "
                                 "login uid); refused")
    if has_loginuid(text, resolver, name):
        return text
    lines = physical_lines(text)
    at, anchor = _insertion_index(lines, parse(text, name), name, resolver)
    if at == len(lines) and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    separator = "\t" if "\t" in lines[anchor] else "    "
    added = f"session{separator}required{separator}{MODULE}  {TAG}\n"
    return "".join(lines[:at] + [added] + lines[at:])


def _insertion_index(lines: list[str], rules: list[Rule], name: str,
                     resolver: Resolver | None) -> tuple[int, int]:
    """Where the line goes, and the line whose blanks (tabs or spaces) it copies."""
    after_selinux = None
    for rule in rules:
        if not _feeds_session(rule, (name,), resolver):
            continue
        if posixpath.basename(rule.module) == "pam_selinux.so" and "close" in rule.args:
            after_selinux = rule.last + 1
            continue
        return _above_comments(lines, rule.first), rule.first
    if after_selinux is None:
        raise refuse(name, None, "no session entries of its own: PAM takes its session stack from "
                                 "/etc/pam.d/other, which one added line would replace; add pam_loginuid by hand")
    return after_selinux, after_selinux - 1


def _above_comments(lines: list[str], index: int) -> int:
    """``index`` moved up over the comment lines directly above it (the comment that explains that line)."""
    while index > 0 and lines[index - 1].lstrip(" \t").startswith("#"):
        index -= 1
    return index


def check_pam_text(text: str, name: str = "pam") -> None:
    """The validator for a PAM file we write: every line readable by PAM, and a final newline."""
    parse(text, name)
    if text and not text.endswith("\n"):
        raise refuse(name, None, "no newline at the end of the file")


def loginuid_validator(name: str, resolver: Resolver | None = None) -> Callable[[str], None]:
    """``validate=`` for ``Target.replace_file``: well-formed, and the session stack sets the login uid."""
    def validate(text: str) -> None:
        check_pam_text(text, name)
        if not has_loginuid(text, resolver, name):
            raise refuse(name, None, "the new text still has no enforcing pam_loginuid.so session entry")
    return validate


def commented_out(text: str) -> list[int]:
    """Numbers of comment lines that name pam_loginuid.so (a line an admin switched off, left as it is)."""
    return [i + 1 for i, line in enumerate(physical_lines(text))
            if line.lstrip(" \t").startswith("#") and MODULE in line]


__all__ = ["Found", "PamError", "Rule", "check_pam_text", "commented_out", "ensure_loginuid", "has_loginuid",
           "loginuid_entries", "loginuid_validator", "parse"]
