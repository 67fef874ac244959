"""The S3 store against a real moto server over HTTP, plus a fault-injecting HTTP proxy in front of it.

Nothing in boto3 is mocked.  The proxy below is a plain forwarding HTTP server on
127.0.0.1: it passes every request to moto and only answers chosen requests
itself (503 SlowDown, 409 RestoreAlreadyInProgress, an error echoing the
request's signature), rewrites chosen response headers (``x-amz-restore:
ongoing-request="true"``, which moto never sends because its restores finish at
once; a wrong ``x-amz-checksum-sha256``) or damages chosen response bodies (one
byte flipped, or cut off half-way).  That is how throttling, a pending restore,
a damaged upload and a damaged download are produced without a mock.  It logs
every request it sees (``proxy.seen``), so tests count what the server got.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from conftest import next_second, summary_value
from moto_server import FAKE_CREDENTIALS, running_moto
from treecmp import fingerprint

from orchestrator.backup import metadata
from orchestrator.backup.download import download_verified
from orchestrator.backup.retry import Backoff, CorruptRangeError
from orchestrator.backup.stores.s3 import S3Store
from orchestrator.backup.treehash import file_hashes
from orchestrator.config import load_section, MIB, MIN_STORAGE_DAYS, Size, StoreConfig
from orchestrator.errors import EXIT_CONFIG, EXIT_NOT_READY, ConfigError, NotReadyError, OrchestratorError

BUCKET = "geo-test-bucket"
SECRET = FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
KEY_ID = FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]


# fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials from the environment only: no profile, config file or instance role."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3(moto, aws_env):
    """A plain boto3 client for the test's own looking; the bucket exists, and is gone afterwards."""
    moto.reset()
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    moto.reset()


def make_store(endpoint_url: str, **settings) -> S3Store:
    values = {"type": "s3", "bucket": BUCKET, "endpoint_url": endpoint_url, "storage_class": "STANDARD",
              "part_size": Size(8 * MIB), "upload_workers": 3, **settings}
    return S3Store.from_config(StoreConfig(**values))


def write(path: Path, data: bytes) -> tuple[Path, str, str, bytes]:
    path.write_bytes(data)
    sha256, tree_hash, _, leaves = file_hashes(path)
    return path, sha256, tree_hash, leaves


def part_desc(sha256: str, *, set_id="20260101T000000Z", slug="etc", idx=0, host="web1") -> str:
    return metadata.part_description(host=host, set_id=set_id, slug=slug, idx=idx, sha256=sha256, plain_size=1)


def count_calls(store: S3Store) -> list[str]:
    """Operation names the store's client sends from now on (observed, not changed)."""
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def no_waiting(store: S3Store) -> list[float]:
    """The store's retry layer records its delays instead of sleeping; returns the record."""
    slept: list[float] = []
    store.backoff = Backoff(sleep=slept.append)
    return slept


def assert_one_clean_line(text: str) -> None:
    assert text and "\n" not in text, repr(text)
    assert SECRET not in text and KEY_ID not in text, text


# a fault-injecting proxy in front of moto -------------------------------------------------
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


def error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>PROXY0000</RequestId><HostId>proxy</HostId></Error>").encode()


class Rule:
    def __init__(self, method, times, when, reply=None, headers=None, damage=None):
        self.method, self.left, self.when, self.reply, self.headers = method, times, when, reply, headers
        self.damage = damage
        self.kind = "reply" if reply is not None else "damage" if damage is not None else "rewrite"
        self.used = 0


def flip_middle_byte(data: bytes) -> bytes:
    return data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]


class FaultProxy:
    """Forwards to moto; the first ``times`` matching requests get a canned answer, new headers or a damaged body."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, Range header) of every request
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def handle_any(self):
                body = self.read_body()
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, self.headers.get("Range", "")))
                rule = proxy.take(self.command, self.path, self.headers, "reply")
                if rule is not None:
                    status, payload = rule.reply(self)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    status = response.status
                finally:
                    upstream.close()
                if status == 200:
                    rewrite = proxy.take(self.command, self.path, self.headers, "rewrite")
                    if rewrite is not None:
                        names = {k.lower() for k in rewrite.headers}
                        out = [(k, v) for k, v in out if k.lower() not in names] + list(rewrite.headers.items())
                damage = proxy.take(self.command, self.path, self.headers, "damage") if status in (200, 206) else None
                self.send_response(status)
                for k, v in out:
                    if self.command == "HEAD" or k.lower() != "content-length":
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if damage is not None and damage.damage == "truncate":
                    self.wfile.write(data[: len(data) // 2])  # then hang up: the body breaks off mid-way
                    self.close_connection = True
                    return
                self.wfile.write(flip_middle_byte(data) if damage is not None and data else data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, method, path, headers, kind: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.kind == kind and rule.left and rule.method == method and rule.when(path, headers):
                    rule.left -= 1
                    rule.used += 1
                    return rule
        return None

    def fail(self, method, times, *, status=503, code="SlowDown", message="Please reduce your request rate.",
             when=lambda path, headers: True) -> Rule:
        rule = Rule(method, times, when, reply=lambda handler: (status, error_xml(code, message)))
        self.rules.append(rule)
        return rule

    def reply(self, method, times, reply, when=lambda path, headers: True) -> Rule:
        rule = Rule(method, times, when, reply=reply)
        self.rules.append(rule)
        return rule

    def rewrite(self, method, times, headers: dict, when=lambda path, headers: True) -> Rule:
        rule = Rule(method, times, when, headers=headers)
        self.rules.append(rule)
        return rule

    def damage(self, method, times, how="flip", when=lambda path, headers: True) -> Rule:
        """The next ``times`` matching answers arrive damaged: one byte flipped, or cut off half-way (``truncate``)."""
        rule = Rule(method, times, when, damage=how)
        self.rules.append(rule)
        return rule

    def gets(self, range_header: str | None = None) -> int:
        """How many GETs reached the proxy (with exactly this ``Range`` header, when given)."""
        with self.lock:
            return sum(1 for method, _, rng in self.seen if method == "GET" and range_header in (None, rng))


@pytest.fixture
def proxy(moto):
    fault_proxy = FaultProxy(moto.port)
    fault_proxy.thread.start()
    yield fault_proxy
    fault_proxy.server.shutdown()
    fault_proxy.server.server_close()


def object_key(path: str) -> bool:
    """A request for an object in the bucket (not the bucket itself)."""
    return path.split("?")[0].count("/") >= 2 and not path.split("?")[0].endswith("/")


# the store on its own ---------------------------------------------------------------------
def test_round_trip_multipart_small_and_empty_then_delete(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url)
    store.ensure()
    big_bytes = os.urandom(20 * MIB + 12345)
    big, big_sha, big_tree, big_leaves = write(tmp_path / "big", big_bytes)
    small, small_sha, small_tree, _ = write(tmp_path / "small", os.urandom(100_000))
    empty, empty_sha, empty_tree, _ = write(tmp_path / "empty", b"")
    # a kill -9 during an earlier attempt left a multipart upload of the big part's key behind
    leftover = s3.create_multipart_upload(Bucket=BUCKET, Key="gentoo-ec2-orchestrator/web1/20260101T000000Z/etc.tar.000000")
    open_uploads = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]
    assert open_uploads == [leftover["UploadId"]]
    calls = count_calls(store)

    big_key = store.put(big, description=part_desc(big_sha), sha256=big_sha, tree_hash=big_tree)
    assert big_key == "gentoo-ec2-orchestrator/web1/20260101T000000Z/etc.tar.000000"
    assert calls.count("UploadPart") == 3 and "CompleteMultipartUpload" in calls, calls
    assert "AbortMultipartUpload" in calls
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])] == [], \
        "the leftover upload was aborted and the new one completed"
    small_key = store.put(small, description=part_desc(small_sha, idx=1), sha256=small_sha, tree_hash=small_tree)
    empty_key = store.put(empty, description=part_desc(empty_sha, slug="var_empty"), sha256=empty_sha,
                          tree_hash=empty_tree)
    manifest_desc = metadata.manifest_description(host="web1", set_id="20260101T000000Z")
    manifest_key = store.put_bytes(b'{"format": "geo1"}', description=manifest_desc)
    assert small_key.endswith("/etc.tar.000001") and empty_key.endswith("/var_empty.tar.000000")
    assert manifest_key == "gentoo-ec2-orchestrator/web1/20260101T000000Z/MANIFEST.json"

    head = s3.head_object(Bucket=BUCKET, Key=big_key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(big_bytes) and head["ChecksumSHA256"]
    assert head["Metadata"] == {"geo-description": part_desc(big_sha), "geo-sha256": big_sha,
                                "geo-tree-hash": big_tree}

    s3.put_object(Bucket=BUCKET, Key="gentoo-ec2-orchestrator/notes.txt", Body=b"someone else's")
    listed = {a.archive_id: a for a in store.list()}
    assert set(listed) == {big_key, small_key, empty_key, manifest_key, "gentoo-ec2-orchestrator/notes.txt"}
    assert listed["gentoo-ec2-orchestrator/notes.txt"].description == "", "foreign objects are listed as such"
    assert (listed[big_key].size, listed[big_key].sha256, listed[big_key].tree_hash) == (len(big_bytes), big_sha, big_tree)
    assert listed[empty_key].size == 0 and listed[empty_key].sha256 == empty_sha
    assert listed[manifest_key].description == manifest_desc and listed[big_key].created > time.time() - 3600

    assert store.find(part_desc(big_sha)) == [big_key]
    assert store.find(manifest_desc) == [manifest_key]
    assert store.find(part_desc(big_sha, idx=7)) == []
    edge = 8 * MIB
    assert store.read_range(big_key, edge - 5, edge + 5) == big_bytes[edge - 5 : edge + 5]
    assert store.read_range(big_key, len(big_bytes) - 3, len(big_bytes)) == big_bytes[-3:]
    assert store.read_range(big_key, 0, -1) == big_bytes
    assert store.read_range(empty_key, 0, -1) == b"" and store.read_range(empty_key, 0, 0) == b""
    assert store.get_bytes(manifest_key) == b'{"format": "geo1"}'
    part_row = {"name": "etc.tar.000000.xz", "archive_id": big_key, "size": len(big_bytes), "sha256": big_sha,
                "tree_hash": big_tree, "leaves": big_leaves}
    assert download_verified(store, part_row, tmp_path / "fetched", workers=3) == 0
    assert (tmp_path / "fetched").read_bytes() == big_bytes

    for key in (big_key, small_key, empty_key, manifest_key, "gentoo-ec2-orchestrator/notes.txt"):
        store.delete(key)
    store.delete(big_key)  # deleting what is gone is fine
    assert store.list() == [] and store.find(part_desc(big_sha)) == []
    with pytest.raises(OrchestratorError) as missing:
        store.read_range(big_key, 0, 10)
    assert "not in the store" in str(missing.value)
    assert_one_clean_line(str(missing.value))


def test_storage_class_and_name_and_manifests_stay_readable(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url, storage_class="DEEP_ARCHIVE", prefix="site-a")
    assert store.name == f"s3://{BUCKET}/site-a/@127.0.0.1:{moto.port}"
    assert store.storage_key == "DEEP_ARCHIVE" and MIN_STORAGE_DAYS[store.storage_key] == 180
    part, sha, tree, _ = write(tmp_path / "p", b"cold data" * 1000)
    key = store.put(part, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert key.startswith("site-a/web1/")
    assert s3.head_object(Bucket=BUCKET, Key=key)["StorageClass"] == "DEEP_ARCHIVE"
    manifest = store.put_bytes(b"{}", description=metadata.manifest_description(host="web1", set_id="S"))
    assert s3.head_object(Bucket=BUCKET, Key=manifest).get("StorageClass", "STANDARD") == "STANDARD"
    assert store.get_bytes(manifest) == b"{}", "a manifest is readable without a retrieval"
    other = store.put_bytes(b"anything", description="not one of ours")
    assert other.startswith("site-a/_other/") and store.find("not one of ours") == [other]

    ir = make_store(moto.endpoint_url, storage_class="GLACIER_IR", prefix="site-b/")
    key = ir.put(part, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert s3.head_object(Bucket=BUCKET, Key=key)["StorageClass"] == "GLACIER_IR"
    assert ir.retrieval(key).state == "ready" and ir.read_range(key, 0, 4) == b"cold"


def test_second_put_uploads_nothing_and_a_damaged_object_is_replaced(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url)
    path, sha, tree, _ = write(tmp_path / "p", os.urandom(300_000))
    desc = part_desc(sha)
    key = store.put(path, description=desc, sha256=sha, tree_hash=tree)
    before = s3.head_object(Bucket=BUCKET, Key=key)
    calls = count_calls(store)
    assert store.put(path, description=desc, sha256=sha, tree_hash=tree) == key
    assert calls == ["HeadObject"], "a rerun only looks"
    after = s3.head_object(Bucket=BUCKET, Key=key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])

    for damaged in (path.read_bytes()[:1000], bytes(300_000)):  # truncated; right size, wrong bytes
        s3.put_object(Bucket=BUCKET, Key=key, Body=damaged, Metadata=before["Metadata"], ChecksumAlgorithm="SHA256")
        calls.clear()
        assert store.put(path, description=desc, sha256=sha, tree_hash=tree) == key
        assert "PutObject" in calls, "our own object, damaged: uploaded again"
        assert store.read_range(key, 0, -1) == path.read_bytes()


def test_a_key_holding_a_different_archive_is_never_overwritten(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url)
    first, sha1, tree1, _ = write(tmp_path / "a", b"first archive")
    second, sha2, tree2, _ = write(tmp_path / "b", b"second archive, same set/slug/idx")
    key1 = store.put(first, description=part_desc(sha1), sha256=sha1, tree_hash=tree1)
    key2 = store.put(second, description=part_desc(sha2), sha256=sha2, tree_hash=tree2)
    assert key2 == f"{key1}.{sha2[:16]}"
    assert store.get_bytes(key1) == b"first archive"
    assert store.find(part_desc(sha1)) == [key1] and store.find(part_desc(sha2)) == [key2]
    assert {a.archive_id for a in store.list()} == {key1, key2}


def test_a_corrupted_local_part_is_not_uploaded(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url)
    path, sha, tree, _ = write(tmp_path / "p", b"original")
    path.write_bytes(b"bit rot!")
    with pytest.raises(OrchestratorError) as err:
        store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert "does not match its catalog entry" in str(err.value)
    assert_one_clean_line(str(err.value))
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_deep_archive_needs_a_restore_and_refuses_expedited(moto, s3, tmp_path):
    store = make_store(moto.endpoint_url, storage_class="DEEP_ARCHIVE")
    path, sha, tree, _ = write(tmp_path / "p", os.urandom(50_000))
    key = store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert store.retrieval(key).state == "absent"
    with pytest.raises(NotReadyError) as not_ready:
        store.read_range(key, 0, 100)
    assert not_ready.value.exit_code == EXIT_NOT_READY and "DEEP_ARCHIVE" in str(not_ready.value)
    assert_one_clean_line(str(not_ready.value))
    with pytest.raises(ConfigError) as expedited:
        store.request_retrieval(key, "Expedited", 1)
    assert "backup.store.retrieval_tier" in str(expedited.value)
    assert_one_clean_line(str(expedited.value))

    requested = store.request_retrieval(key, "Bulk", 1)
    assert (requested.state, requested.eta_hours) == ("pending", 48), "S3 accepted the request (202)"
    assert store.retrieval(key).state == "ready", "moto finishes restores at once"
    assert store.request_retrieval(key, "Standard", 1).state == "ready", "asking again is harmless"
    assert store.read_range(key, 10, 20) == path.read_bytes()[10:20]

    hot = make_store(moto.endpoint_url)
    hot_key = hot.put(path, description=part_desc(sha, idx=1), sha256=sha, tree_hash=tree)
    calls = count_calls(hot)
    assert hot.request_retrieval(hot_key, "Expedited", 1).state == "ready"
    assert "RestoreObject" not in calls, "instant classes need no request"


def test_pending_restores_as_aws_reports_them(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url, storage_class="DEEP_ARCHIVE")
    path, sha, tree, _ = write(tmp_path / "p", b"x" * 5000)
    key = store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    proxy.rewrite("HEAD", 2, {"x-amz-restore": 'ongoing-request="true"'})
    status = store.retrieval(key)
    assert (status.state, status.eta_hours) == ("pending", 12)
    calls = count_calls(store)
    assert store.request_retrieval(key, "Bulk", 2).state == "pending"
    assert "RestoreObject" not in calls, "an ongoing restore is not requested again"
    in_progress = proxy.fail("POST", 1, status=409, code="RestoreAlreadyInProgress",
                             message="Object restore is already in progress")
    assert store.request_retrieval(key, "Standard", 1).state == "pending"
    assert in_progress.used == 1
    accepted = store.request_retrieval(key, "Standard", 1)
    assert (accepted.state, accepted.eta_hours) == ("pending", 12), "the request went through this time (202)"
    assert store.retrieval(key).state == "ready"


def test_an_upload_s3_holds_differently_is_removed_and_reported(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url)
    calls = count_calls(store)
    path, sha, tree, _ = write(tmp_path / "p", os.urandom(9 * MIB))
    proxy.rewrite("HEAD", 1, {"x-amz-checksum-sha256": "A" * 43 + "="})
    with pytest.raises(OrchestratorError) as err:
        store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert "checksum differs" in str(err.value)
    assert_one_clean_line(str(err.value))
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0, "the bad object is not left looking good"
    assert [calls.count(op) for op in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
                                       "DeleteObject")] == [1, 2, 1, 1], "sent once, removed, not sent again"
    assert sum(1 for method, path, _ in proxy.seen if method == "PUT" and "partNumber=" in path) == 2


def test_a_part_s3_refuses_as_damaged_is_sent_once_and_fails_in_one_line(moto, s3, proxy, tmp_path):
    """S3 checks each part's SHA-256 on arrival (moto does not: the proxy answers as S3 would)."""
    store = make_store(proxy.endpoint_url, max_attempts=5)
    path, sha, tree, _ = write(tmp_path / "p", os.urandom(9 * MIB))
    first_part = lambda path, headers: bool(re.search(r"[?&]partNumber=1(&|$)", path))  # noqa: E731
    refused = proxy.fail("PUT", 10, status=400, code="BadDigest",
                         message="The SHA256 you specified did not match the calculated checksum.", when=first_part)
    with pytest.raises(OrchestratorError) as err:
        store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert_one_clean_line(str(err.value))
    assert str(err.value).startswith(f"{store.name}: uploading p to ") and "BadDigest" in str(err.value)
    assert refused.used == 1, "neither botocore nor the store sent the refused part again"
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


# errors ----------------------------------------------------------------------------------
def test_wrong_bucket_is_one_line_naming_the_setting(moto, s3, site):
    store = make_store(moto.endpoint_url, bucket="geo-no-such-bucket")
    with pytest.raises(ConfigError) as err:
        store.ensure()
    assert str(err.value).startswith("backup.store.bucket:") and "geo-no-such-bucket" in str(err.value)
    assert_one_clean_line(str(err.value))
    with pytest.raises(ConfigError) as bad_name:
        load_section("backup", {"store": {"type": "s3", "bucket": "Not a bucket!"}})
    assert str(bad_name.value) == "backup.store.bucket: 'Not a bucket!' is not a valid S3 bucket name"

    (site.data / "f").write_text("x")
    site.set("backup.store", {"type": "s3", "bucket": "geo-no-such-bucket", "endpoint_url": moto.endpoint_url})
    code, out = site.backup()
    assert code == EXIT_CONFIG, out
    assert "backup.store.bucket: bucket 'geo-no-such-bucket' does not exist" in out
    assert SECRET not in out and KEY_ID not in out


def test_missing_credentials_is_one_line_config_error(moto, s3, monkeypatch, site, tmp_path):
    for name in FAKE_CREDENTIALS:
        if name != "AWS_DEFAULT_REGION":
            monkeypatch.delenv(name)
    store = make_store(moto.endpoint_url)
    with pytest.raises(ConfigError) as err:
        store.ensure()
    assert "no AWS credentials found" in str(err.value)
    assert_one_clean_line(str(err.value))
    path, sha, tree, _ = write(tmp_path / "p", b"data")
    with pytest.raises(ConfigError):
        store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)

    (site.data / "f").write_text("x")
    site.set("backup.store", {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.endpoint_url})
    code, out = site.backup()
    assert code == EXIT_CONFIG and "no AWS credentials found" in out, out


def test_throttling_and_5xx_are_retried(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url, max_attempts=5)
    path, sha, tree, _ = write(tmp_path / "p", os.urandom(17 * MIB))
    faults = [
        proxy.fail("HEAD", 1, when=lambda path, headers: not object_key(path)),             # HeadBucket
        proxy.fail("PUT", 2, when=lambda path, headers: "partNumber=" in path),            # UploadPart
        proxy.fail("POST", 1, status=500, code="InternalError", message="We encountered an internal error.",
                   when=lambda path, headers: "uploadId=" in path),                         # CompleteMultipartUpload
        proxy.fail("GET", 1, when=lambda path, headers: "Range" in headers),               # ranged GetObject
    ]
    store.ensure()
    key = store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    assert store.read_range(key, MIB, 2 * MIB) == path.read_bytes()[MIB : 2 * MIB]
    assert [f.used for f in faults] == [1, 2, 1, 1], "each fault was served, and the calls still succeeded"

    impatient = make_store(proxy.endpoint_url, max_attempts=2)
    proxy.fail("GET", 5, when=lambda path, headers: "Range" in headers)
    with pytest.raises(OrchestratorError) as err:
        impatient.read_range(key, 0, 10)
    assert "SlowDown" in str(err.value)
    assert_one_clean_line(str(err.value))


# verified reads: botocore retries requests, our one layer re-reads wrong answers ----------------
SECOND_RANGE = f"bytes={8 * MIB}-{16 * MIB - 1}"  # the second 8 MiB range of a download


def stored_part(store: S3Store, tmp_path: Path, size: int) -> tuple[bytes, dict]:
    path, sha, tree, leaves = write(tmp_path / "p", os.urandom(size))
    key = store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)
    return path.read_bytes(), {"name": "etc.tar.000000.xz", "archive_id": key, "size": size, "sha256": sha,
                               "tree_hash": tree, "leaves": leaves}


def is_range(header: str):
    return lambda path, headers: headers.get("Range") == header


def test_a_range_damaged_twice_is_read_exactly_three_times_with_growing_delays(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url)
    slept = no_waiting(store)
    data, part = stored_part(store, tmp_path, 20 * MIB + 5)
    damaged = proxy.damage("GET", 2, when=is_range(SECOND_RANGE))
    dest = tmp_path / "fetched"
    before = proxy.gets()
    assert download_verified(store, part, dest, workers=3) == 2, "two re-reads"
    assert dest.read_bytes() == data
    assert damaged.used == 2 and proxy.gets(SECOND_RANGE) == 3
    assert proxy.gets() - before == 5, "the other two ranges once each"
    assert len(slept) == 2 and 0 < slept[0] < slept[1]


def test_a_range_damaged_every_time_fails_after_three_reads_and_nothing_is_kept(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url)
    slept = no_waiting(store)
    _, part = stored_part(store, tmp_path, 20 * MIB + 5)
    proxy.damage("GET", 100, when=is_range(SECOND_RANGE))
    dest = tmp_path / "fetched"
    with pytest.raises(OrchestratorError) as err:
        download_verified(store, part, dest, workers=1, label="part etc.tar.000000.xz of set S1")
    text = str(err.value)
    assert_one_clean_line(text)
    assert text == (f"part etc.tar.000000.xz of set S1 is corrupted in {store.name}: bytes {8 * MIB}-{16 * MIB - 1}: "
                    "MiB 12 does not match the catalog's leaf hash; failed verification 3 times")
    assert proxy.gets(SECOND_RANGE) == 3 and len(slept) == 2
    assert not dest.exists() and not list(tmp_path.glob(".fetched*")), "nothing written as good, no leftovers"


def test_a_body_cut_off_midway_is_read_again_by_our_layer(moto, s3, proxy, tmp_path):
    """botocore never re-sends a request whose response it already returned: a broken body is ours to retry."""
    store = make_store(proxy.endpoint_url)
    slept = no_waiting(store)
    data, part = stored_part(store, tmp_path, 20 * MIB + 5)
    proxy.damage("GET", 1, how="truncate", when=is_range(SECOND_RANGE))
    with pytest.raises(CorruptRangeError, match="transfer broke off"):
        store.read_range(part["archive_id"], 8 * MIB, 16 * MIB)
    assert proxy.gets(SECOND_RANGE) == 1, "a range read on its own is one request: its caller retries"
    proxy.damage("GET", 1, how="truncate", when=is_range(SECOND_RANGE))
    assert download_verified(store, part, tmp_path / "fetched", workers=2) == 1
    assert (tmp_path / "fetched").read_bytes() == data
    assert proxy.gets(SECOND_RANGE) == 3 and len(slept) == 1


def test_throttled_reads_are_botocores_alone_and_still_succeed(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url, max_attempts=3)
    slept = no_waiting(store)
    data, part = stored_part(store, tmp_path, 5 * MIB)  # one range
    whole_range = f"bytes=0-{5 * MIB - 1}"
    proxy.fail("GET", 2, when=is_range(whole_range))
    dest = tmp_path / "fetched"
    assert download_verified(store, part, dest) == 0, "no re-read of ours"
    assert dest.read_bytes() == data and proxy.gets(whole_range) == 3 and slept == []

    throttled = proxy.fail("GET", 100, when=is_range(whole_range))
    with pytest.raises(OrchestratorError) as err:
        download_verified(store, part, tmp_path / "again")
    assert "SlowDown" in str(err.value) and "failed verification" not in str(err.value)
    assert_one_clean_line(str(err.value))
    assert throttled.used == 3 == store.cfg.max_attempts, "botocore's attempts, not multiplied by ours"
    assert slept == [] and not (tmp_path / "again").exists()


def test_whole_archive_reads_are_verified_and_retried_by_one_layer(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url, max_attempts=3)
    slept = no_waiting(store)
    body = b'{"format": "geo1", "parts": []}' * 100
    manifest = store.put_bytes(body, description=metadata.manifest_description(host="web1", set_id="S1"))
    whole = lambda path, headers: "Range" not in headers and object_key(path)  # noqa: E731
    damaged = proxy.damage("GET", 2, when=whole)
    assert store.get_bytes(manifest) == body
    assert proxy.gets("") == 3 and len(slept) == 2 and 0 < slept[0] < slept[1]

    damaged.left = 100
    with pytest.raises(OrchestratorError) as err:
        store.read_range(manifest, 0, -1)
    assert_one_clean_line(str(err.value))
    assert str(err.value) == (f"{store.name}: reading archive {manifest}: bytes do not match the checksum S3 "
                              "sent with them; failed verification 3 times")
    assert proxy.gets("") == 6

    damaged.left = 0
    throttled = proxy.fail("GET", 100, when=whole)
    with pytest.raises(OrchestratorError, match="SlowDown"):
        store.get_bytes(manifest)
    assert throttled.used == 3 and proxy.gets("") == 9 and len(slept) == 4, "botocore's 3, no sleep of ours"

    throttled.left = 0
    with pytest.raises(OrchestratorError, match="not in the store"):
        store.read_range(manifest + ".gone", 0, -1)
    assert proxy.gets("") == 10, "a missing archive is asked for once"


def test_a_whole_multipart_object_is_checked_against_the_sha256_stored_with_it(moto, s3, proxy, tmp_path):
    """botocore cannot check a multipart object's composite checksum on a GET; the stored sha256 catches it."""
    store = make_store(proxy.endpoint_url)
    slept = no_waiting(store)
    data, part = stored_part(store, tmp_path, 9 * MIB)
    before = proxy.gets("")
    proxy.damage("GET", 1, when=lambda path, headers: "Range" not in headers and object_key(path))
    with pytest.raises(CorruptRangeError, match="do not match the sha256 stored with the object"):
        store._read_once(part["archive_id"], 0, -1, None)
    proxy.damage("GET", 1, when=lambda path, headers: "Range" not in headers and object_key(path))
    assert store.read_range(part["archive_id"], 0, -1) == data
    assert proxy.gets("") - before == 3 and len(slept) == 1


def test_no_key_material_in_errors_even_when_the_server_echoes_it(moto, s3, proxy, tmp_path):
    store = make_store(proxy.endpoint_url)
    path, sha, tree, _ = write(tmp_path / "p", b"data")
    key = store.put(path, description=part_desc(sha), sha256=sha, tree_hash=tree)

    def echo(handler):
        auth = handler.headers.get("Authorization", "")
        assert KEY_ID in auth  # the request really carried key material
        return 400, error_xml("InvalidArgument", f"bad request {auth} X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE")

    proxy.reply("GET", 1, echo)
    with pytest.raises(OrchestratorError) as err:
        store.read_range(key, 0, 4)
    text = str(err.value)
    assert_one_clean_line(text)
    assert "Signature=" not in text and "FwoGZXIvYXdzEXAMPLE" not in text and "[redacted]" in text


# end to end: inv backup / inv restore with the S3 store ----------------------------------
def s3_site(site, moto, storage_class: str):
    site.set("backup.store", {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.endpoint_url,
                              "storage_class": storage_class, "prefix": "fleet/"})
    (site.data / "etc").mkdir()
    (site.data / "etc" / "make.conf").write_text('COMMON_FLAGS="-O2 -pipe"\n')
    (site.data / "big.bin").write_bytes(os.urandom(2 * MIB + 333))  # several 1 MiB chunks: several parts
    (site.data / "doomed").write_text("deleted before the incremental\n")
    code, out = site.backup()
    assert code == 0, out
    full = summary_value(out, "set")
    next_second()
    (site.data / "etc" / "make.conf").write_text('COMMON_FLAGS="-O2 -pipe -march=native"\n')
    (site.data / "doomed").unlink()
    (site.data / "new").write_text("added in the incremental\n")
    code, out = site.backup()
    assert code == 0, out
    assert summary_value(out, "kind") == "incremental" and summary_value(out, "parent") == full
    assert summary_value(out, "store") == f"s3://{BUCKET}/fleet/@127.0.0.1:{moto.port}"
    shutil.rmtree(site.staging / "complete")  # no local copies: everything comes from the bucket
    return full, summary_value(out, "set"), fingerprint(site.data)


def test_end_to_end_backup_chain_restores_from_s3_and_the_catalog_rebuilds(moto, s3, site, tmp_path):
    from orchestrator.backup import jobs

    full, incr, expected = s3_site(site, moto, "STANDARD")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="fleet/")["Contents"]]
    assert f"fleet/testhost/{full}/MANIFEST.json" in keys and f"fleet/testhost/{incr}/MANIFEST.json" in keys
    assert f"fleet/testhost/{incr}/CATALOG" in keys and f"fleet/testhost/{full}/CATALOG" not in keys, \
        "one catalog copy: the newest"
    with site.catalog() as cat:
        stored = [p["archive_id"] for p in cat.all_parts()]
    assert stored and all(k.startswith("fleet/testhost/") for k in stored) and set(stored) <= set(keys)
    code, out = site.run("reconcile", jobs.reconcile_store)
    assert code == 0 and summary_value(out, "missing") == "0" and summary_value(out, "foreign") == "0", out

    code, out = site.restore(tmp_path / "r")
    assert code == 0, out
    rel = site.data.relative_to("/")
    assert fingerprint(tmp_path / "r" / rel) == expected

    (site.root / "state" / "catalog.sqlite").unlink()  # a fresh machine: only the bucket is left
    code, out = site.run("catalog-rebuild", jobs.rebuild)
    assert code == 0 and summary_value(out, "recovered_sets") == "2", out
    code, out = site.restore(tmp_path / "r2")
    assert code == 0, out
    assert fingerprint(tmp_path / "r2" / rel) == expected


def test_end_to_end_deep_archive_restore_requests_retrievals_then_restores(moto, s3, site, tmp_path):
    from orchestrator.backup import jobs

    full, incr, expected = s3_site(site, moto, "DEEP_ARCHIVE")
    with site.catalog() as cat:
        parts = [p["archive_id"] for p in cat.all_parts()]
    assert {s3.head_object(Bucket=BUCKET, Key=k)["StorageClass"] for k in parts} == {"DEEP_ARCHIVE"}
    manifest = s3.head_object(Bucket=BUCKET, Key=f"fleet/testhost/{incr}/MANIFEST.json")
    assert manifest.get("StorageClass", "STANDARD") == "STANDARD"

    code, out = site.restore(tmp_path / "r")
    assert code == EXIT_NOT_READY, out
    assert f"not ready yet: {len(parts)} of {len(parts)} archives are being retrieved" in out
    assert "(Standard tier), ready in about 12 hours" in out and SECRET not in out
    assert not (tmp_path / "r").exists()
    code, out = site.restore(tmp_path / "r")  # moto finishes restores at once
    assert code == 0, out
    assert fingerprint(tmp_path / "r" / site.data.relative_to("/")) == expected

    (site.root / "state" / "catalog.sqlite").unlink()
    code, out = site.run("catalog-rebuild", jobs.rebuild)
    assert code == 0 and summary_value(out, "recovered_sets") == "2", "manifests need no retrieval: " + out
