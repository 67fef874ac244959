"""Splitting a tar stream into chunks and compressing (and encrypting) each one.

The chunks live in a fixed pool of reusable buffers, so memory is bounded by
``(workers + queue_depth) x chunk_size`` plus each codec's own memory, however
large the data: the splitter blocks when every buffer is still being compressed.
Nothing uncompressed ever touches the disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import OrchestratorError

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024


class BufferPool:
    def __init__(self, count: int, size: int):
        self.size = size
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(count):
            self._free.put(bytearray(size))

    def take(self, timeout: float) -> bytearray | None:
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def give(self, buf: bytearray) -> None:
        self._free.put(buf)


def widen_pipe(stream) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups between tar and the splitter."""
    try:
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def fill(stream, buf: bytearray) -> int:
    """Read from ``stream`` until ``buf`` is full or the stream ends."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return filled


class ChildProcesses:
    """Every codec process alive, so an abort can kill them at once."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.aborted = threading.Event()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if self.aborted.is_set():
                proc.kill()
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            self.aborted.set()
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()


@dataclass
class CompressedPart:
    path: Path
    plain_size: int
    plain_sha256: str


def compress_to_file(
    data: memoryview, out_path: Path, compress: list[str], encrypt: list[str] | None, children: ChildProcesses
) -> CompressedPart:
    """``compress [| gpg --encrypt] > out_path``, fed from memory; atomic on success."""
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    plain_sha256 = hashlib.sha256(data).hexdigest()
    with open(tmp, "wb") as out, tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        procs = _start_chain(compress, encrypt, out, err1, err2, children)
        feed_error = _feed(procs[0], data)
        codes = [p.wait() for p in procs]
        for p in procs:
            children.discard(p)
        failed = [(argv, rc, err) for argv, rc, err in zip((compress, encrypt), codes, (err1, err2)) if rc]
        if failed or feed_error:
            tmp.unlink(missing_ok=True)
            raise _codec_error(out_path, failed, feed_error, children.aborted.is_set())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, out_path)
    return CompressedPart(out_path, len(data), plain_sha256)


def _start_chain(compress, encrypt, out, err1, err2, children) -> list[subprocess.Popen]:
    first = subprocess.Popen(compress, stdin=subprocess.PIPE, stdout=subprocess.PIPE if encrypt else out, stderr=err1)
    children.add(first)
    procs = [first]
    if encrypt:
        second = subprocess.Popen(encrypt, stdin=first.stdout, stdout=out, stderr=err2)
        first.stdout.close()
        children.add(second)
        procs.append(second)
    return procs


def _feed(proc: subprocess.Popen, data: memoryview) -> OSError | None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except OSError as exc:  # the codec died early; its stderr says why
        return exc
    return None


def _codec_error(out_path, failed, feed_error, aborted) -> OrchestratorError:
    if aborted:
        return OrchestratorError(f"compression of {out_path.name} stopped (run aborted)")
    messages = []
    for argv, rc, err in failed:
        err.seek(0)
        text = err.read().decode(errors="replace").strip().splitlines()
        messages.append(f"{argv[0]} exited {rc}" + (f": {text[-1]}" if text else ""))
    if not messages and feed_error:
        messages.append(str(feed_error))
    joined = "; ".join(messages)
    if "No space left" in joined or "ENOSPC" in joined:
        return OrchestratorError(
            f"staging disk full: no space left in {out_path.parent} while writing {out_path.name}; "
            "complete sets are untouched"
        )
    return OrchestratorError(f"part {out_path.name}: {joined}")
