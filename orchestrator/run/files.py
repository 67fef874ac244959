"""Writing a file so that a crash leaves the old one or the new one, never half of either.

``atomic_write`` is the one local building block: every config or state file we
write on the build box goes through it, and ``LocalTarget.replace_file`` (and
so ``ChrootTarget.replace_file``) uses it too. The rest of this module is what
every target's ``replace_file`` shares: the name the previous version is kept
under, validators, and the diff printed under ``--dry``.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, OrchestratorError
from ..faults import crash_point

DEFAULT_MODE = 0o644
WRITE_CHUNK = 64 * 1024
PLACEHOLDER = "{}"

#: Crash points (see ``orchestrator.faults``) inside one replacement, in order.
FILE_POINTS = (
    "file-writing",    # the temp file holds some of the new bytes (reached after each chunk)
    "file-written",    # the temp file is complete and fsynced, the old file is still in place
    "file-replaced",   # renamed over the old file, the directory not yet fsynced
)
#: Between keeping the previous version and writing the new one (``Target.replace_file``).
PREVIOUS_KEPT = "file-previous-kept"

#: A validator: a callable that raises ``OrchestratorError`` (or ``ValueError``) to refuse
#: the text, or an argv run on a temporary copy, ``{}`` standing for the copy's path.
Validator = Callable[[str], object] | Sequence[str]


@dataclass(frozen=True)
class FileMeta:
    """What a replacement keeps of the file it replaces."""

    mode: int
    uid: int
    gid: int


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int | None = None,
                 uid: int = -1, gid: int = -1) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync the directory.

    A reader (or the next run after a ``kill -9``) sees the old content or the
    new, never a mix; a kill before the rename leaves a ``.<name>.<random>.tmp``
    beside it and the old file as it was. ``path`` itself is replaced: a
    symlink there becomes a file (resolve first to write through one).
    ``uid``/``gid`` of -1 leave the writer's own.
    """
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_chunks(handle, data)
            os.fchmod(handle.fileno(), DEFAULT_MODE if mode is None else mode)
            if uid != -1 or gid != -1:
                os.fchown(handle.fileno(), uid, gid)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("file-written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    crash_point("file-replaced")
    fsync_directory(path.parent)


def _write_chunks(handle, data: bytes) -> None:
    for start in range(0, len(data), WRITE_CHUNK):
        handle.write(data[start:start + WRITE_CHUNK])
        handle.flush()
        crash_point("file-writing")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_path(path: str) -> str:
    """``.<name>.previous`` beside ``path``: a dot file, which Portage's and most ``.d`` directories skip."""
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.previous")


def checked_path(path: str | os.PathLike, where: str) -> str:
    """An absolute, normalised POSIX path naming a file (not ``/``)."""
    text = os.fspath(path)
    if not posixpath.isabs(text) or posixpath.basename(posixpath.normpath(text)) in ("", ".", ".."):
        raise OrchestratorError(f"{where}: {text!r} is not an absolute path to a file")
    return posixpath.normpath(text)


def validator_argv(validate: Sequence[str], copy: str) -> list[str]:
    """``validate`` with ``{}`` (alone or inside a word, ``--tab-file={}``) replaced by ``copy``."""
    words = [os.fspath(word) for word in validate]
    if not any(PLACEHOLDER in word for word in words):
        raise ValueError(f"validator {words!r} has no {PLACEHOLDER} for the file to check")
    return [word.replace(PLACEHOLDER, copy) for word in words]


def call_validator(validate: Callable[[str], object], text: str, where: str, path: str) -> None:
    """Run a callable validator; its refusal becomes one line naming the file."""
    try:
        validate(text)
    except (OrchestratorError, ValueError) as exc:
        raise refused(where, path, str(exc), config=isinstance(exc, ConfigError)) from None


def refused(where: str, path: str, reason: str, *, config: bool = False) -> OrchestratorError:
    error = ConfigError if config else OrchestratorError
    reason = " ".join(reason.split()) or "no reason given"
    return error(f"{where}: {path}: new text refused, file left unchanged: {reason}")


def diff_lines(path: str, old: bytes | None, new: bytes) -> list[str]:
    """A unified diff of the replacement, as lines to print (no line endings)."""
    before = [] if old is None else _text(old).splitlines(keepends=True)
    after = _text(new).splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(before, after, fromfile="/dev/null" if old is None else path, tofile=path):
        lines.append(line.rstrip("\n"))
        if not line.endswith("\n"):
            lines.append("\\ No newline at end of file")
    return lines


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


__all__ = ["FILE_POINTS", "FileMeta", "Validator", "atomic_write", "diff_lines", "fsync_directory",
           "previous_path"]
