"""Amazon S3 Glacier vaults (the original 2012 REST API): upload, resume, retrieve, inventory.

A vault is not a bucket: it cannot be listed or read directly.  Reading an
archive means asking for it (a retrieval *job*) and waiting hours; listing
means asking for an inventory job, which reflects the vault as of its last
daily inventory.  So this store:

* uploads small files with ``upload_archive`` and larger ones as multipart
  uploads whose parts (and whole-archive tree hash) we hash ourselves;
* keeps the multipart upload id in the caller's journal (the catalog) so a
  rerun after a crash or ``kill -9`` sends only the parts AWS does not already
  hold, and writes ``archive:<id>`` there before ``put`` returns, because it
  cannot find its archives later in any cheap way;
* answers ``list()`` from the newest finished inventory job, and
  ``read_range()`` from the output of a finished archive-retrieval job.
  Both raise :class:`NotReadyError` (one line, with an estimate) until AWS has
  the data ready; nothing is kept on this machine, so any machine can ask.

Multipart uploads that a crash left unfinished are not aborted on purpose: they
are what a resume continues.  AWS drops an upload id it has not seen completed
within about 24 hours; an expired id simply starts a new upload.

Retries (see ``..retry``): botocore retries every request (throttling, 5xx,
connection errors).  An upload AWS refuses for its tree hash (a part or archive
damaged in transit) fails at once, with one line; a multipart upload stays open
in the journal, so the rerun sends only the parts AWS lacks.  A read checks the
body's length and the tree hash AWS sends with an aligned range or a whole
output, and raises ``CorruptRangeError`` without looping; ``download`` (ranges)
or ``Store.read_range(end=-1)`` / ``get`` (whole archives) fetch it again.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

import botocore.exceptions

from ...config import StoreConfig
from ...faults import crash_point
from ...errors import ConfigError, NotReadyError, OrchestratorError
from .. import metadata
from ..retry import CorruptRangeError, verified_read
from ..treehash import MIB, TreeHasher, combine
from .access import client, store_error
from .base import ARCHIVE_JOURNAL_PREFIX, RETRIEVAL_HOURS, ArchiveInfo, Retrieval, Store, UploadJournal

GIB = 1024 * MIB
MAX_PARTS = 10_000
MIN_PART_SIZE = MIB
MAX_PART_SIZE = 4 * GIB
MAX_ARCHIVE_SIZE = MAX_PARTS * MAX_PART_SIZE  # 40,000 GiB
TIERS = ("Expedited", "Standard", "Bulk")
INVENTORY_HOURS = 4.0  # AWS: "most inventory jobs complete within about 4 hours"
STREAM_CHUNK = 8 * MIB
#: error codes meaning "no such vault / upload / job" (moto says VaultNotFound for a vault)
NOT_FOUND = ("ResourceNotFoundException", "VaultNotFound")


# part arithmetic (pure functions, unit-tested) ---------------------------------------------
def is_valid_part_size(part_size: int) -> bool:
    """A power of two MiB from 1 MiB to 4 GiB, as Glacier requires."""
    mib, rest = divmod(part_size, MIB)
    return rest == 0 and MIN_PART_SIZE <= part_size <= MAX_PART_SIZE and mib & (mib - 1) == 0


def choose_part_size(size: int, configured: int = 0) -> int:
    """The part size for an archive of ``size`` bytes: the smallest power of two MiB giving <= 10,000 parts.

    ``configured`` (``backup.store.part_size``) wins when set; it must still be
    valid and yield at most 10,000 parts.
    """
    if size > MAX_ARCHIVE_SIZE:
        raise OrchestratorError(
            f"archive of {size} bytes is larger than a Glacier vault takes (10,000 parts of 4 GiB = 40,000 GiB); "
            "lower backup.chunk_size")
    if configured:
        if not is_valid_part_size(configured):
            raise ConfigError(f"backup.store.part_size: {configured} is not a power of two MiB from 1M to 4G")
        if math.ceil(size / configured) > MAX_PARTS:
            raise ConfigError(f"backup.store.part_size: {configured} bytes would cut a {size}-byte archive into "
                              f"more than {MAX_PARTS} parts; raise it or leave it 0 (automatic)")
        return configured
    part_size = MIN_PART_SIZE
    while math.ceil(size / part_size) > MAX_PARTS:
        part_size *= 2
    return part_size


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each part; every part is ``part_size`` long except the last."""
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


def tree_hash_bytes(data: bytes) -> bytes:
    hasher = TreeHasher()
    hasher.update(data)
    return hasher.digest()


def archive_tree_hash(part_hashes: list[bytes]) -> str:
    """The whole archive's tree hash from its parts' tree hashes.

    Valid because every part but the last is a power of two MiB: each part's
    root is a node of the archive's tree, so folding the part roots with the
    same pairing rule gives the archive's root.
    """
    return combine(part_hashes).hex()


def check_description(description: str) -> None:
    if len(description) > metadata.MAX_DESCRIPTION or not all(32 <= ord(c) < 127 for c in description):
        raise OrchestratorError("archive description must be at most 1024 printable ASCII characters")


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def about(hours: float) -> str:
    """``about 5 hours`` / ``about 4 minutes``: how an estimate reads in a one-line message."""
    if hours < 1:
        minutes = max(1, round(hours * 60))
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"about {hours:.0f} hour{'s' if round(hours) != 1 else ''}"


def _short(ident: str) -> str:
    return ident[:16] + "..." if len(ident) > 19 else ident


class GlacierVaultStore(Store):
    """Archives in one Glacier vault; identity ``glacier:<region>/<vault>``."""

    storage_key = "vault"

    def __init__(self, glacier, vault: str, *, part_size: int = 0, upload_workers: int = 4,
                 retrieval_tier: str = "Standard"):
        self.client = glacier
        self.vault = vault
        self.part_size = part_size
        self.upload_workers = max(1, upload_workers)
        self.retrieval_tier = retrieval_tier
        self._ensured = False
        self._lock = threading.Lock()
        self._ready_jobs: dict[str, str] = {}  # archive id -> job id whose output is readable

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> "GlacierVaultStore":
        """``cfg`` is validated already (StoreConfig.check: part size, vault name; upload_workers >= 1)."""
        return cls(client("glacier", cfg), cfg.vault, part_size=cfg.part_size,
                   upload_workers=cfg.upload_workers, retrieval_tier=cfg.retrieval_tier)

    @property
    def name(self) -> str:
        return f"glacier:{self.client.meta.region_name}/{self.vault}"

    # AWS calls ------------------------------------------------------------------------------
    def _aws(self, what: str, method: str, *, missing_ok: bool = False, **params):
        """One vault API call; AWS errors become one line. ``missing_ok``: None when the thing is not found."""
        call = getattr(self.client, method)
        return self._translated(what, missing_ok, lambda: call(accountId="-", vaultName=self.vault, **params))

    def _pages(self, what: str, method: str, key: str, *, missing_ok: bool = False, **params) -> list[dict] | None:
        """Every item of a paginated listing (``Marker`` pagination)."""
        def collect() -> list[dict]:
            pages = self.client.get_paginator(method).paginate(accountId="-", vaultName=self.vault, **params)
            return [item for page in pages for item in (page.get(key) or [])]

        return self._translated(what, missing_ok, collect)

    def _translated(self, what: str, missing_ok: bool, call):
        try:
            return call()
        except botocore.exceptions.ClientError as exc:
            if missing_ok and exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                return None
            raise store_error(exc, f"{self.name}: {what}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise store_error(exc, f"{self.name}: {what}") from None

    # vault ---------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the vault when ``describe_vault`` says it is missing (creating is idempotent in AWS too)."""
        if self._ensured:
            return
        if self._aws("describe vault", "describe_vault", missing_ok=True) is None:
            self._aws("create vault", "create_vault")
        self._ensured = True

    # upload --------------------------------------------------------------------------------
    def put(self, path: Path, *, description: str, sha256: str, tree_hash: str,
            journal: UploadJournal | None = None) -> str:
        check_description(description)
        saved = journal.load() if journal else None
        if saved and saved.startswith(ARCHIVE_JOURNAL_PREFIX):
            return saved[len(ARCHIVE_JOURNAL_PREFIX):]  # stored before a crash: never upload twice
        size = path.stat().st_size
        part_size = choose_part_size(size, self.part_size)
        if size <= part_size:
            archive_id = self._upload_single(path, description, tree_hash)
        else:
            archive_id = self._upload_multipart(path, size, part_size, description, tree_hash, journal, saved)
        if journal:
            journal.save(ARCHIVE_JOURNAL_PREFIX + archive_id)
        return archive_id

    def _upload_single(self, path: Path, description: str, tree_hash: str) -> str:
        with open(path, "rb") as body:
            resp = self._aws(f"upload {path.name}", "upload_archive", archiveDescription=description,
                             checksum=tree_hash, body=body)
        if resp.get("checksum") != tree_hash:
            self._delete_quietly(resp["archiveId"])
            raise OrchestratorError(f"{self.name}: upload of {path.name} came back with tree hash "
                                    f"{str(resp.get('checksum'))[:16]}..., expected {tree_hash[:16]}...")
        return resp["archiveId"]

    def _upload_multipart(self, path: Path, size: int, part_size: int, description: str, tree_hash: str,
                          journal: UploadJournal | None, saved: str | None) -> str:
        upload_id, have = self._resume_point(saved, part_size, description)
        if upload_id is None:
            resp = self._aws(f"start multipart upload of {path.name}", "initiate_multipart_upload",
                             archiveDescription=description, partSize=str(part_size))
            upload_id, have = resp["uploadId"], {}
        if journal and upload_id != saved:
            journal.save(upload_id)
        hashes = self._send_parts(path, size, part_size, upload_id, have)
        whole = archive_tree_hash(hashes)
        if whole != tree_hash:
            self._abort_quietly(upload_id)
            if journal:
                journal.clear()
            raise OrchestratorError(f"{path.name} changed since it was hashed (tree hash {whole[:16]}..., "
                                    f"catalog says {tree_hash[:16]}...); nothing was stored")
        resp = self._aws(f"complete multipart upload of {path.name}", "complete_multipart_upload",
                         uploadId=upload_id, archiveSize=str(size), checksum=whole)
        if resp.get("checksum") != whole:
            self._delete_quietly(resp["archiveId"])
            raise OrchestratorError(f"{self.name}: multipart upload of {path.name} completed with tree hash "
                                    f"{str(resp.get('checksum'))[:16]}..., expected {whole[:16]}...")
        return resp["archiveId"]

    def _resume_point(self, saved: str | None, part_size: int, description: str) -> tuple[str | None, dict]:
        """The upload to continue and the parts AWS already holds: ``{start: (end, tree hash hex)}``.

        The journal's upload id comes first; without one (a crash between
        initiate and the journal write), an open upload with exactly our
        description and part size is adopted.
        """
        candidates = [saved] if saved else []
        if not saved:
            uploads = self._pages("list multipart uploads", "list_multipart_uploads", "UploadsList") or []
            ours = [u for u in uploads if u.get("ArchiveDescription") == description
                    and int(u.get("PartSizeInBytes") or 0) == part_size]
            ours.sort(key=lambda u: _parse_time(u.get("CreationDate")), reverse=True)
            candidates = [u["MultipartUploadId"] for u in ours]
        for upload_id in candidates:
            listing = self._list_parts(upload_id)
            if listing is None:
                continue  # expired or completed: AWS no longer knows it
            desc, listed_size, parts = listing
            if desc == description and listed_size == part_size:
                return upload_id, parts
            if upload_id == saved:
                self._abort_quietly(upload_id)  # ours, but for other settings: it can never complete
        return None, {}

    def _list_parts(self, upload_id: str) -> tuple[str, int, dict] | None:
        pages = []
        try:
            for page in self.client.get_paginator("list_parts").paginate(
                    accountId="-", vaultName=self.vault, uploadId=upload_id):
                pages.append(page)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                return None
            raise store_error(exc, f"{self.name}: list parts of upload {_short(upload_id)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise store_error(exc, f"{self.name}: list parts of upload {_short(upload_id)}") from None
        parts = {}
        for page in pages:
            for part in page.get("Parts") or []:
                first, _, last = part["RangeInBytes"].partition("-")
                parts[int(first)] = (int(last) + 1, part.get("SHA256TreeHash"))
        first_page = pages[0] if pages else {}
        return first_page.get("ArchiveDescription") or "", int(first_page.get("PartSizeInBytes") or 0), parts

    def _send_parts(self, path: Path, size: int, part_size: int, upload_id: str, have: dict) -> list[bytes]:
        """Hash every part; upload those AWS lacks or holds with another hash. Returns the part hashes.

        A worker reads its part only when it starts, and at most ``upload_workers``
        parts run at once, so memory stays at ``upload_workers x part_size``.
        """
        spans = part_ranges(size, part_size)
        hashes: list[bytes | None] = [None] * len(spans)
        fd = os.open(path, os.O_RDONLY)

        def one(i: int) -> None:
            start, end = spans[i]
            data = _pread_exact(fd, end - start, start)
            if len(data) != end - start:
                raise OrchestratorError(f"{path.name} shrank while it was being uploaded")
            digest = tree_hash_bytes(data)
            if have.get(start) != (end, digest.hex()):
                resp = self._aws(f"upload part {i + 1}/{len(spans)} of {path.name}", "upload_multipart_part",
                                 uploadId=upload_id, range=f"bytes {start}-{end - 1}/*",
                                 checksum=digest.hex(), body=data)
                if resp.get("checksum") not in (None, digest.hex()):
                    raise OrchestratorError(f"{self.name}: part {i + 1} of {path.name} was stored with "
                                            "another tree hash than was sent")
                crash_point("vault-part-sent")
            hashes[i] = digest

        try:
            _run_bounded(one, range(len(spans)), self.upload_workers)
        finally:
            os.close(fd)
        return hashes  # type: ignore[return-value]

    def abandon_upload(self, journal_value: str) -> None:
        if journal_value and not journal_value.startswith(ARCHIVE_JOURNAL_PREFIX):
            self._abort_quietly(journal_value)

    def _abort_quietly(self, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(accountId="-", vaultName=self.vault, uploadId=upload_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            pass  # it expires by itself within a day

    def _delete_quietly(self, archive_id: str) -> None:
        try:
            self.delete(archive_id)
        except OrchestratorError:
            pass

    # finding and listing ---------------------------------------------------------------------
    def find(self, description: str) -> list[str]:
        """Always ``[]``: a vault can only be searched through an inventory, which lags a day.

        Adopting an upload a crash left unrecorded relies on the journal instead:
        ``put`` writes ``archive:<id>`` there before it returns, and an
        unfinished multipart upload is found by its description.
        """
        return []

    def request_inventory(self) -> str:
        """Ask AWS for an inventory of the vault (a job of about 4 hours); returns the job id."""
        resp = self._aws("request vault inventory", "initiate_job",
                         jobParameters={"Type": "inventory-retrieval", "Format": "JSON"})
        return resp["jobId"]

    def list(self) -> list[ArchiveInfo]:
        """The archives of the newest finished inventory job; no state is kept here.

        Raises :class:`NotReadyError` while the inventory is still being
        prepared, and requests one when none exists.
        """
        jobs = [j for j in self._jobs() if j.get("Action") == "InventoryRetrieval"]
        done = _newest([j for j in jobs if j.get("StatusCode") == "Succeeded"])
        if done is not None:
            resp = self._aws("read vault inventory", "get_job_output", jobId=done["JobId"])
            try:
                inventory = json.load(resp["body"])
            except ValueError:
                raise OrchestratorError(f"{self.name}: the vault inventory is not valid JSON") from None
            return [_archive_info(a) for a in inventory.get("ArchiveList") or []]
        running = _newest([j for j in jobs if j.get("StatusCode") == "InProgress"])
        if running is not None:
            created = _parse_time(running.get("CreationDate"))
            waited = max(0.0, (time.time() - created) / 3600) if created else 0.0
            raise NotReadyError(
                f"{self.name}: vault inventory requested {about(waited)} ago (job {_short(running['JobId'])}); "
                f"ready in {about(max(INVENTORY_HOURS - waited, 0.1))}; run again then")
        job_id = self.request_inventory()
        raise NotReadyError(f"{self.name}: vault inventory requested now (job {_short(job_id)}); "
                            f"ready in {about(INVENTORY_HOURS)}; run again then")

    def delete(self, archive_id: str) -> None:
        """Delete an archive; one already gone counts as deleted."""
        self._aws(f"delete archive {_short(archive_id)}", "delete_archive", archiveId=archive_id, missing_ok=True)
        with self._lock:
            self._ready_jobs.pop(archive_id, None)

    # retrieval -------------------------------------------------------------------------------
    def _jobs(self) -> list[dict]:
        return self._pages("list jobs", "list_jobs", "JobList") or []

    def _job_for(self, archive_id: str) -> dict | None:
        """An existing whole-archive retrieval job for ``archive_id``: a finished one first, else a running one."""
        jobs = []
        for job in self._jobs():
            if job.get("Action") != "ArchiveRetrieval" or job.get("ArchiveId") != archive_id:
                continue
            byte_range, size = job.get("RetrievalByteRange"), job.get("ArchiveSizeInBytes")
            if byte_range and size and byte_range != f"0-{int(size) - 1}":
                continue  # a partial retrieval (another tool's): not the whole archive
            jobs.append(job)
        return (_newest([j for j in jobs if j.get("StatusCode") == "Succeeded"])
                or _newest([j for j in jobs if j.get("StatusCode") == "InProgress"]))

    def _as_retrieval(self, job: dict) -> Retrieval:
        status = job.get("StatusCode")
        if status == "Succeeded":
            return Retrieval("ready", job["JobId"])
        if status == "InProgress":
            hours = RETRIEVAL_HOURS[("vault", job.get("Tier") or "Standard")]
            created = _parse_time(job.get("CreationDate"))
            waited = max(0.0, (time.time() - created) / 3600) if created else 0.0
            return Retrieval("pending", job["JobId"], round(max(hours - waited, 1 / 60), 3))
        return Retrieval("absent", job.get("JobId"))

    def request_retrieval(self, archive_id: str, tier: str, days: int) -> Retrieval:
        """Start an archive-retrieval job, or report the one already running or finished (idempotent).

        ``days`` does not apply to a vault: a job's output stays readable for
        24 hours after it finishes, whatever is asked.
        """
        if tier not in TIERS:
            raise ConfigError(f"backup.store.retrieval_tier: {tier!r} is not one of {', '.join(TIERS)}")
        job = self._job_for(archive_id)
        if job is not None:
            return self._as_retrieval(job)
        resp = self._aws(f"request retrieval of archive {_short(archive_id)}", "initiate_job",
                         jobParameters={"Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": tier})
        return Retrieval("pending", resp["jobId"], RETRIEVAL_HOURS[("vault", tier)])

    def retrieval(self, archive_id: str, job_id: str | None = None) -> Retrieval:
        """``ready`` / ``pending`` for a known job; ``absent`` when there is none, or it expired or failed."""
        if job_id is None:
            job = self._job_for(archive_id)
            return self._as_retrieval(job) if job is not None else Retrieval("absent")
        job = self._aws(f"look up retrieval job {_short(job_id)}", "describe_job", jobId=job_id, missing_ok=True)
        if job is None or job.get("ArchiveId") not in (None, archive_id):
            return Retrieval("absent")
        return self._as_retrieval(job)

    def _readable_job(self, archive_id: str, job_id: str | None) -> str:
        """A job id whose output is ``archive_id`` and readable now, or :class:`NotReadyError`."""
        with self._lock:
            known = self._ready_jobs.get(archive_id)
        if known is not None and job_id in (None, known):
            return known
        state = self.retrieval(archive_id, job_id)
        if state.state == "ready":
            with self._lock:
                self._ready_jobs[archive_id] = state.job_id
            return state.job_id
        if state.state == "pending":
            raise NotReadyError(f"{self.name}: archive {_short(archive_id)} is being retrieved "
                                f"(job {_short(state.job_id)}); ready in {about(state.eta_hours or 0)}")
        if job_id:
            raise NotReadyError(f"{self.name}: retrieval job {_short(job_id)} for archive {_short(archive_id)} "
                                "is unknown, failed or expired (outputs last 24 hours); request the retrieval again")
        raise NotReadyError(f"{self.name}: archive {_short(archive_id)} has not been requested from the vault; "
                            "request its retrieval first")

    def _output(self, archive_id: str, job_id: str, what: str, **params):
        """``get_job_output``; a job AWS no longer knows (outputs expire) is :class:`NotReadyError`."""
        resp = self._aws(what, "get_job_output", missing_ok=True, **params)
        if resp is None:
            with self._lock:
                self._ready_jobs.pop(archive_id, None)
            raise NotReadyError(f"{self.name}: retrieval job {_short(job_id)} for archive {_short(archive_id)} "
                                "expired (outputs last 24 hours); request the retrieval again")
        return resp

    def _label(self, archive_id: str) -> str:
        return _short(archive_id)

    def _read_once(self, archive_id: str, start: int, end: int, job_id: str | None) -> bytes:
        """One ``get_job_output`` of ``[start, end)`` (``end=-1``: to the end), checked on arrival.

        The body must arrive whole and the length match; when AWS sends a tree
        hash (a tree-hash aligned range, or the whole output) the bytes must
        match it too.  A wrong answer is ``CorruptRangeError`` for the caller's
        retry layer (``..retry``); this never loops.
        """
        if 0 <= end <= start:
            return b""
        job_id = self._readable_job(archive_id, job_id)
        params = {"jobId": job_id}
        if end >= 0:
            params["range"] = f"bytes={start}-{end - 1}"
        elif start:
            params["range"] = f"bytes={start}-"
        what = f"read archive {_short(archive_id)} bytes {start}-{'end' if end < 0 else end - 1}"
        resp = self._output(archive_id, job_id, what, **params)
        what = f"{self.name}: {what}"
        try:
            data = resp["body"].read()
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise CorruptRangeError(what, f"transfer broke off ({type(exc).__name__})") from None
        if end >= 0 and len(data) != end - start:
            raise CorruptRangeError(what, f"got {len(data)} bytes for a range of {end - start}")
        checksum = resp.get("checksum")
        if checksum and tree_hash_bytes(data).hex() != checksum:
            raise CorruptRangeError(what, "bytes do not match the tree hash AWS sent with them")
        return data

    def get(self, archive_id: str, dest: Path) -> None:
        """The whole archive into ``dest``, streamed (memory stays flat), retried when its tree hash is wrong."""
        job_id = self._readable_job(archive_id, None)
        tmp = dest.with_name(dest.name + ".part")
        what = f"{self.name}: read archive {_short(archive_id)}"
        try:
            verified_read(lambda: self._stream_once(archive_id, job_id, tmp), what, self.backoff)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)

    def _stream_once(self, archive_id: str, job_id: str, tmp: Path) -> None:
        """One whole job output into ``tmp``, checked against the tree hash AWS sends with it."""
        what = f"read archive {_short(archive_id)}"
        resp = self._output(archive_id, job_id, what, jobId=job_id)
        what = f"{self.name}: {what}"
        hasher = TreeHasher()
        with open(tmp, "wb") as out:
            for chunk in _body_chunks(resp["body"], what):
                hasher.update(chunk)
                out.write(chunk)
        checksum = resp.get("checksum")
        if checksum and hasher.hexdigest() != checksum:
            raise CorruptRangeError(what, "bytes do not match the tree hash AWS sent with them")


def _body_chunks(body, what: str):
    """The response body in chunks; a transfer that breaks off is ``CorruptRangeError`` (a local write error is not)."""
    try:
        yield from body.iter_chunks(STREAM_CHUNK)
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise CorruptRangeError(what, f"transfer broke off ({type(exc).__name__})") from None


def _newest(jobs: list[dict]) -> dict | None:
    return max(jobs, key=lambda j: (_parse_time(j.get("CompletionDate")), _parse_time(j.get("CreationDate"))),
               default=None)


def _archive_info(entry: dict) -> ArchiveInfo:
    description = entry.get("ArchiveDescription") or ""
    fields = metadata.parse_description(description) or {}
    return ArchiveInfo(archive_id=entry["ArchiveId"], size=int(entry.get("Size") or 0),
                       sha256=str(fields.get("sha") or ""), tree_hash=entry.get("SHA256TreeHash") or "",
                       description=description, created=_parse_time(entry.get("CreationDate")))


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (one read; Linux caps a read near 2 GiB, so big parts take several)."""
    data = os.pread(fd, length, offset)
    if len(data) in (0, length):
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _run_bounded(fn, items, workers: int) -> None:
    """``fn(item)`` for every item, at most ``workers`` at once; the first error cancels the rest and is raised."""
    with ThreadPoolExecutor(workers, thread_name_prefix="glacier-part") as pool:
        running: set[Future] = set()
        try:
            for item in items:
                if len(running) >= workers:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()
                running.add(pool.submit(fn, item))
            for fut in running:
                fut.result()
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
