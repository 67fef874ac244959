"""What a backup set holds, file by file, read from the tar stream as it passes.

While the splitter hands tar's output to the compressors, a parser thread reads
the same bytes with :mod:`tarfile` (stream mode: pax headers, GNU sparse files,
non-UTF-8 names) and records every member: type, mode, owner, size, the sha256
of its content (holes read as zeros) and, for a directory, the names GNU tar's
dumpdir marks as unchanged since the parent set.  Nothing is read from disk a
second time.

:func:`expected_tree` folds those records along an incremental chain into the
tree a restore must produce; ``inv verify`` compares a restored tree with it.
A dumpdir that records a directory rename is refused: tar cannot always replay
one (see :mod:`.snar`), so such a set is never reported as good.
"""

from __future__ import annotations

import hashlib
import queue
import tarfile
import threading
from dataclasses import dataclass

READ_BLOCK = 1024 * 1024
QUEUE_CHUNKS = 2  # chunks waiting for the parser; the splitter blocks beyond that
TYPES = {
    tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.CONTTYPE: "f", tarfile.DIRTYPE: "d",
    tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b",
    tarfile.FIFOTYPE: "p",
}
RENAME_MARKS = ("R", "T", "X")  # dumpdir records of a directory rename


@dataclass(frozen=True)
class Entry:
    """One member of a set's tar stream; ``path`` is the member name (relative to ``/``), as bytes."""

    path: bytes
    type: str  # f file, d directory, l symlink, h hard link, c/b device, p fifo
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str | None = None  # content of a regular file
    link: bytes | None = None  # symlink or hard link target; "major,minor" of a device
    keep: tuple[bytes, ...] = ()  # a directory's names tar left out as unchanged since the parent set

    def as_row(self) -> tuple:
        return (self.path, self.type, self.mode, self.uid, self.gid, self.size, self.sha256, self.link,
                b"\0".join(self.keep) if self.keep else None)

    @classmethod
    def from_row(cls, row) -> "Entry":
        keep = tuple(row["keep"].split(b"\0")) if row["keep"] else ()
        return cls(bytes(row["path"]), row["type"], row["mode"], row["uid"], row["gid"], row["size"],
                   row["sha256"], bytes(row["link"]) if row["link"] is not None else None, keep)


class UnrestorableStream(Exception):
    """The stream holds something a restore could not replay faithfully."""


def _bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class _QueueReader:
    """A file-like ``read`` over chunks handed in through a queue; ``None`` ends the stream."""

    def __init__(self, chunks: queue.Queue):
        self._chunks = chunks
        self._view = memoryview(b"")
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        while not self._view and not self.eof:
            item = self._chunks.get()
            if item is None:
                self.eof = True
            else:
                self._view = memoryview(item)
        out = self._view if size < 0 else self._view[:size]
        self._view = self._view[len(out):]
        return bytes(out)

    def drain(self) -> None:
        while not self.eof:
            self._view = memoryview(b"")
            self.read(1)


class StreamIndex:
    """Parse one directory's tar stream in a thread while it is being archived.

    ``feed`` blocks while the parser is ``QUEUE_CHUNKS`` chunks behind, so memory
    stays bounded; ``finish`` returns the entries or raises what went wrong.
    """

    def __init__(self, label: str):
        self.label = label
        self.entries: list[Entry] = []
        self._chunks: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._reader = _QueueReader(self._chunks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"index-{label}", daemon=True)
        self._thread.start()

    def feed(self, data) -> None:
        item = bytes(data)
        while self._thread.is_alive():
            try:
                self._chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> list[Entry]:
        self.feed_end()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.entries

    def feed_end(self) -> None:
        while self._thread.is_alive():
            try:
                self._chunks.put(None, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            with tarfile.open(fileobj=self._reader, mode="r|", bufsize=READ_BLOCK, encoding="utf-8",
                              errors="surrogateescape") as stream:
                for member in stream:
                    self.entries.append(self._entry(stream, member))
        except BaseException as exc:  # reported by finish(); the stream is still drained below
            self._error = exc if isinstance(exc, UnrestorableStream) else UnrestorableStream(
                f"{self.label}: the tar stream could not be read back ({type(exc).__name__}: {exc})")
        finally:
            self._reader.drain()

    def _entry(self, stream: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
        kind = TYPES.get(member.type)
        if kind is None:
            raise UnrestorableStream(f"{self.label}: member {member.name!r} has unknown tar type {member.type!r}")
        path = _bytes(member.name.rstrip("/"))
        sha256, link, keep = None, None, ()
        if kind == "f":
            sha256 = _content_sha256(stream.extractfile(member))
        elif kind in ("l", "h"):
            link = _bytes(member.linkname)
        elif kind in ("c", "b"):
            link = f"{member.devmajor},{member.devminor}".encode()
        elif kind == "d":
            keep = self._unchanged_names(member)
        size = member.size if kind == "f" else 0
        return Entry(path, kind, member.mode, member.uid, member.gid, size, sha256, link, keep)

    def _unchanged_names(self, member: tarfile.TarInfo) -> tuple[bytes, ...]:
        dumpdir = member.pax_headers.get("GNU.dumpdir", "")
        records = [r for r in dumpdir.split("\0") if r]
        renames = [r for r in records if r[0] in RENAME_MARKS]
        if renames:
            raise UnrestorableStream(
                f"{member.name}: a directory was renamed while it was being backed up "
                f"({renames[0][1:]!r}); the next run archives this directory again")
        return tuple(_bytes(r[1:]) for r in records if r[0] == "N")


def _content_sha256(fileobj) -> str:
    digest = hashlib.sha256()
    while True:
        block = fileobj.read(READ_BLOCK)
        if not block:
            return digest.hexdigest()
        digest.update(block)


def expected_tree(chain: list[list[Entry]]) -> dict[bytes, Entry]:
    """The tree restoring ``chain`` (each set's entries, the full set first) must give.

    Each set's stream holds every directory still there; a name its dumpdir
    marks unchanged keeps what the tree had before (with its whole subtree when
    it is a directory that this set no longer descends into, e.g. newly
    excluded); any other name is gone.  A name never seen before (an excluded
    or unarchivable file tar still lists) is simply not part of the tree.
    """
    tree: dict[bytes, Entry] = {}
    for entries in chain:
        new = {e.path: e for e in entries}
        for entry in entries:
            for name in entry.keep:
                path = entry.path + b"/" + name
                if path not in new and path in tree:
                    new[path] = tree[path]
                    if tree[path].type == "d":
                        _carry_subtree(tree, new, path)
        tree = new
    return tree


def _carry_subtree(old: dict[bytes, Entry], new: dict[bytes, Entry], top: bytes) -> None:
    prefix = top + b"/"
    for path, entry in old.items():
        if path.startswith(prefix) and path not in new:
            new[path] = entry
