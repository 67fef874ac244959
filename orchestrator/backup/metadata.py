"""What each stored archive says about itself, so the store alone can rebuild the catalog.

A part's description is compact JSON in printable ASCII, at most 1024
characters (Glacier's limit).  A set's manifest is an archive of its own,
stored last: its presence in the store is what makes a set complete there.
"""

from __future__ import annotations

import json
from typing import Any

MAGIC = "geo1"
MAX_DESCRIPTION = 1024


def part_description(*, host, set_id, slug, idx, sha256, plain_size) -> str:
    return _encode({"t": "part", "h": host, "s": set_id, "d": slug, "i": idx, "sha": sha256, "ps": plain_size})


def manifest_description(*, host, set_id) -> str:
    return _encode({"t": "manifest", "h": host, "s": set_id})


def catalog_description(*, host, set_id) -> str:
    return _encode({"t": "catalog", "h": host, "s": set_id})


def _encode(fields: dict[str, Any]) -> str:
    text = MAGIC + " " + json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_DESCRIPTION:
        raise ValueError(f"archive description too long ({len(text)} > {MAX_DESCRIPTION})")
    return text


def parse_description(text: str) -> dict[str, Any] | None:
    """The fields of one of our descriptions, or None for a foreign archive."""
    magic, _, body = text.partition(" ")
    if magic != MAGIC:
        return None
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) and "t" in fields else None


def build_manifest(set_row, dirs, parts) -> bytes:
    doc = {
        "format": MAGIC,
        "set": {k: set_row[k] for k in set_row.keys() if k not in ("local_state", "manifest_id", "error")},
        "dirs": [{k: d[k] for k in ("slug", "path", "position", "tar_rc", "bytes_in")} for d in dirs],
        "parts": [_part_doc(p) for p in parts],
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _part_doc(part) -> dict[str, Any]:
    doc = {k: part[k] for k in part.keys() if k not in ("set_id", "status", "upload_id", "leaves")}
    doc["leaves"] = part["leaves"].hex() if part["leaves"] else None
    return doc
