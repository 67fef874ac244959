"""What one login uid (or every one) did, from audit records: system calls, commands, files.

Pure and streaming, like the seed's ``auditloginfo``: lines of the kernel's record format in (what
``ausearch --raw`` prints), a ``Report`` out, with memory bounded whatever the log's size:

* records are grouped into events by their ``msg=audit(TIME:SERIAL)`` stamp; an event ends at its EOE
  record, or when too many are open at once (``MAX_OPEN``: ausearch prints each event's records
  together, a raw log may interleave a few);
* the kernel writes a value it cannot print plainly (a space, a quote, a control character, a
  non-ASCII byte) as unquoted hex, ``(null)`` for none: ``decode`` undoes both;
* an EXECVE argument longer than one record is split: ``aN_len=`` then ``aN[0]=``, ``aN[1]=``, ...,
  possibly over several EXECVE records of the event; ``Execve`` joins the pieces;
* auditd 3's default ``log_format = ENRICHED`` appends ``\x1d`` and its own interpretations (``AUID="alice"``)
  to a record, and ``ausearch --raw`` may append a bare ``\x1d``: what follows it is dropped;
* every list is a ``TopCounter``: at most ``cap`` distinct entries kept, the rarest dropped when it
  fills (their occurrences counted as ``dropped``).

System calls arrive as numbers (``syscall=59``) with the ABI (``arch=c000003e``); ``SyscallNames`` maps
them through ``ausyscall ARCH --dump`` of this machine, once per ABI.
"""

from __future__ import annotations

import functools
import posixpath
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

UNSET = 4294967295
MAX_OPEN = 64  # events waiting for their EOE before the oldest is closed
TOP_CAP = 2000  # distinct commands or files kept per login uid
AUID_CAP = 256  # login uids kept apart; more are counted under "other"
HEADER = re.compile(rb"type=([A-Z_0-9]+) msg=audit\(([0-9]+\.[0-9]+:[0-9]+)\): ?")
FIELD = re.compile(rb"([A-Za-z0-9_\[\]-]+)=(\"[^\"]*\"|'[^']*'|\S*)")
SYSCALL_FIELDS = re.compile(rb"\barch=([0-9a-f]+) syscall=([0-9]+)\b.*? auid=([0-9]+)\b")
PATH_FIELDS = re.compile(rb"\bname=(\"[^\"]*\"|\S+).*? nametype=(\S+)")
HEX = re.compile(rb"(?:[0-9A-F]{2})+")
EXECVE_ARG = re.compile(r"a([0-9]+)(?:\[([0-9]+)\]|(_len))?")
ARCHES = {"c000003e": "x86_64", "40000003": "i386", "c00000b7": "aarch64", "40000028": "arm"}
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
ENRICHED = b"\x1d"  # auditd's log_format ENRICHED: interpreted fields after it (ausearch --raw may add it bare)
WANTED = {b"SYSCALL", b"EXECVE", b"PATH", b"CWD", b"PROCTITLE", b"EOE"}


def decode(raw: bytes) -> str | None:
    """A value as the kernel wrote it: ``"text"`` quoted, ``(null)``, or hex for anything else."""
    if raw[:1] == b'"' and raw[-1:] == b'"' and len(raw) >= 2:
        return raw[1:-1].decode("utf-8", "surrogateescape")
    if raw == b"(null)":
        return None
    if HEX.fullmatch(raw):
        return bytes.fromhex(raw.decode()).decode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "surrogateescape")


def fields(body: bytes) -> dict[str, bytes]:
    """``key=value`` pairs of one record, values raw (see ``decode``)."""
    return {key.decode(): value for key, value in FIELD.findall(body)}


def printable(text: str) -> str:
    """Control characters (a newline in an argument) shown as ``\\xNN``, so a report line stays one line."""
    return UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def command_line(argv: list[str]) -> str:
    return printable(shlex.join(argv))


def proctitle(raw: bytes) -> str:
    """PROCTITLE's value: the argv joined by NULs (hex-encoded), cut at 128 bytes by the kernel."""
    text = decode(raw) or ""
    return command_line([part for part in text.split("\0") if part] or [""])


class Execve:
    """The argv of one EXECVE event, from one or more records, long arguments joined from their pieces."""

    __slots__ = ("argc", "args", "pieces")

    def __init__(self):
        self.argc = 0
        self.args: dict[int, str] = {}
        self.pieces: dict[int, dict[int, str]] = {}

    def add(self, body: bytes) -> None:
        for key, raw in FIELD.findall(body):
            name = key.decode()
            if name == "argc":
                self.argc = int(raw)
                continue
            match = EXECVE_ARG.fullmatch(name)
            if not match or match.group(3):
                continue
            index = int(match.group(1))
            if match.group(2) is None:
                self.args[index] = decode(raw) or ""
            else:
                self.pieces.setdefault(index, {})[int(match.group(2))] = decode(raw) or ""

    def argv(self) -> list[str]:
        count = max(self.argc, len(self.args) + len(self.pieces))
        return [self.args[i] if i in self.args else "".join(p for _, p in sorted(self.pieces.get(i, {}).items()))
                for i in range(count)]


class Event:
    __slots__ = ("auid", "arch", "syscall", "execve", "cwd", "paths", "title")

    def __init__(self):
        self.auid: int | None = None
        self.arch = ""
        self.syscall = -1
        self.execve: Execve | None = None
        self.cwd = ""
        self.paths: list[tuple[str, str]] = []  # (name, nametype)
        self.title = ""

    def add(self, kind: bytes, body: bytes) -> None:
        if kind == b"SYSCALL":
            found = SYSCALL_FIELDS.search(body)
            if found:
                self.arch, self.syscall, self.auid = found.group(1).decode(), int(found.group(2)), int(found.group(3))
        elif kind == b"EXECVE":
            if self.execve is None:
                self.execve = Execve()
            self.execve.add(body)
        elif kind == b"PATH":
            found = PATH_FIELDS.search(body)
            name = decode(found.group(1)) if found else None
            if name is not None:
                self.paths.append((name, found.group(2).decode()))
        elif kind == b"CWD":
            self.cwd = decode(body[4:]) or "" if body.startswith(b"cwd=") else ""
        elif kind == b"PROCTITLE":
            self.title = proctitle(fields(body).get("proctitle", b""))

    def files(self) -> Iterable[str]:
        """Names the event touched, made absolute with its CWD; directories searched (PARENT) left out."""
        for name, nametype in self.paths:
            if nametype == "PARENT":
                continue
            yield name if name.startswith("/") or not self.cwd else posixpath.normpath(posixpath.join(self.cwd, name))


class TopCounter:
    """A counter of at most ``cap`` distinct keys: when it holds twice that, only the ``cap`` most frequent
    stay and the rest become ``dropped`` occurrences (so memory is flat and frequent keys survive)."""

    __slots__ = ("cap", "counts", "dropped")

    def __init__(self, cap: int = TOP_CAP):
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.dropped = 0

    def add(self, key: str, n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
            return
        counts[key] = n
        if len(counts) >= 2 * self.cap:
            self._prune()

    def _prune(self) -> None:
        ranked = sorted(self.counts.items(), key=lambda item: -item[1])
        self.dropped += sum(n for _, n in ranked[self.cap:])
        self.counts = dict(ranked[:self.cap])

    def top(self, n: int | None = None) -> list[tuple[str, int]]:
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked if n is None else ranked[:n]

    def merge(self, other: "TopCounter") -> None:
        for key, n in other.counts.items():
            self.add(key, n)
        self.dropped += other.dropped


@dataclass
class UserStats:
    events: int = 0
    syscalls: dict[tuple[str, int], int] = field(default_factory=dict)  # (arch, number): a few hundred at most
    commands: TopCounter = field(default_factory=TopCounter)
    files: TopCounter = field(default_factory=TopCounter)

    def add(self, event: Event) -> None:
        self.events += 1
        if event.syscall >= 0:
            key = (event.arch, event.syscall)
            self.syscalls[key] = self.syscalls.get(key, 0) + 1
        if event.execve is not None:
            self.commands.add(command_line(event.execve.argv()))
        for name in event.files():
            self.files.add(printable(name))


class Report:
    """Counts per login uid, fed one record line at a time (``feed``), closed with ``finish``."""

    def __init__(self, auid: int | None = None):
        self.only = auid
        self.users: dict[int | str, UserStats] = {}
        self.open: dict[bytes, Event] = {}
        self.records = 0
        self.events = 0
        self.skipped = 0  # lines that are no audit record

    def feed(self, line: bytes) -> None:
        header = HEADER.match(line)
        if header is None:
            if line.strip() and not line.startswith(b"----"):
                self.skipped += 1
            return
        self.records += 1
        kind, stamp = header.group(1), header.group(2)
        if kind not in WANTED:
            return
        if kind == b"EOE":
            self._close(stamp)
            return
        event = self.open.get(stamp)
        if event is None:
            if len(self.open) >= MAX_OPEN:
                self._close(next(iter(self.open)))
            event = self.open[stamp] = Event()
        event.add(kind, line[header.end():].rstrip(b"\n").split(ENRICHED, 1)[0])

    def feed_all(self, lines: Iterable[bytes]) -> "Report":
        feed = self.feed
        for line in lines:
            feed(line)
        return self.finish()

    def finish(self) -> "Report":
        for stamp in list(self.open):
            self._close(stamp)
        return self

    def _close(self, stamp: bytes) -> None:
        event = self.open.pop(stamp, None)
        if event is None or event.auid is None or (self.only is not None and event.auid != self.only):
            return
        self.events += 1
        key: int | str = event.auid if event.auid in self.users or len(self.users) < AUID_CAP else "other"
        stats = self.users.get(key)
        if stats is None:
            stats = self.users[key] = UserStats()
        stats.add(event)

    def total(self) -> UserStats:
        """Every login uid's counts together."""
        total = UserStats()
        for stats in self.users.values():
            total.events += stats.events
            for key, n in stats.syscalls.items():
                total.syscalls[key] = total.syscalls.get(key, 0) + n
            total.commands.merge(stats.commands)
            total.files.merge(stats.files)
        return total


class SyscallNames:
    """System call numbers -> names through ``ausyscall ARCH --dump`` (this machine's tables, any ABI)."""

    def __call__(self, arch: str, number: int) -> str:
        return self.table(ARCHES.get(arch, arch)).get(number, f"syscall-{number}")

    @functools.lru_cache(maxsize=None)
    def table(self, arch: str) -> dict[int, str]:
        try:
            done = subprocess.run(["ausyscall", arch, "--dump"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        pairs = (line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)
        return {int(number): name.strip() for number, name in pairs if number.isdigit()}


def syscall_counts(stats: UserStats, names: SyscallNames) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for (arch, number), n in stats.syscalls.items():
        name = names(arch, number)
        if arch in ARCHES and ARCHES[arch] not in ("x86_64", "aarch64"):
            name = f"{name} ({ARCHES[arch]})"
        counts[name] = counts.get(name, 0) + n
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def auid_label(auid: int | str) -> str:
    return "unset" if auid == UNSET else str(auid)


def as_dict(report: Report, *, top: int = 50, names: SyscallNames | None = None) -> dict:
    """The report for ``--json``: totals and every login uid, each list cut to ``top`` with what was left."""
    names = names or SyscallNames()

    def one(stats: UserStats) -> dict:
        return {"events": stats.events, "syscalls": dict(syscall_counts(stats, names)),
                "commands": _listing(stats.commands, top), "files": _listing(stats.files, top)}

    return {"records": report.records, "events": report.events, "skipped_lines": report.skipped,
            "auid": report.only, "total": one(report.total()),
            "auids": {auid_label(auid): one(stats) for auid, stats in sorted(report.users.items(), key=_order)}}


def _listing(counter: TopCounter, top: int) -> dict:
    ranked = counter.top()
    return {"top": [{"name": name, "count": n} for name, n in ranked[:top]],
            "more_distinct": max(0, len(ranked) - top), "dropped_occurrences": counter.dropped}


def _order(item) -> tuple:
    auid = item[0]
    return (1, 0) if auid == "other" else (0, auid)


def text_lines(report: Report, *, top: int = 20, names: SyscallNames | None = None) -> list[str]:
    """The seed's report, one section per login uid: system calls, commands executed, files opened."""
    names = names or SyscallNames()
    lines = [f"{report.events} event(s) from {report.records} record(s)"
             + (f" for login uid {auid_label(report.only)}" if report.only is not None else "")]
    for auid, stats in sorted(report.users.items(), key=_order):
        lines += ["", f"Audit report for AUID {auid_label(auid)} ({stats.events} events)"]
        lines += _section("System calls made", syscall_counts(stats, names), top, 0)
        lines += _section("Commands executed", stats.commands.top(), top, stats.commands.dropped)
        lines += _section("Files opened", stats.files.top(), top, stats.files.dropped)
    return lines


def _section(title: str, ranked: list[tuple[str, int]], top: int, dropped: int) -> list[str]:
    lines = [f"{title}:"]
    width = max((len(str(n)) for _, n in ranked[:top]), default=1)
    lines += [f"   {n:>{width}}  {name}" for name, n in ranked[:top]]
    if len(ranked) > top:
        lines.append(f"   ... {len(ranked) - top} more")
    if dropped:
        lines.append(f"   ({dropped} occurrence(s) of rarer entries not kept)")
    if not ranked:
        lines.append("   (none)")
    return lines


__all__ = ["Report", "SyscallNames", "TopCounter", "as_dict", "decode", "fields", "proctitle", "text_lines"]
