"""Where steps run: the Target interface shared by local, chroot and remote runs."""

from __future__ import annotations

import os
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import CommandError


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
    """A place that runs argv lists.

    Subclasses implement ``_execute``; ``run`` adds the parts every target shares:
    argv normalisation, ``--dry`` (print, do not run) and ``check`` (raise a
    CommandError naming the command and the tail of its output).
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
