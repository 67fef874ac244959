"""A STRICT test double for the Glacier vault calls moto lacks, in front of a real moto server.

moto (see FIELD-NOTES) has vaults, ``upload_archive``, jobs and inventories, but
answers every multipart call with 404, ignores ``Range`` on job output, and
never checks a tree hash (its "tree hashes" are plain SHA-256).  This double is
a small threaded HTTP server on 127.0.0.1 (stdlib ``http.server``) that
implements exactly those missing parts the way the Glacier REST API documents
them, refuses what those documents say AWS refuses (400/404/416 with Glacier's
JSON error body), and PROXIES every other request unchanged to the moto server:

* multipart uploads (``POST/GET .../multipart-uploads``, ``PUT/GET/POST/DELETE
  .../multipart-uploads/ID``): the part size must be a power of two MiB from
  1 MiB to 4 GiB; each part's ``Content-Range`` must start on a part boundary,
  match the body length and cover exactly one part size (only the last part may
  be shorter); its ``x-amz-sha256-tree-hash`` (and ``x-amz-content-sha256``)
  must match the body.  ``complete`` checks the parts are contiguous from 0 to
  ``x-amz-archive-size`` and that ``x-amz-sha256-tree-hash`` is the tree hash
  of the assembled archive.  Listings paginate with ``page_size`` items a page.
* On ``complete`` the double calls moto's real ``upload_archive`` with the
  assembled bytes (through its own boto3 client) and returns MOTO's archive id,
  so the archive is then visible to moto-backed jobs and inventories.
* ``upload_archive`` is checked too (moto does not check its tree hash) and
  answered with the real tree hash; inventory outputs get the real tree hash
  of archives that went through the double instead of moto's plain SHA-256.
* Job output (``GET .../jobs/ID/output``) honours ``Range: bytes=A-B``: 206 with
  exactly that range and ``Content-Range``, plus ``x-amz-sha256-tree-hash``
  when the range is tree-hash aligned (a node of the archive's tree, as the
  Glacier guide defines it) or the whole archive.

Every tree hash in here is computed with ``botocore.utils.calculate_tree_hash``,
an implementation independent of ours.

Fault injection for tests: :meth:`GlacierDouble.fail` answers the next N
requests of a route with an error (503 ThrottlingException by default, which
botocore retries); :meth:`GlacierDouble.corrupt_next_output` flips one byte of
the next archive output(s), sending the checksum of the good bytes (corruption
in transit) or none, or cuts it off half-way; :meth:`GlacierDouble.corrupt_next_upload` flips one byte of
the next uploaded archive or part as it arrives, which the tree-hash check then
refuses as AWS would; ``part_delay`` slows each accepted part down so a test can
kill an uploader mid-way.  Counters (``part_puts``, ``requests``, ``outputs()``) let
tests assert what was actually sent.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import secrets
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config
from botocore.utils import calculate_tree_hash

MIB = 1024 * 1024
ACCOUNT = "123456789012"  # moto's default account
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}

ROUTES = [
    ("vault", re.compile(r"^/([^/]+)/vaults/([^/]+)$")),
    ("uploads", re.compile(r"^/([^/]+)/vaults/([^/]+)/multipart-uploads$")),
    ("upload", re.compile(r"^/([^/]+)/vaults/([^/]+)/multipart-uploads/([^/]+)$")),
    ("archives", re.compile(r"^/([^/]+)/vaults/([^/]+)/archives$")),
    ("archive", re.compile(r"^/([^/]+)/vaults/([^/]+)/archives/([^/]+)$")),
    ("jobs", re.compile(r"^/([^/]+)/vaults/([^/]+)/jobs$")),
    ("job", re.compile(r"^/([^/]+)/vaults/([^/]+)/jobs/([^/]+)$")),
    ("output", re.compile(r"^/([^/]+)/vaults/([^/]+)/jobs/([^/]+)/output$")),
]
#: (route kind, method) -> operation name, used for fault injection and the request log
OPERATIONS = {
    ("vault", "GET"): "describe_vault", ("vault", "PUT"): "create_vault", ("vault", "DELETE"): "delete_vault",
    ("uploads", "POST"): "initiate_multipart_upload", ("uploads", "GET"): "list_multipart_uploads",
    ("upload", "PUT"): "upload_multipart_part", ("upload", "GET"): "list_parts",
    ("upload", "POST"): "complete_multipart_upload", ("upload", "DELETE"): "abort_multipart_upload",
    ("archives", "POST"): "upload_archive", ("archive", "DELETE"): "delete_archive",
    ("jobs", "GET"): "list_jobs", ("jobs", "POST"): "initiate_job", ("job", "GET"): "describe_job",
    ("output", "GET"): "get_job_output",
}


def tree_hash(data: bytes) -> str:
    return calculate_tree_hash(io.BytesIO(data))


def is_tree_hash_aligned(start: int, end: int, size: int) -> bool:
    """``[start, end)`` is a node of the archive's tree hash (Glacier guide, "tree hash aligned")."""
    if start == 0 and end == size:
        return True
    if start % MIB or end <= start:
        return False
    span = MIB
    while span < 2 * max(size, MIB):
        if start % span == 0 and end == min(start + span, size):
            return True
        span *= 2
    return False


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


class GlacierError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    upload_id: str
    region: str
    vault: str
    description: str
    part_size: int
    created: float
    parts: dict[int, bytes] = field(default_factory=dict)  # start -> bytes
    hashes: dict[int, str] = field(default_factory=dict)  # start -> tree hash hex


@dataclass
class Fault:
    status: int
    code: str
    message: str


class GlacierDouble:
    def __init__(self, moto_url: str, *, page_size: int = 50):
        self.moto = urllib.parse.urlsplit(moto_url)
        self.moto_url = moto_url
        self.page_size = page_size
        self.part_delay = 0.0
        self.lock = threading.Lock()
        self.uploads: dict[str, Upload] = {}
        self.part_puts: dict[str, list[int]] = {}  # upload id -> start offset of each accepted part, in order
        self.completed: dict[str, str] = {}  # upload id -> archive id
        self.tree_hashes: dict[str, str] = {}  # archive id -> real tree hash (uploads that went through here)
        self.requests: list[tuple[str, str]] = []  # (operation, path)
        self.ranges: list[tuple[str, str]] = []  # (operation, Range header or ""), in step with requests
        self.faults: dict[str, list[Fault]] = {}
        self.corruptions: list[str] = []  # per pending corruption: "original", "none" (checksum sent) or "cut"
        self.upload_corruptions = 0
        self.inflight = 0
        self._clients: dict[str, object] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.double = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="glacier-double", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "GlacierDouble":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # test controls ---------------------------------------------------------------------------
    def fail(self, operation: str, times: int = 1, status: int = 503, code: str = "ThrottlingException",
             message: str = "Rate exceeded") -> None:
        """Answer the next ``times`` requests of ``operation`` (e.g. ``upload_multipart_part``) with an error."""
        with self.lock:
            self.faults.setdefault(operation, []).extend([Fault(status, code, message)] * times)

    def corrupt_next_output(self, times: int = 1, checksum: str = "original") -> None:
        """Flip one byte of the next archive output(s); send the good bytes' checksum (``original``) or none.

        ``checksum="cut"`` instead sends the first half of the output and hangs up (a transfer broken off).
        """
        assert checksum in ("original", "none", "cut")
        with self.lock:
            self.corruptions.extend([checksum] * times)

    def corrupt_next_upload(self, times: int = 1) -> None:
        """Flip one byte of the next ``times`` uploaded archives or parts as they arrive (damage in transit)."""
        with self.lock:
            self.upload_corruptions += times

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.corruptions.clear()
            self.upload_corruptions = 0
            self.part_delay = 0.0

    def calls(self, operation: str) -> list[str]:
        with self.lock:
            return [path for op, path in self.requests if op == operation]

    def outputs(self, range_header: str | None = None) -> int:
        """How many ``get_job_output`` requests arrived (with exactly this ``Range`` header, when given)."""
        with self.lock:
            return sum(1 for op, rng in self.ranges if op == "get_job_output" and range_header in (None, rng))

    def wait_idle(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.inflight == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("glacier double still busy")
            time.sleep(0.02)

    def moto_client(self, region: str):
        with self.lock:
            if region not in self._clients:
                self._clients[region] = boto3.client(
                    "glacier", region_name=region, endpoint_url=self.moto_url,
                    aws_access_key_id="AKIADOUBLE0000000000", aws_secret_access_key="double-secret",
                    config=Config(retries={"mode": "standard", "max_attempts": 2}))
            return self._clients[region]

    # request handling ----------------------------------------------------------------------------
    def handle(self, req: "_Handler") -> None:
        with self.lock:
            self.inflight += 1
        try:
            self._handle(req)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client died (a test killed it): nothing to answer
        finally:
            with self.lock:
                self.inflight -= 1

    def _handle(self, req: "_Handler") -> None:
        split = urllib.parse.urlsplit(req.path)
        path, query = split.path, dict(urllib.parse.parse_qsl(split.query))
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if len(body) != length:
            req.close_connection = True
            return  # the client went away mid-body: nothing was received
        kind, groups = next(((k, m.groups()) for k, rx in ROUTES if (m := rx.match(path))), (None, ()))
        operation = OPERATIONS.get((kind, req.command), "other")
        with self.lock:
            self.requests.append((operation, path))
            self.ranges.append((operation, req.headers.get("Range") or ""))
            queued = self.faults.get(operation)
            fault = queued.pop(0) if queued else None
        if fault is not None:
            return self._error(req, fault.status, fault.code, fault.message)
        if operation in ("upload_archive", "upload_multipart_part") and body and self._take_upload_corruption():
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1 :]
        try:
            handler = getattr(self, f"_op_{operation}", None)
            if handler is None:
                return self._relay(req, self._proxy(req, body))
            handler(req, groups, query, body)
        except GlacierError as exc:
            self._error(req, exc.status, exc.code, exc.message)

    def _take_upload_corruption(self) -> bool:
        with self.lock:
            if self.upload_corruptions:
                self.upload_corruptions -= 1
                return True
            return False

    def _region(self, req) -> str:
        match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/glacier/", req.headers.get("Authorization") or "")
        return match.group(1) if match else "us-east-1"

    def _arn(self, region: str, vault: str) -> str:
        return f"arn:aws:glacier:{region}:{ACCOUNT}:vaults/{vault}"

    def _check_vault(self, req, vault: str) -> str:
        region = self._region(req)
        try:
            self.moto_client(region).describe_vault(vaultName=vault)
        except Exception:
            raise GlacierError(404, "ResourceNotFoundException", f"Vault not found for ARN: {self._arn(region, vault)}")
        return region

    def _upload(self, req, vault: str, upload_id: str) -> Upload:
        with self.lock:
            upload = self.uploads.get(upload_id)
        if upload is None or upload.vault != vault or upload.region != self._region(req):
            raise GlacierError(404, "ResourceNotFoundException", f"The upload ID was not found: {upload_id}")
        return upload

    # multipart -----------------------------------------------------------------------------------
    def _op_initiate_multipart_upload(self, req, groups, query, body) -> None:
        account, vault = groups
        region = self._check_vault(req, vault)
        try:
            part_size = int(req.headers.get("x-amz-part-size") or "")
        except ValueError:
            raise GlacierError(400, "MissingParameterValueException", "Missing or invalid x-amz-part-size")
        mib, rest = divmod(part_size, MIB)
        if rest or not (1 <= mib <= 4096) or mib & (mib - 1):
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Invalid part size: {part_size}. Part size must be a power of two MiB, 1 MiB to 4 GiB")
        description = req.headers.get("x-amz-archive-description") or ""
        if len(description) > 1024 or not all(32 <= ord(c) < 127 for c in description):
            raise GlacierError(400, "InvalidParameterValueException", "Invalid archive description")
        upload_id = secrets.token_urlsafe(60)
        with self.lock:
            self.uploads[upload_id] = Upload(upload_id, region, vault, description, part_size, time.time())
            self.part_puts[upload_id] = []
        self._reply(req, 201, {"Location": f"/{account}/vaults/{vault}/multipart-uploads/{upload_id}",
                               "x-amz-multipart-upload-id": upload_id})

    def _op_upload_multipart_part(self, req, groups, query, body) -> None:
        account, vault, upload_id = groups
        upload = self._upload(req, vault, upload_id)
        match = re.fullmatch(r"bytes (\d+)-(\d+)/\*", req.headers.get("Content-Range") or "")
        if not match:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Invalid Content-Range: {req.headers.get('Content-Range')!r}")
        start, last = int(match.group(1)), int(match.group(2))
        if last < start or last - start + 1 != len(body):
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Content-Range {start}-{last} does not match the body length {len(body)}")
        if start % upload.part_size:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Content-Range start {start} is not aligned to the part size {upload.part_size}")
        if len(body) > upload.part_size:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Part of {len(body)} bytes is larger than the part size {upload.part_size}")
        with self.lock:
            later = [s for s in upload.parts if s > start]
        if len(body) < upload.part_size and later:
            raise GlacierError(400, "InvalidParameterValueException",
                               "Only the last part may be smaller than the part size")
        content_sha = req.headers.get("x-amz-content-sha256")
        if content_sha and content_sha != hashlib.sha256(body).hexdigest():
            raise GlacierError(400, "InvalidParameterValueException", "Checksum mismatch (x-amz-content-sha256)")
        sent = req.headers.get("x-amz-sha256-tree-hash")
        actual = tree_hash(body)
        if sent != actual:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Checksum mismatch: expected {actual}, got {sent}")
        with self.lock:
            upload.parts[start] = body
            upload.hashes[start] = actual
            self.part_puts[upload_id].append(start)
        if self.part_delay:
            time.sleep(self.part_delay)
        self._reply(req, 204, {"x-amz-sha256-tree-hash": actual})

    def _op_list_parts(self, req, groups, query, body) -> None:
        account, vault, upload_id = groups
        upload = self._upload(req, vault, upload_id)
        with self.lock:
            parts = [{"RangeInBytes": f"{s}-{s + len(upload.parts[s]) - 1}", "SHA256TreeHash": upload.hashes[s]}
                     for s in sorted(upload.parts)]
        page, marker = self._page(parts, query)
        self._json(req, 200, {"ArchiveDescription": upload.description, "CreationDate": stamp(upload.created),
                              "Marker": marker, "MultipartUploadId": upload_id,
                              "PartSizeInBytes": upload.part_size, "Parts": page,
                              "VaultARN": self._arn(upload.region, vault)})

    def _op_list_multipart_uploads(self, req, groups, query, body) -> None:
        account, vault = groups
        region = self._check_vault(req, vault)
        with self.lock:
            uploads = [u for u in self.uploads.values() if u.vault == vault and u.region == region]
        uploads.sort(key=lambda u: u.created)
        listed = [{"ArchiveDescription": u.description, "CreationDate": stamp(u.created),
                   "MultipartUploadId": u.upload_id, "PartSizeInBytes": u.part_size,
                   "VaultARN": self._arn(region, vault)} for u in uploads]
        page, marker = self._page(listed, query)
        self._json(req, 200, {"Marker": marker, "UploadsList": page})

    def _page(self, items: list, query: dict) -> tuple[list, str | None]:
        start = int(query.get("marker") or 0)
        limit = min(int(query.get("limit") or self.page_size), self.page_size)
        page = items[start : start + limit]
        return page, (str(start + limit) if start + limit < len(items) else None)

    def _op_complete_multipart_upload(self, req, groups, query, body) -> None:
        account, vault, upload_id = groups
        upload = self._upload(req, vault, upload_id)
        try:
            size = int(req.headers.get("x-amz-archive-size") or "")
        except ValueError:
            raise GlacierError(400, "MissingParameterValueException", "Missing or invalid x-amz-archive-size")
        with self.lock:
            parts = dict(upload.parts)
        expected = list(range(0, size, upload.part_size))
        if sorted(parts) != expected:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Parts do not cover the archive size {size}: have {len(parts)}, need {len(expected)}")
        for start in expected:
            want = min(upload.part_size, size - start)
            if len(parts[start]) != want:
                raise GlacierError(400, "InvalidParameterValueException",
                                   f"Part at {start} is {len(parts[start])} bytes, expected {want}")
        data = b"".join(parts[s] for s in expected)
        actual = tree_hash(data)
        sent = req.headers.get("x-amz-sha256-tree-hash")
        if sent != actual:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Checksum mismatch: expected {actual}, got {sent}")
        resp = self.moto_client(upload.region).upload_archive(
            vaultName=vault, archiveDescription=upload.description, body=data)
        archive_id = resp["archiveId"]
        with self.lock:
            self.uploads.pop(upload_id, None)
            self.completed[upload_id] = archive_id
            self.tree_hashes[archive_id] = actual
        self._reply(req, 201, {"Location": f"/{account}/vaults/{vault}/archives/{archive_id}",
                               "x-amz-archive-id": archive_id, "x-amz-sha256-tree-hash": actual})

    def _op_abort_multipart_upload(self, req, groups, query, body) -> None:
        account, vault, upload_id = groups
        self._upload(req, vault, upload_id)
        with self.lock:
            self.uploads.pop(upload_id, None)
        self._reply(req, 204, {})

    # archives and job output -------------------------------------------------------------------------
    def _op_upload_archive(self, req, groups, query, body) -> None:
        sent = req.headers.get("x-amz-sha256-tree-hash")
        actual = tree_hash(body)
        if sent != actual:
            raise GlacierError(400, "InvalidParameterValueException",
                               f"Checksum mismatch: expected {actual}, got {sent}")
        status, headers, payload = self._proxy(req, body)
        archive_id = dict((k.lower(), v) for k, v in headers).get("x-amz-archive-id")
        if status == 201 and archive_id:
            with self.lock:
                self.tree_hashes[archive_id] = actual
            headers = [(k, actual if k.lower() == "x-amz-sha256-tree-hash" else v) for k, v in headers]
        self._relay(req, (status, headers, payload))

    def _op_get_job_output(self, req, groups, query, body) -> None:
        wanted = req.headers.get("Range")
        status, headers, payload = self._proxy(req, body, drop=("range",))
        ctype = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if status != 200:
            return self._relay(req, (status, headers, payload))
        if "json" in ctype:
            inventory = json.loads(payload)
            with self.lock:
                for archive in inventory.get("ArchiveList") or []:
                    archive["SHA256TreeHash"] = self.tree_hashes.get(archive["ArchiveId"], archive["SHA256TreeHash"])
            return self._json(req, 200, inventory)
        size = len(payload)
        start, end = 0, size
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not match:
                raise GlacierError(400, "InvalidParameterValueException", f"Invalid Range: {wanted!r}")
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else size
            if start >= size or end > size or end <= start:
                raise GlacierError(416, "InvalidParameterValueException",
                                   f"Range {wanted} is outside the job output of {size} bytes")
        data = payload[start:end]
        out = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        send_checksum = is_tree_hash_aligned(start, end, size)
        if send_checksum:
            out["x-amz-sha256-tree-hash"] = tree_hash(data)
        with self.lock:
            corruption = self.corruptions.pop(0) if self.corruptions and data else None
        if corruption == "cut":
            return self._reply_cut(req, 206 if wanted else 200, out, data)
        if corruption:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0xFF
            data = bytes(flipped)
            if corruption == "none":
                out.pop("x-amz-sha256-tree-hash", None)
        if wanted:
            out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return self._reply(req, 206, out, data)
        self._reply(req, 200, out, data)

    # plumbing ------------------------------------------------------------------------------------------
    def _reply_cut(self, req, status: int, headers: dict, payload: bytes) -> None:
        """Promise the whole payload, send half of it, hang up."""
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload[: len(payload) // 2])
        req.close_connection = True

    def _proxy(self, req, body: bytes, drop=()) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.moto.hostname, self.moto.port, timeout=60)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in drop}
            headers["Content-Length"] = str(len(body))
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _relay(self, req, answer: tuple[int, list, bytes]) -> None:
        status, headers, payload = answer
        self._reply(req, status, [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP], payload)

    def _error(self, req, status: int, code: str, message: str) -> None:
        payload = json.dumps({"code": code, "message": message, "type": "Server" if status >= 500 else "Client"})
        self._reply(req, status, {"Content-Type": "application/json", "x-amzn-ErrorType": code}, payload.encode())

    def _json(self, req, status: int, doc) -> None:
        self._reply(req, status, {"Content-Type": "application/json"}, json.dumps(doc).encode())

    def _reply(self, req, status: int, headers, payload: bytes = b"") -> None:
        req.send_response(status)
        for key, value in (headers.items() if isinstance(headers, dict) else headers):
            req.send_header(key, value)
        req.send_header("x-amzn-RequestId", secrets.token_hex(8))
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if payload and req.command != "HEAD":
            req.wfile.write(payload)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _dispatch(self) -> None:
        self.server.double.handle(self)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: tests read counters instead
        pass


@contextmanager
def running_double(moto_url: str, **kwargs):
    double = GlacierDouble(moto_url, **kwargs).start()
    try:
        yield double
    finally:
        double.stop()
