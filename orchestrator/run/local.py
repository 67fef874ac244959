"""Run steps on the build box itself."""

from __future__ import annotations

import os
import subprocess


from ..errors import CommandError
from .base import Result, Target

STREAM_TAIL_LINES = 200


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
        """Pass output through line by line (emerge, make) and keep its tail."""
        tail: list[str] = []
        with subprocess.Popen(
            wrapped,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        ) as proc:
            if input is not None:
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
                proc.stdin.close()
            for raw in proc.stdout:
                line = _text(raw).rstrip("\n")
                self.echo(line)
                tail = (tail + [line])[-STREAM_TAIL_LINES:]
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise CommandError(argv, 124, f"timed out after {timeout} s", self.describe()) from None
        return Result(argv, rc, "\n".join(tail) + ("\n" if tail else ""), "")


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="surrogateescape")


__all__ = ["LocalTarget", "Result"]
