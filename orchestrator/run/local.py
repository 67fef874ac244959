"""Run steps on the build box itself."""

from __future__ import annotations

import os
import posixpath
import select
import stat
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CommandError, OrchestratorError
from .base import Result, Target
from .files import FileMeta, atomic_write

STREAM_TAIL_LINES = 200
POLL_S = 0.2
DRAIN_S = 1.0  # after the process exits, how long to wait for more output on a pipe a child holds open
READ_SIZE = 65536


class LocalTarget(Target):
    def describe(self) -> str:
        return "local"

    def wrap(self, argv: list[str]) -> list[str]:
        """Hook for targets that run locally through a prefix (chroot, nsenter)."""
        return argv

    def _execute(self, argv, *, input, env, cwd, timeout, stream) -> Result:
        full_env = {**os.environ, **env} if env else None
        wrapped = self.wrap(argv)
        try:
            if stream:
                return self._stream(argv, wrapped, input=input, env=full_env, cwd=cwd, timeout=timeout)
            done = subprocess.run(
                wrapped,
                input=input.encode() if isinstance(input, str) else input,
                capture_output=True,
                env=full_env,
                cwd=cwd,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise CommandError(argv, 127, f"{exc.filename}: command not found", self.describe()) from None
        except subprocess.TimeoutExpired:
            raise CommandError(argv, 124, f"timed out after {timeout} s", self.describe()) from None
        return Result(argv, done.returncode, _text(done.stdout), _text(done.stderr))

    def _stream(self, argv, wrapped, *, input, env, cwd, timeout) -> Result:
        """Pass output through line by line (emerge, make) and keep its tail.

        The process is killed on the way out of an error, a timeout, Ctrl-C or
        SIGTERM: a Jenkins abort must not wait for the build to finish.
        """
        tail: deque[str] = deque(maxlen=STREAM_TAIL_LINES)
        proc = subprocess.Popen(
            wrapped,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        try:
            if input is not None:
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
                proc.stdin.close()
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._pump(proc, tail, deadline):
                raise CommandError(argv, 124, f"timed out after {timeout} s", self.describe())
            rc = proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            proc.stdout.close()
        return Result(argv, rc, "\n".join(tail) + ("\n" if tail else ""), "")

    def _pump(self, proc: subprocess.Popen, tail: deque, deadline: float | None) -> bool:
        """Echo output until EOF; False on the deadline.

        Once the process has exited, reading stops after DRAIN_S without new
        output: a daemon it started may hold the pipe open for ever.
        """
        fd = proc.stdout.fileno()
        pending = b""
        exited_at = None
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if not ready:
                if exited_at is not None and now - exited_at >= DRAIN_S:
                    break
                continue
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._line(_text(raw), tail)
        if pending:
            self._line(_text(pending), tail)
        return True

    def _line(self, line: str, tail: deque) -> None:
        self.echo(line)
        tail.append(line)


    # --- files: plain paths on this box (ChrootTarget maps them into its root) ---

    def host_path(self, path: str) -> str:
        """Where ``path`` (as this target names it) is on the build box."""
        return path

    def _resolve(self, path: str) -> str:
        return os.path.realpath(path)

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            with open(self.host_path(path), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OrchestratorError(f"{self.describe()}: cannot read {path}: {exc.strerror}") from None

    def _meta(self, path: str) -> FileMeta:
        st = os.stat(self.host_path(path))
        return FileMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def _make_parents(self, path: str) -> None:
        os.makedirs(self.host_path(posixpath.dirname(path)), mode=0o755, exist_ok=True)

    def _put_atomically(self, path: str, data: bytes, meta: FileMeta) -> None:
        atomic_write(self.host_path(path), data, mode=meta.mode, uid=meta.uid, gid=meta.gid)

    @contextmanager
    def _scratch_copy(self, path: str, data: bytes) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="orchestrator-check-", dir=self._scratch_parent()) as scratch:
            copy = os.path.join(scratch, posixpath.basename(path))
            with open(copy, "wb") as handle:
                handle.write(data)
            yield self._as_seen(copy)

    def _scratch_parent(self) -> str | None:
        """Where validation copies go on the build box (None: the system's temp directory)."""
        return None

    def _as_seen(self, host_path: str) -> str:
        """A build-box path as commands run by this target see it."""
        return host_path


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="surrogateescape")


__all__ = ["LocalTarget", "Result"]
