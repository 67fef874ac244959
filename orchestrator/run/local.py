"""Run steps on the build box itself."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections import deque


from ..errors import CommandError
from .base import Result, Target

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


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="surrogateescape")


__all__ = ["LocalTarget", "Result"]
