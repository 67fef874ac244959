"""``inv verify``: a restore drill that proves a set restores, file by file.

The set's chain is restored from the store (never from the staging copies: the
drill is about the offsite copy) into a scratch directory on the staging disk,
with every part's sha256 and every decoded chunk's plaintext hash checked on
the way.  Then every file the backup recorded (the file index read from the
tar stream at backup time, see :mod:`.tarindex`) must come back with its type,
size, mode, owner, link target and content hash, and nothing else may appear.
The scratch copy is deleted afterwards, on every path.

For cold storage, ``--sample N`` restores only the directories of N random
parts (with the Bulk tier by default) and says what the retrieval costs first.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..config import human_size
from ..errors import OrchestratorError
from .catalog import Catalog
from .layout import Layout, one_component, remove_tree
from .restore import Restorer
from .tarindex import Entry, expected_tree

READ_BLOCK = 1024 * 1024
SHOWN_PROBLEMS = 20

# USD list prices (us-east-1) to get data back out of cold storage: (per GB, per 1000 requests).
RETRIEVAL_PRICES = {
    ("GLACIER", "Expedited"): (0.03, 10.0), ("GLACIER", "Standard"): (0.01, 0.05), ("GLACIER", "Bulk"): (0.0, 0.0),
    ("DEEP_ARCHIVE", "Standard"): (0.02, 0.10), ("DEEP_ARCHIVE", "Bulk"): (0.0025, 0.025),
    ("vault", "Expedited"): (0.03, 10.0), ("vault", "Standard"): (0.01, 0.05), ("vault", "Bulk"): (0.0025, 0.025),
    ("GLACIER_IR", None): (0.03, 0.0), ("STANDARD_IA", None): (0.01, 0.0),
}
COLD_KEYS = ("GLACIER", "DEEP_ARCHIVE", "vault")


@dataclass
class DrillResult:
    entries: int = 0
    bytes_hashed: int = 0
    problems: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)  # directories restored without a file index to compare


def retrieval_cost(storage_key: str, tier: str, size: int, requests: int) -> float | None:
    """What getting ``size`` bytes in ``requests`` archives back costs, or None when it is free (hot)."""
    price = RETRIEVAL_PRICES.get((storage_key, tier if storage_key in COLD_KEYS else None))
    if price is None:
        return None
    per_gb, per_thousand = price
    return size / 1e9 * per_gb + requests / 1000 * per_thousand


def sample_directories(catalog: Catalog, chain, count: int, rng: random.Random) -> list[str]:
    """The directories (slugs) of ``count`` parts picked at random from the chain's parts."""
    parts = [p for row in chain for p in catalog.parts(row["id"])]
    if not parts:
        raise OrchestratorError(f"set {chain[-1]['id']}: no parts to sample")
    picked = rng.sample(parts, min(count, len(parts)))
    return sorted({p["slug"] for p in picked})


def drill_bytes(catalog: Catalog, chain, slugs: list[str]) -> tuple[int, int, int]:
    """(stored bytes, parts, plaintext bytes) a restore of these directories reads and writes."""
    parts = [p for row in chain for slug in slugs for p in catalog.parts(row["id"], slug)]
    return sum(p["size"] for p in parts), len(parts), sum(p["plain_size"] for p in parts)


def check_room(staging: Path, stored: int, plain: int) -> None:
    free = shutil.disk_usage(staging).free
    needed = stored + plain
    if free < needed:
        raise OrchestratorError(f"backup.staging_dir: the drill needs up to {human_size(needed)} on {staging}, "
                                f"only {human_size(free)} free; try --sample N")


def expected_for(catalog: Catalog, chain, slugs: list[str]) -> tuple[dict[bytes, Entry], list[str]]:
    """The tree the chain must restore to, per the file index; and the directories that have none."""
    expected: dict[bytes, Entry] = {}
    unindexed = []
    for slug in slugs:
        dirs = {row["id"]: {d["slug"]: d for d in catalog.dirs(row["id"])} for row in chain}
        if any(slug in dirs[row["id"]] and dirs[row["id"]][slug]["entries"] is None for row in chain):
            unindexed.append(dirs[chain[-1]["id"]][slug]["path"])
            continue
        per_set = [[Entry.from_row(r) for r in catalog.files(row["id"], slug)] for row in chain]
        expected.update(expected_tree(per_set))
    return expected, unindexed


def run_drill(restorer: Restorer, set_row, slugs: list[str], scratch: Path) -> DrillResult:
    """Restore ``slugs`` of ``set_row``'s chain into ``scratch`` and compare it with the index; always cleans up."""
    chain = restorer.catalog.chain(set_row["id"])
    expected, unindexed = expected_for(restorer.catalog, chain, slugs)
    remove_tree(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        restorer.restore(set_row, scratch, slugs)
        result = compare_tree(scratch, expected, restorer.workers, restorer.progress)
    finally:
        remove_tree(scratch)
    result.unindexed = unindexed
    return result


def compare_tree(root: Path, expected: dict[bytes, Entry], workers: int, progress=None) -> DrillResult:
    """Every expected entry is there as recorded, and nothing unexpected is (ancestors of entries aside)."""
    result = DrillResult(entries=len(expected))
    base = os.fsencode(root)
    ancestors = {p for path in expected for p in _ancestors(path)}
    seen = set()
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), base)
            seen.add(rel)
            if rel not in expected and rel not in ancestors:
                result.problems.append(f"unexpected: /{_show(rel)}")
    for path in sorted(set(expected) - seen):
        result.problems.append(f"missing: /{_show(path)}")
    present = [e for path, e in sorted(expected.items()) if path in seen]
    checks = [(e, os.path.join(base, e.path), expected) for e in present]
    counter = progress.counter("compare", total=sum(e.size for e in present)) if progress else None
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="compare") as pool:
        for problem, hashed in pool.map(lambda args: _check_entry(*args), checks):
            result.bytes_hashed += hashed
            if counter:
                counter.update(hashed)
            if problem:
                result.problems.append(problem)
    if counter:
        counter.close()
    return result


def _check_entry(entry: Entry, path: bytes, expected: dict[bytes, Entry]) -> tuple[str | None, int]:
    st = os.lstat(path)
    want = expected[entry.link] if entry.type == "h" and entry.link in expected else entry
    shown = "/" + _show(entry.path)
    if entry.type == "h":
        target = os.path.join(path[: -len(entry.path)], entry.link)
        if not os.path.exists(target) or os.lstat(target).st_ino != st.st_ino:
            return f"{shown}: not a hard link to /{_show(entry.link)}", 0
    problem = _check_kind(want, st, path)
    if problem:
        return f"{shown}: {problem}", 0
    if want.type != "l" and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (want.mode & 0o7777, want.uid, want.gid):
        return (f"{shown}: mode/owner {stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}, "
                f"backed up as {want.mode & 0o7777:o} {want.uid}:{want.gid}"), 0
    if want.type == "f" and entry.type == "f":
        digest = _sha256(path)
        if digest != want.sha256:
            return f"{shown}: content differs from what was backed up (sha256 {digest[:16]}...)", st.st_size
        return None, st.st_size
    return None, 0


def _check_kind(want: Entry, st: os.stat_result, path: bytes) -> str | None:
    kinds = {"f": stat.S_ISREG, "h": stat.S_ISREG, "d": stat.S_ISDIR, "l": stat.S_ISLNK, "c": stat.S_ISCHR,
             "b": stat.S_ISBLK, "p": stat.S_ISFIFO}
    if not kinds[want.type](st.st_mode):
        return f"restored as another kind of file (expected {want.type})"
    if want.type == "f" and st.st_size != want.size:
        return f"size {st.st_size}, backed up as {want.size}"
    if want.type == "l" and os.readlink(path) != want.link:
        return f"symlink points to {_show(os.readlink(path))}, backed up as {_show(want.link)}"
    if want.type in ("c", "b") and f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}".encode() != want.link:
        return f"device {os.major(st.st_rdev)},{os.minor(st.st_rdev)}, backed up as {want.link.decode()}"
    return None


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _ancestors(path: bytes):
    while b"/" in path:
        path = path.rsplit(b"/", 1)[0]
        yield path


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("unicode_escape").decode("ascii")


def drill_root(layout: Layout) -> Path:
    """Where drills unpack: on the staging disk, inside the staging dir (which no backup includes)."""
    return layout.staging_dir / layout.host / "drill"


def scratch_dir(layout: Layout, set_id: str) -> Path:
    return drill_root(layout) / one_component(set_id)
