"""Where steps run: the Target interface shared by local, chroot and remote runs."""

from __future__ import annotations

import os
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ..errors import CommandError
from ..faults import crash_point
from .files import (DEFAULT_MODE, PREVIOUS_KEPT, FileMeta, Validator, call_validator, checked_path, diff_lines,
                    previous_path, refused, validator_argv)


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


class Target(ABC):
    """A place that runs argv lists and reads and replaces files.

    Subclasses implement ``_execute`` and the file primitives below; ``run``
    adds the parts every target shares: argv normalisation, ``--dry`` (print,
    do not run) and ``check`` (raise a CommandError naming the command and the
    tail of its output). ``read_file`` and ``replace_file`` are the same on
    every target; only how bytes move differs.
    """

    def __init__(self, dry: bool = False, echo=None):
        self.dry = dry
        self.echo = echo or (lambda line: print(line, file=sys.stdout, flush=True))

    @abstractmethod
    def describe(self) -> str:
        """Short name for messages: ``local``, ``chroot:/srv/gentoo``, ``ssh:root@host``."""

    @abstractmethod
    def _execute(
        self,
        argv: list[str],
        *,
        input: str | bytes | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        stream: bool,
    ) -> Result:
        ...

    def run(
        self,
        argv: Sequence[str | os.PathLike],
        *,
        check: bool = True,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        timeout: float | None = None,
        stream: bool = False,
        mutates: bool = True,
    ) -> Result:
        """Run ``argv``; under ``--dry`` a step that ``mutates`` is only printed.

        Read-only probes (``mutates=False``) still run under ``--dry`` so that the
        plan printed reflects the real state, the way pyinfra's facts do.
        """
        args = [os.fsdecode(a) for a in argv]
        if self.dry and mutates:
            self.echo(f"[dry-run] {self.describe()}: {shlex.join(args)}")
            return Result(args, 0)
        result = self._execute(
            args,
            input=input,
            env=env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            timeout=timeout,
            stream=stream,
        )
        if check and result.returncode != 0:
            raise CommandError(args, result.returncode, result.stderr or result.stdout, self.describe())
        return result

    # --- files ------------------------------------------------------------

    def read_file(self, path: str | os.PathLike) -> str | None:
        """The text of ``path`` on this target, or None when there is no such file (runs under ``--dry`` too)."""
        data = self._read_bytes(self._resolve(checked_path(path, self.describe())))
        return None if data is None else data.decode("utf-8", errors="surrogateescape")

    def replace_file(self, path: str | os.PathLike, text: str, *, validate: Validator | None = None,
                     keep_previous: bool = True, mode: int | None = None, secret: bool = False) -> bool:
        """Make ``path`` hold ``text``; True when it changed (or, under ``--dry``, would change).

        Nothing happens when the file already holds ``text``. Otherwise
        ``validate`` must accept the new text first (a refusal is one line and
        the file stays byte-identical); under ``--dry`` a unified diff is
        printed and nothing is written. The old file is kept as
        ``.<name>.previous`` (``keep_previous``), then the new text replaces it
        atomically with the old file's mode and owner; a new file gets ``mode``
        (0644), and missing directories are made. A symlink at ``path`` is
        followed: the file it points at is replaced, the link stays. A
        ``secret`` file's diff is never printed, only that it would change,
        and it gets ``mode`` even when the old file had a wider one.
        """
        path = self._resolve(checked_path(path, self.describe()))
        new = text.encode("utf-8", errors="surrogateescape")
        old = self._read_bytes(path)
        if old == new:
            return False
        self._validate(path, new, validate)
        if self.dry:
            if secret:
                self.echo(f"[dry-run] {self.describe()}: replace {path} (it holds secrets: no diff shown)")
                return True
            self.echo(f"[dry-run] {self.describe()}: replace {path}")
            for line in diff_lines(path, old, new):
                self.echo(line)
            return True
        if old is None:
            self._make_parents(path)
            meta = FileMeta(DEFAULT_MODE if mode is None else mode, -1, -1)
        else:
            meta = self._meta(path)
            if secret and mode is not None:  # a package's 0644 sample must not stay readable once it holds keys
                meta = FileMeta(mode, meta.uid, meta.gid)
            if keep_previous:
                self._put_atomically(previous_path(path), old, meta)
                crash_point(PREVIOUS_KEPT)
        self._put_atomically(path, new, meta)
        return True

    def _validate(self, path: str, data: bytes, validate: Validator | None) -> None:
        """A callable gets the text; an argv runs on a temporary copy on this target, also under ``--dry``."""
        if validate is None:
            return
        if callable(validate):
            call_validator(validate, data.decode("utf-8", errors="surrogateescape"), self.describe(), path)
            return
        with self._scratch_copy(path, data) as copy:
            argv = validator_argv(validate, copy)
            result = self.run(argv, check=False, mutates=False)
        if not result.ok:
            tail = " | ".join(line for line in result.output.splitlines()[-3:] if line.strip())
            raise refused(self.describe(), path, f"{argv[0]} exited {result.returncode}: "
                          + tail.replace(copy, path))

    @abstractmethod
    def _resolve(self, path: str) -> str:
        """``path`` with a symlink at its end followed (as this target resolves it)."""

    @abstractmethod
    def _read_bytes(self, path: str) -> bytes | None:
        """The file's bytes; None when it does not exist; one-line error when it cannot be read."""

    @abstractmethod
    def _meta(self, path: str) -> FileMeta:
        """Mode and owner of an existing file."""

    @abstractmethod
    def _make_parents(self, path: str) -> None:
        """Create the directories ``path`` needs (0755)."""

    @abstractmethod
    def _put_atomically(self, path: str, data: bytes, meta: FileMeta) -> None:
        """Temp file in the same directory with ``meta``, fsync, rename over ``path``, fsync the directory."""

    @abstractmethod
    def _scratch_copy(self, path: str, data: bytes) -> AbstractContextManager[str]:
        """A temporary copy of ``data`` named like ``path`` on this target, yielding its path there."""
