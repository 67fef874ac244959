"""Ranged, parallel, verified downloads: every range is checked against the catalog's leaf hashes.

The catalog keeps each part's SHA-256 digest of every 1 MiB slice (the leaves
of its tree hash), so a range aligned on 1 MiB is verified on its own as it
arrives; a bad range is fetched again, never written as good.  The whole file's
sha256 and tree hash are checked once more at the end.

Who checks what: the store's one read of a range (``Store.read_range``) checks
what the answer carries (length, a tree hash AWS sent) and raises
``CorruptRangeError``; this module adds the leaves and is the one retry layer
for ranges (``..retry.verified_read`` with the store's ``backoff``: 3 reads,
the re-reads after 0.5-1 s and 1-2 s).  Throttling and 5xx are botocore's alone; they, access
errors and not-ready answers end the download at once.  The final whole-file
check is not retried: every range already passed, so a mismatch there means
the catalog and the store disagree, and fetching again cannot help.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import OrchestratorError
from .retry import CorruptRangeError, verified_read
from .stores import Store
from .treehash import MIB, file_digests

RANGE_SIZE = 8 * MIB


def ranges(size: int, step: int = RANGE_SIZE) -> list[tuple[int, int]]:
    return [(start, min(start + step, size)) for start in range(0, size, step)] or [(0, 0)]


def range_problem(data: bytes, start: int, end: int, leaves: bytes | None) -> str | None:
    """Why ``data`` is not bytes ``[start, end)`` of the part, or None when it is."""
    if len(data) != end - start:
        return f"got {len(data)} bytes for a range of {end - start}"
    if not leaves:
        return None  # no leaves (an old catalog): only the whole-file check below applies
    first = start // MIB
    for i, offset in enumerate(range(0, len(data), MIB)):
        expected = leaves[(first + i) * 32 : (first + i + 1) * 32]
        if hashlib.sha256(data[offset : offset + MIB]).digest() != expected:
            return f"MiB {first + i} does not match the catalog's leaf hash"
    return None


def download_verified(store: Store, part, dest: Path, *, workers: int = 4, job_id: str | None = None,
                      label: str | None = None) -> int:
    """Fetch ``part`` into ``dest``; returns how many re-reads bad ranges needed.

    On failure nothing is left behind: ``dest`` is not created and the
    temporary file is removed.
    """
    tmp = dest.with_name(f".{dest.name}.download")
    try:
        refetched = _fetch_ranges(store, part, tmp, workers, job_id, label or part["name"])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return refetched


def _fetch_ranges(store: Store, part, tmp: Path, workers: int, job_id: str | None, label: str) -> int:
    size = part["size"]
    with open(tmp, "wb") as out:
        out.truncate(size)

        def fetch(span: tuple[int, int]) -> int:
            data, reads = _verified_range(store, part, span, job_id, label)
            os.pwrite(out.fileno(), data, span[0])
            return reads - 1

        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="download") as pool:
            futures = [pool.submit(fetch, span) for span in ranges(size)]
            try:
                refetched = sum(future.result() for future in futures)
            except BaseException:
                for future in futures:
                    future.cancel()  # a range failed for good: the ones not started yet are not fetched
                raise
    sha256, tree_hash, got = file_digests(tmp)
    if (sha256, tree_hash, got) != (part["sha256"], part["tree_hash"], size):
        raise OrchestratorError(
            f"{label} is corrupted in {store.name}: sha256 {sha256[:16]}... expected {part['sha256'][:16]}...; "
            "nothing was restored")
    return refetched


def _verified_range(store: Store, part, span: tuple[int, int], job_id: str | None, label: str) -> tuple[bytes, int]:
    """Bytes ``[start, end)`` of ``part`` that passed every check, and how many reads that took."""
    start, end = span
    what = f"{label} is corrupted in {store.name}: bytes {start}-{end - 1}"
    reads = 0

    def once() -> bytes:
        nonlocal reads
        reads += 1
        data = store.read_range(part["archive_id"], start, end, job_id)
        problem = range_problem(data, start, end, part["leaves"])
        if problem:
            raise CorruptRangeError(what, problem)
        return data

    data = verified_read(once, what, store.backoff)
    return data, reads
