"""What each stored archive says about itself, so the store alone can rebuild the catalog.

A part's description is compact JSON in printable ASCII, at most 1024
characters (Glacier's limit).  A set's manifest is an archive of its own,
stored last: its presence in the store is what makes a set complete there.

With encryption on, nothing in the store says more than host, set, a
directory's number and the stored (encrypted) bytes' sha256: descriptions name
no directory and no plaintext size, and the manifest (which lists paths, sizes
and the plaintext hashes of every file) is xz-compressed, then gpg-encrypted to
the same recipients as the parts.  A fresh machine needs the secret key to
rebuild the catalog, exactly as it needs it to restore.
"""

from __future__ import annotations

import json
import lzma
from typing import Any

from ..config import EncryptionConfig
from ..errors import OrchestratorError
from .codec import gpg_decrypt_bytes, gpg_encrypt_bytes

MAGIC = "geo1"
MANIFEST_VERSION = 2
MAX_DESCRIPTION = 1024
XZ_MAGIC = b"\xfd7zXZ\x00"


def part_description(*, host, set_id, slug, idx, sha256, plain_size=None) -> str:
    fields = {"t": "part", "h": host, "s": set_id, "d": slug, "i": idx, "sha": sha256}
    if plain_size is not None:
        fields["ps"] = plain_size
    return _encode(fields)


def describe_part(set_row, dir_row, part) -> str:
    """The description a part of this set carries in the store (stable for the set's lifetime)."""
    if set_row["encrypted"]:
        return part_description(host=set_row["host"], set_id=set_row["id"], slug=f"d{dir_row['position']}",
                                idx=part["idx"], sha256=part["sha256"])
    return part_description(host=set_row["host"], set_id=set_row["id"], slug=part["slug"], idx=part["idx"],
                            sha256=part["sha256"], plain_size=part["plain_size"])


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


def build_manifest(set_row, dirs, parts, files: dict[str, list] | None = None) -> dict:
    """The manifest document: the set, its directories, parts and file index."""
    return {
        "format": MAGIC,
        "version": MANIFEST_VERSION,
        "set": {k: set_row[k] for k in set_row.keys() if k not in ("local_state", "manifest_id", "error", "verified")},
        "dirs": [{k: d[k] for k in ("slug", "path", "position", "tar_rc", "bytes_in", "entries")} for d in dirs],
        "parts": [_part_doc(p) for p in parts],
        "files": {slug: [_file_doc(row) for row in rows] for slug, rows in (files or {}).items()},
    }


def encode_manifest(doc: dict, encryption: EncryptionConfig) -> bytes:
    """JSON, xz-compressed, then gpg-encrypted when recipients are set."""
    data = lzma.compress(json.dumps(doc, sort_keys=True).encode(), format=lzma.FORMAT_XZ, preset=6)
    return gpg_encrypt_bytes(encryption, data, "the manifest") if encryption.enabled else data


def decode_manifest(data: bytes, encryption: EncryptionConfig, label: str) -> dict:
    """The manifest document from any format we ever stored (plain JSON, xz, gpg around xz)."""
    if not data.startswith((b"{", XZ_MAGIC)):
        data = gpg_decrypt_bytes(encryption, data, label)
    if data.startswith(XZ_MAGIC):
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as exc:
            raise OrchestratorError(f"{label} is not a valid xz stream: {exc}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise OrchestratorError(f"{label} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != MAGIC:
        raise OrchestratorError(f"{label} has unknown format {doc.get('format') if isinstance(doc, dict) else None!r}")
    return doc


def _file_doc(row) -> list:
    keep = [_text(name) for name in row["keep"].split(b"\0")] if row["keep"] else []
    link = _text(bytes(row["link"])) if row["link"] is not None else None
    return [_text(bytes(row["path"])), row["type"], row["mode"], row["uid"], row["gid"], row["size"],
            row["sha256"], link, keep]


def file_row(doc: list) -> dict:
    """A manifest file entry back into the catalog's columns."""
    path, kind, mode, uid, gid, size, sha256, link, keep = doc
    return {"path": _raw(path), "type": kind, "mode": mode, "uid": uid, "gid": gid, "size": size,
            "sha256": sha256, "link": _raw(link) if link is not None else None,
            "keep": b"\0".join(_raw(k) for k in keep) if keep else None}


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")  # JSON keeps lone surrogates, so odd bytes survive


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _part_doc(part) -> dict[str, Any]:
    doc = {k: part[k] for k in part.keys() if k not in ("set_id", "status", "upload_id", "leaves")}
    doc["leaves"] = part["leaves"].hex() if part["leaves"] else None
    return doc
