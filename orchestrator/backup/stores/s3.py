"""An S3 bucket (or any S3-compatible store) as the offsite store, in any storage class.

Key layout under ``backup.store.prefix`` (the archive id is the object key)::

    <prefix><host>/<set>/<slug>.tar.<idx>        a part (idx zero-padded to 6 digits)
    <prefix><host>/<set>/<slug>.tar.<idx>.<sha>  the same part, when the plain key already holds a
                                                 *different* archive (sha: first 16 hex of its sha256)
    <prefix><host>/<set>/MANIFEST.json           a set's manifest
    <prefix><host>/<set>/CATALOG                 the copy of the catalog stored after that set
    <prefix>_other/<dsha>-<sha256>               anything else: dsha is 16 hex of the description's
                                                 sha256, sha256 the content's

Host, set and slug are percent-encoded (``urllib.parse.quote``, nothing kept
but letters, digits and ``_.-~``), so two different parts never share a plain key.

Keys follow from the description, so ``put`` looks before it uploads: an object
already at the key with the same sha256 and size *is* the upload (a rerun after
a crash between upload and catalog write adopts it), and ``find`` is one HEAD.
The upload journal is therefore not used.  A part never overwrites a different
archive (it goes to the ``.<sha>`` key instead); a manifest or catalog copy does
overwrite the set's previous one, because a set has exactly one and this
catalog is the one committing it.  Incomplete multipart uploads of the key,
which only a hard kill leaves behind, are aborted before a new upload of it.

Each object carries its description, sha256 and tree hash as user metadata
(``geo-description``, ``geo-sha256``, ``geo-tree-hash``), so a listing plus one
HEAD per object rebuilds the catalog.  Uploads go through boto3's transfer
manager with SHA-256 checksums per part, which S3 verifies on arrival; the file
is hashed first and must match the catalog's sha256 and tree hash, and the
object's checksum is compared with the one computed from the same bytes.

Parts go to ``backup.store.storage_class``.  Manifests, catalog copies and
other descriptive objects always go to STANDARD: a fresh machine rebuilds its
catalog at once instead of waiting hours for a retrieval, and replacing the
catalog copy after every set costs no early-deletion charge or 128 KiB minimum
(they are small; their storage cost is negligible).

The credentials need s3:ListBucket (a HEAD of a missing key is a 403 without
it), s3:GetObject, s3:PutObject, s3:DeleteObject, s3:RestoreObject,
s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket.

``list`` is the whole listing under the prefix: objects in our layout are read
with one HEAD each (in parallel) for their metadata; anything else is listed
with an empty description, which the catalog code treats as foreign.

Retries (see ``..retry``): botocore retries every request (throttling, 5xx,
connection errors); s3transfer adds no retries of its own to uploads.  An
upload that S3 holds differently from the file (size, metadata or checksum) is
deleted and ``put`` fails with one line, never uploading twice on its own.  A
read is one GET whose body must arrive whole and at the right length (a whole
object also matching the sha256 stored with it); a wrong one raises
``CorruptRangeError`` for ``download`` (ranges) or ``Store.read_range(end=-1)``
/ ``get`` (whole archives) to fetch again.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlparse

import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.utils import ChunksizeAdjuster

from ...config import MIB, StoreConfig
from ...errors import ConfigError, NotReadyError, OrchestratorError
from .. import metadata
from ..layout import PART_DIGITS
from ..retry import CorruptRangeError
from ..treehash import TreeHasher
from .access import client as store_client, store_error
from .base import RETRIEVAL_HOURS, ArchiveInfo, Retrieval, Store

DEFAULT_PART_SIZE = 16 * MIB
READ_SIZE = 8 * MIB
COLD_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
TIERS = ("Expedited", "Standard", "Bulk")
META_DESCRIPTION = "geo-description"
META_SHA256 = "geo-sha256"
META_TREE_HASH = "geo-tree-hash"
OTHER_DIR = "_other"
MANIFEST_NAME = "MANIFEST.json"
CATALOG_NAME = "CATALOG"
SET_FILES = {"manifest": MANIFEST_NAME, "catalog": CATALOG_NAME}
#: what reading a response body raises when the bytes did not all arrive
BODY_ERRORS = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
               botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)


def _component(text: str) -> str:
    """One key component, reversible and without ``/``; ``.`` and ``..`` are encoded too."""
    encoded = quote(str(text), safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


class S3Store(Store):
    def __init__(self, cfg: StoreConfig, client=None):
        """``cfg`` is validated already (StoreConfig.check): the bucket name, part size and tier."""
        self.cfg = cfg
        self.bucket = cfg.bucket
        prefix = cfg.prefix.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.storage_class = cfg.storage_class
        self.storage_key = cfg.storage_class
        self.metadata_class = "STANDARD"
        self.part_size = int(cfg.part_size) or DEFAULT_PART_SIZE
        self.workers = max(1, cfg.upload_workers)
        self.client = client if client is not None else store_client("s3", cfg)

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> "S3Store":
        return cls(cfg)

    @property
    def name(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        if self.cfg.endpoint_url:
            url = urlparse(self.cfg.endpoint_url)
            host = url.hostname or self.cfg.endpoint_url.rsplit("@", 1)[-1]
            where += f"@{host}" + (f":{url.port}" if url.port else "")  # never the userinfo part
        return where

    # errors -----------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> OrchestratorError:
        """One line, no secrets; bucket trouble names ``backup.store.bucket``."""
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return ConfigError(f"backup.store.bucket: {what}: bucket {self.bucket!r} does not exist")
            if code in ("403", "Forbidden") or (status == 403 and code.isdigit()):
                return OrchestratorError(f"{what}: AWS refused access (403 Forbidden): check the credentials "
                                         "and the IAM policy for this bucket")
        return store_error(exc, what)

    @staticmethod
    def _code(exc: Exception) -> str:
        if isinstance(exc, botocore.exceptions.ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    # keys -------------------------------------------------------------------------------
    def _keys_for(self, description: str, sha256: str | None) -> list[str]:
        """Where an archive with this description lives: the plain key first, then the fallback.

        For a foreign description the key needs the content's sha256; without it
        (``find``) the result is a listing prefix ending in ``-``.
        """
        fields = metadata.parse_description(description) or {}
        kind = fields.get("t")
        host, set_id = fields.get("h"), fields.get("s")
        if kind == "part" and isinstance(host, str) and isinstance(set_id, str) and isinstance(fields.get("d"), str) \
                and isinstance(fields.get("i"), int) and not isinstance(fields.get("i"), bool) and fields["i"] >= 0:
            base = (f"{self.prefix}{_component(host)}/{_component(set_id)}/"
                    f"{_component(fields['d'])}.tar.{fields['i']:0{PART_DIGITS}d}")
            content = sha256 or fields.get("sha")
            hexed = isinstance(content, str) and re.fullmatch(r"[0-9a-f]{16,}", content)
            return [base] + ([f"{base}.{content[:16]}"] if hexed else [])
        if kind in SET_FILES and isinstance(host, str) and isinstance(set_id, str):
            return [f"{self.prefix}{_component(host)}/{_component(set_id)}/{SET_FILES[kind]}"]
        dsha = hashlib.sha256(description.encode()).hexdigest()[:16]
        return [f"{self.prefix}{OTHER_DIR}/{dsha}-" + (sha256 or "")]

    def _looks_like_ours(self, key: str) -> bool:
        rel = key[len(self.prefix):]
        return bool(re.fullmatch(r"[^/]*/[^/]+/(?:[^/]+\.tar\.\d+(?:\.[0-9a-f]{16})?|MANIFEST\.json|CATALOG)", rel)
                    or re.fullmatch(OTHER_DIR + r"/[0-9a-f]{16}-[0-9a-f]{64}", rel))

    # objects ----------------------------------------------------------------------------
    def _head(self, key: str, what: str) -> dict | None:
        """The object's headers, or None when there is no such object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(exc, what) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, what) from None

    def _head_existing(self, key: str, what: str) -> dict:
        head = self._head(key, what)
        if head is None:
            raise OrchestratorError(f"{what}: archive {key} is not in the store")
        return head

    @staticmethod
    def _meta(head: dict, name: str) -> str | None:
        return (head.get("Metadata") or {}).get(name)

    def ensure(self) -> None:
        """The bucket must exist and be reachable; it is never created here."""
        what = f"{self.name}: checking bucket {self.bucket}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = self._code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(f"backup.store.bucket: bucket {self.bucket!r} does not exist "
                                  "(create it yourself; backups never create buckets)") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise ConfigError(f"backup.store.bucket: no access to bucket {self.bucket!r} (403): check the "
                                  "bucket name, backup.store.profile and the IAM policy") from None
            region = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
            if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed") or \
                    (region and region != self.client.meta.region_name):
                hint = f"; it is in {region}" if region else ""
                raise ConfigError(f"backup.store.region: bucket {self.bucket!r} is not reachable from region "
                                  f"{self.client.meta.region_name} ({code}{hint})") from None
            raise self._error(exc, what) from None
        except botocore.exceptions.ParamValidationError:
            raise ConfigError(f"backup.store.bucket: {self.bucket!r} is not a valid S3 bucket name") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, what) from None

    # put --------------------------------------------------------------------------------
    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                              max_concurrency=self.workers, preferred_transfer_client="classic")

    def _digests(self, path: Path) -> tuple[str, str, int, str]:
        """One read: sha256, tree hash, size, and the SHA-256 checksum S3 will report (composite if multipart)."""
        size = path.stat().st_size
        multipart = size >= self.part_size
        chunk = ChunksizeAdjuster().adjust_chunksize(self.part_size, size) if multipart else max(size, 1)
        whole, tree, parts, done = hashlib.sha256(), TreeHasher(), [], 0
        with open(path, "rb", buffering=0) as fh:
            while True:
                part, got = hashlib.sha256(), 0
                while got < chunk:
                    data = fh.read(min(READ_SIZE, chunk - got))
                    if not data:
                        break
                    whole.update(data)
                    tree.update(data)
                    part.update(data)
                    got += len(data)
                done += got
                if got:
                    parts.append(part.digest())
                if got < chunk:
                    break
        full = base64.b64encode(whole.digest()).decode()
        if multipart:
            full = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
        return whole.hexdigest(), tree.hexdigest(), done, full

    @staticmethod
    def _checksum_matches(got: str | None, expected: str, parts: int) -> bool:
        """S3's checksum against ours; unknown (absent, or other part count) counts as a match."""
        if not got:
            return True
        value, _, count = got.partition("-")
        if count and count.isdigit() and int(count) != parts:
            return True  # split differently than predicted: size and S3's own part checks must do
        return value == expected

    def _abort_leftover_uploads(self, key: str) -> None:
        """A kill -9 mid-upload leaves a multipart upload that is billed until aborted."""
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            pass  # best effort: a lifecycle rule (AbortIncompleteMultipartUpload) is the backstop

    def put(self, path: Path, *, description: str, sha256: str, tree_hash: str, journal=None) -> str:
        """Upload ``path`` unless the object is already there; returns its key."""
        if len(description) > metadata.MAX_DESCRIPTION or not re.fullmatch(r"[\x20-\x7e]*", description) \
                or description != description.strip():
            raise OrchestratorError(f"{self.name}: archive description of {path.name} is not <= "
                                    f"{metadata.MAX_DESCRIPTION} printable ASCII without outer spaces")
        got_sha, got_tree, size, checksum = self._digests(path)
        if (got_sha, got_tree) != (sha256, tree_hash):
            raise OrchestratorError(f"{self.name}: {path.name} does not match its catalog entry (sha256 "
                                    f"{got_sha[:16]}..., expected {sha256[:16]}...); not uploaded")
        multipart = size >= self.part_size
        parts = math.ceil(size / ChunksizeAdjuster().adjust_chunksize(self.part_size, size)) if multipart else 1
        fields = metadata.parse_description(description) or {}
        key = None
        for candidate in self._keys_for(description, sha256):
            head = self._head(candidate, f"{self.name}: looking for {candidate}")
            if head is None:
                key = candidate
                break
            if self._meta(head, META_SHA256) == sha256 and self._meta(head, META_DESCRIPTION) == description:
                if head.get("ContentLength") == size and \
                        self._checksum_matches(head.get("ChecksumSHA256"), checksum, parts):
                    return candidate  # already uploaded (a rerun after a crash): nothing to send
                key = candidate  # our archive, but damaged: upload it again
                break
            if fields.get("t") != "part":
                key = candidate  # a set's manifest or catalog copy is rewritten; a content-addressed key is ours
                break
        if key is None:
            raise OrchestratorError(f"{self.name}: every key for {path.name} holds a different archive; "
                                    "refusing to overwrite any of them")
        if multipart:
            self._abort_leftover_uploads(key)
        is_part = fields.get("t") == "part"
        extra = {
            "StorageClass": self.storage_class if is_part else self.metadata_class,
            "ChecksumAlgorithm": "SHA256",
            "Metadata": {META_DESCRIPTION: description, META_SHA256: sha256, META_TREE_HASH: tree_hash},
        }
        what = f"{self.name}: uploading {path.name} to {key}"
        try:
            with create_transfer_manager(self.client, self._transfer_config()) as manager:
                manager.upload(str(path), self.bucket, key, extra_args=extra).result()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, what) from None
        self._verify_upload(key, what, description, sha256, size, checksum, parts)
        return key

    def _verify_upload(self, key: str, what: str, description: str, sha256: str, size: int,
                       checksum: str, parts: int) -> None:
        head = self._head(key, what)
        problem = None
        if head is None:
            problem = "the object is missing after the upload"
        elif head.get("ContentLength") != size:
            problem = f"the object holds {head.get('ContentLength')} bytes, not {size}"
        elif self._meta(head, META_SHA256) != sha256 or self._meta(head, META_DESCRIPTION) != description:
            problem = "the object's metadata did not arrive intact"
        elif not self._checksum_matches(head.get("ChecksumSHA256"), checksum, parts):
            problem = "the object's SHA-256 checksum differs from the file's"
        if problem:
            if head is not None:
                self.delete(key)
            raise OrchestratorError(f"{what}: {problem}; the object was removed, the local part is kept")

    # read -------------------------------------------------------------------------------
    def _read_once(self, archive_id: str, start: int, end: int, job_id: str | None) -> bytes:
        """One GET (retried by botocore only), its body checked; a wrong answer is ``CorruptRangeError``.

        Checked here: the body arrived whole (a transfer that breaks off after
        the response began is past botocore's retries), its length, and for a
        whole object the sha256 stored with it (botocore itself checks S3's
        SHA-256 checksum of a whole single-part object as it streams in).
        """
        if 0 <= end <= start:
            return b""
        what = f"{self.name}: reading {archive_id}" + (f" bytes {start}-{end - 1}" if end >= 0 else "")
        response = self._get_object(archive_id, start, end, what)
        try:
            data = response["Body"].read()
        except botocore.exceptions.FlexibleChecksumError:
            raise CorruptRangeError(what, "bytes do not match the checksum S3 sent with them") from None
        except BODY_ERRORS as exc:
            raise CorruptRangeError(what, f"transfer broke off ({type(exc).__name__})") from None
        expected = end - start if end >= 0 else response.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise CorruptRangeError(what, f"got {len(data)} bytes, expected {expected}")
        sha256 = self._meta(response, META_SHA256)
        if start == 0 and end < 0 and sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptRangeError(what, "bytes do not match the sha256 stored with the object")
        return data

    def _get_object(self, archive_id: str, start: int, end: int, what: str) -> dict:
        args = {"Bucket": self.bucket, "Key": archive_id}
        if end >= 0:
            args["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            args["Range"] = f"bytes={start}-"
        try:
            return self.client.get_object(**args)
        except botocore.exceptions.ClientError as exc:
            code = self._code(exc)
            if code == "InvalidObjectState":
                cls = exc.response.get("Error", {}).get("StorageClass") or "cold storage"
                raise NotReadyError(f"{what}: the object is in {cls} and not restored yet; request a "
                                    "retrieval (inv restore does) and try again when it is ready") from None
            if code in ("NoSuchKey", "404"):
                raise OrchestratorError(f"{what}: archive {archive_id} is not in the store") from None
            raise self._error(exc, what) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, what) from None

    # retrieval --------------------------------------------------------------------------
    @staticmethod
    def _storage_class(head: dict) -> str:
        return head.get("StorageClass") or "STANDARD"

    @staticmethod
    def _is_cold(head: dict) -> bool:
        return S3Store._storage_class(head) in COLD_CLASSES or bool(head.get("ArchiveStatus"))

    def _eta(self, head: dict, tier: str) -> float | None:
        cls = self._storage_class(head)
        if head.get("ArchiveStatus"):
            cls = "DEEP_ARCHIVE" if "DEEP" in head["ArchiveStatus"] else "GLACIER"
        if cls == "DEEP_ARCHIVE" and tier == "Expedited":
            tier = "Standard"
        return RETRIEVAL_HOURS.get((cls, tier))

    @staticmethod
    def _restore_state(head: dict) -> str:
        """``absent``, ``pending`` or ``ready`` from the ``x-amz-restore`` header."""
        restore = head.get("Restore") or ""
        if not restore:
            return "absent"
        if re.search(r'ongoing-request\s*=\s*"?true', restore):
            return "pending"
        return "ready"

    def retrieval(self, archive_id: str, job_id: str | None = None) -> Retrieval:
        head = self._head_existing(archive_id, f"{self.name}: checking {archive_id}")
        if not self._is_cold(head):
            return Retrieval("ready")
        state = self._restore_state(head)
        if state == "pending":
            return Retrieval("pending", eta_hours=self._eta(head, self.cfg.retrieval_tier))
        return Retrieval(state)

    def request_retrieval(self, archive_id: str, tier: str, days: int) -> Retrieval:
        what = f"{self.name}: requesting {archive_id}"
        if tier not in TIERS:
            raise ConfigError(f"backup.store.retrieval_tier: {tier!r} is not one of {', '.join(TIERS)}")
        if days < 1:
            raise ConfigError(f"backup.store.retrieval_days: must be at least 1, got {days}")
        head = self._head_existing(archive_id, what)
        if not self._is_cold(head):
            return Retrieval("ready")
        state = self._restore_state(head)
        if state != "absent":
            return Retrieval(state, eta_hours=self._eta(head, tier) if state == "pending" else None)
        cls = self._storage_class(head)
        deep = cls == "DEEP_ARCHIVE" or "DEEP" in (head.get("ArchiveStatus") or "")
        if deep and tier == "Expedited":
            raise ConfigError(f"backup.store.retrieval_tier: Expedited is not offered for DEEP_ARCHIVE data "
                              f"({archive_id}); use Standard (about 12 h) or Bulk (about 48 h)")
        request = {"GlacierJobParameters": {"Tier": tier}}
        if not head.get("ArchiveStatus"):
            request["Days"] = days  # Intelligent-Tiering archive tiers take no Days
        try:
            response = self.client.restore_object(Bucket=self.bucket, Key=archive_id, RestoreRequest=request)
        except botocore.exceptions.ClientError as exc:
            code = self._code(exc)
            if code == "RestoreAlreadyInProgress":
                return Retrieval("pending", eta_hours=self._eta(head, tier))
            if code == "InvalidObjectState":
                return self.retrieval(archive_id)
            if code == "GlacierExpeditedRetrievalNotAvailable":
                raise OrchestratorError(f"{what}: AWS has no Expedited capacity right now; retry or set "
                                        "backup.store.retrieval_tier to Standard") from None
            raise self._error(exc, what) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, what) from None
        if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            return Retrieval("ready")  # already restored: AWS only extended the expiry
        return Retrieval("pending", eta_hours=self._eta(head, tier))

    # inventory --------------------------------------------------------------------------
    def list(self) -> list[ArchiveInfo]:
        what = f"{self.name}: listing"
        listed = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                listed.extend(page.get("Contents", []))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, what) from None

        def foreign(obj: dict) -> ArchiveInfo:
            modified = obj.get("LastModified")
            return ArchiveInfo(archive_id=obj["Key"], size=obj.get("Size", 0), sha256="", tree_hash="",
                               description="", created=modified.timestamp() if modified else 0.0)

        def info(obj: dict) -> ArchiveInfo | None:
            if not self._looks_like_ours(obj["Key"]):
                return foreign(obj)
            head = self._head(obj["Key"], f"{what}: {obj['Key']}")
            if head is None:
                return None  # deleted since the listing
            if self._meta(head, META_DESCRIPTION) is None:
                return foreign(obj)
            modified = head.get("LastModified")
            return ArchiveInfo(archive_id=obj["Key"], size=head.get("ContentLength", 0),
                               sha256=self._meta(head, META_SHA256) or "",
                               tree_hash=self._meta(head, META_TREE_HASH) or "",
                               description=self._meta(head, META_DESCRIPTION),
                               created=modified.timestamp() if modified else 0.0)

        with ThreadPoolExecutor(min(self.workers * 2, 16), thread_name_prefix="s3-list") as pool:
            return [found for found in pool.map(info, listed) if found is not None]

    def find(self, description: str) -> list[str]:
        keys = self._keys_for(description, None)
        if keys[0].endswith("-"):  # a foreign description: its keys share a prefix
            try:
                keys = [obj["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=keys[0]) for obj in page.get("Contents", [])]
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise self._error(exc, f"{self.name}: looking for an archive") from None
        found = []
        for key in keys:
            head = self._head(key, f"{self.name}: looking for {key}")
            if head is not None and self._meta(head, META_DESCRIPTION) == description:
                found.append(key)
        return found

    def delete(self, archive_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=archive_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, f"{self.name}: deleting {archive_id}") from None
