"""Where sets live on the staging disk and in the state directory, and how things are named."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

PART_DIGITS = 6


def slugify(path: str) -> str:
    """``/var/lib/mysql`` -> ``var_lib_mysql`` (the seed's ``backup_$TMP``), ``/`` -> ``ROOT``."""
    body = path.strip("/").replace("/", "_") or "ROOT"
    return re.sub(r"[^A-Za-z0-9._-]", lambda m: "%%%02X" % ord(m.group()) if ord(m.group()) < 256 else "_", body)[:80]


def unique_slugs(paths: list[str]) -> list[tuple[str, str]]:
    """(slug, path) pairs; ``/a_b`` and ``/a/b`` would collide, so later ones get ``-2``, ``-3``."""
    seen: dict[str, int] = {}
    pairs = []
    for path in paths:
        slug = slugify(path)
        seen[slug] = seen.get(slug, 0) + 1
        pairs.append((slug if seen[slug] == 1 else f"{slug}-{seen[slug]}", path))
    return pairs


def part_name(slug: str, idx: int, suffix: str) -> str:
    return f"{slug}.tar.{idx:0{PART_DIGITS}d}{suffix}"


def id_order(set_id: str) -> tuple[str, int]:
    base, _, n = set_id.partition("-")
    return base, int(n or 1)


def new_set_id(last_issued: str | None, now: float | None = None) -> str:
    """``YYYYmmddTHHMMSSZ``, with ``-2``, ``-3``... within one second; always after ``last_issued``.

    Ids are never reused, even after retention deleted the set that had one.
    """
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    if last_issued is None or (base, 1) > id_order(last_issued):
        return base
    last_base, last_n = id_order(last_issued)
    return f"{last_base}-{last_n + 1}"


@dataclass(frozen=True)
class Layout:
    """``<staging>/<host>/{inflight,complete}/<set>/`` and ``<state>/snapshots/<host>/<set>/``."""

    staging_dir: Path
    state_dir: Path
    host: str

    @property
    def inflight(self) -> Path:
        return self.staging_dir / self.host / "inflight"

    @property
    def complete(self) -> Path:
        return self.staging_dir / self.host / "complete"

    @property
    def snapshots(self) -> Path:
        return self.state_dir / "snapshots" / self.host

    def set_dir(self, set_id: str, local_state: str) -> Path:
        return (self.complete if local_state == "complete" else self.inflight) / one_component(set_id)

    def snapshot_dir(self, set_id: str, partial: bool = False) -> Path:
        return self.snapshots / (f"{one_component(set_id)}.partial" if partial else one_component(set_id))

    def ensure(self) -> None:
        for d in (self.inflight, self.complete, self.snapshots):
            d.mkdir(parents=True, exist_ok=True)


def one_component(name: str) -> str:
    """A set id as a path component; anything else (empty, ``..``, a slash) would aim a removal too high."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a single path component: {name!r}")
    return name


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        os.unlink(path)
