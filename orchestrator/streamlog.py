"""Long command output (emerge, make) kept whole in a log file, with the notable lines shown as progress."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .job import JobRun


class StreamLog:
    """A target's ``echo``: inside ``with log.to(path)`` every line goes to ``path``
    and lines matching ``notable`` are also said (and kept in ``lines``);
    outside it, lines (e.g. ``--dry`` plans) are echoed as they are."""

    def __init__(self, run: JobRun, notable: re.Pattern, prefix: str = ""):
        self.run = run
        self.notable = notable
        self.prefix = prefix
        self.lines: list[str] = []
        self._file = None

    @contextmanager
    def to(self, path: Path, header: str = "") -> Iterator[StreamLog]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", errors="replace") as handle:
            handle.write(header)
            self.lines = []
            self._file = handle
            try:
                yield self
            finally:
                self._file = None

    def __call__(self, line: str) -> None:
        if self._file is None:
            self.run.echo(self.prefix + line)
            return
        self._file.write(line + "\n")
        if self.notable.match(line):
            self.lines.append(line)
            self.run.progress.say(self.prefix + line.strip())
