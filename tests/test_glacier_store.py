"""The Glacier vault store against a real moto server, through a strict test double for what moto lacks.

moto has no vault multipart upload, no ranged job output and no tree-hash
validation; ``glacier_double.GlacierDouble`` implements exactly those routes
(validating tree hashes, ranges and part sizes as AWS documents them) and
proxies every other call unchanged to moto.  Every store here talks to the
double's URL.  moto finishes jobs after 2 s (Expedited), 5 s (Standard, which
inventories use) or 10 s (Bulk).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import time
from pathlib import Path

import boto3
import pytest
from botocore.utils import calculate_tree_hash

from conftest import next_second
from glacier_double import GlacierDouble, is_tree_hash_aligned, running_double
from backupcheck import backup_child, processes_tagged
from moto_server import FAKE_CREDENTIALS, running_moto
from orchestrator.backup import metadata
from orchestrator.backup.download import download_verified
from orchestrator.backup.retry import Backoff, CorruptRangeError
from orchestrator.backup.stores import open_store
from orchestrator.backup.stores.base import ARCHIVE_JOURNAL_PREFIX
from orchestrator.backup.stores.glacier import (
    GIB, MAX_PARTS, GlacierVaultStore, archive_tree_hash, choose_part_size, part_ranges, tree_hash_bytes,
)
from orchestrator.backup.treehash import MIB, file_hashes
from orchestrator.config import load_section, Size, StoreConfig, load_section
from orchestrator.errors import ConfigError, NotReadyError, OrchestratorError

TESTS = Path(__file__).resolve().parent


class FileJournal:
    """An upload journal in a file, so a killed child process and this test share it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> str | None:
        try:
            return self.path.read_text() or None
        except FileNotFoundError:
            return None

    def save(self, upload_id: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(upload_id)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def aws_env():
    with pytest.MonkeyPatch.context() as mp:
        for key, value in FAKE_CREDENTIALS.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_GLACIER"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        yield mp


@pytest.fixture(scope="module")
def moto(aws_env):
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def double(moto) -> GlacierDouble:
    with running_double(moto.endpoint_url) as d:
        yield d


@pytest.fixture(autouse=True)
def clean_double(request):
    yield
    if "double" in request.fixturenames:
        d = request.getfixturevalue("double")
        d.clear_faults()
        d.page_size = 50


def make_store(double, vault: str, **settings) -> GlacierVaultStore:
    settings.setdefault("max_attempts", 5)
    if "part_size" in settings:
        settings["part_size"] = Size(settings["part_size"])
    store = open_store(StoreConfig(type="glacier", vault=vault, endpoint_url=double.url, **settings))
    assert isinstance(store, GlacierVaultStore)
    store.ensure()
    return store


def blob(tmp_path: Path, size: int, name: str = "blob", seed: int = 0) -> tuple[Path, str, str, bytes]:
    path = tmp_path / name
    path.write_bytes(random.Random(seed or size).randbytes(size))
    sha, tree, _, leaves = file_hashes(path)
    return path, sha, tree, leaves


def describe(sha: str, idx: int = 0) -> str:
    return metadata.part_description(host="h", set_id="s1", slug="etc", idx=idx, sha256=sha, plain_size=1)


def moto_archive_count(moto, vault: str) -> int:
    client = boto3.client("glacier", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    return client.describe_vault(vaultName=vault)["NumberOfArchives"]


def calls(double, operation: str, vault: str) -> list[str]:
    return [p for p in double.calls(operation) if f"/vaults/{vault}/" in p + "/"]


def wait_for(predicate, timeout: float = 15, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text
    for secret in FAKE_CREDENTIALS.values():
        if secret != "us-east-1":
            assert secret not in text
    return text


# part sizes and tree hashes (no server) ---------------------------------------------------------------
def test_part_size_is_the_smallest_power_of_two_mib_giving_at_most_10000_parts():
    assert choose_part_size(0) == MIB
    assert choose_part_size(1) == MIB
    assert choose_part_size(MAX_PARTS * MIB) == MIB
    assert choose_part_size(MAX_PARTS * MIB + 1) == 2 * MIB
    assert choose_part_size(1024 * GIB) == 128 * MIB  # 1 TiB / 10,000 = 104.9 MiB
    assert choose_part_size(40_000 * GIB) == 4 * GIB
    for size in [5 * MIB, 30 * GIB, 777 * GIB + 3, 12_345 * GIB]:
        part = choose_part_size(size)
        mib = part // MIB
        assert part % MIB == 0 and mib & (mib - 1) == 0 and MIB <= part <= 4 * GIB
        assert -(-size // part) <= MAX_PARTS and (part == MIB or -(-size // (part // 2)) > MAX_PARTS)
    with pytest.raises(OrchestratorError, match="40,000 GiB"):
        choose_part_size(40_000 * GIB + 1)


def test_configured_part_size_wins_but_is_validated():
    assert choose_part_size(5 * MIB, 8 * MIB) == 8 * MIB
    assert choose_part_size(5 * MIB, MIB) == MIB
    with pytest.raises(ConfigError, match="backup.store.part_size"):
        choose_part_size(5 * MIB, 3 * MIB)
    with pytest.raises(ConfigError, match="backup.store.part_size"):
        choose_part_size(5 * MIB, 8 * GIB)
    with pytest.raises(ConfigError, match="more than 10000 parts"):
        choose_part_size(MAX_PARTS * MIB + 1, MIB)
    with pytest.raises(ConfigError, match="backup.store.part_size: 8589934592 is not a power of two MiB"):
        load_section("backup", {"store": {"type": "glacier", "part_size": "8G"}})


@pytest.mark.parametrize("part_size", [MIB, 2 * MIB, 4 * MIB])
@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB + 12345, 8 * MIB, 9 * MIB + 1])
def test_whole_archive_tree_hash_from_part_hashes_matches_botocore(size, part_size):
    data = random.Random(size).randbytes(size)
    hashes = [tree_hash_bytes(data[start:end]) for start, end in part_ranges(size, part_size)]
    assert archive_tree_hash(hashes) == calculate_tree_hash(io.BytesIO(data))


def test_double_sends_checksums_only_for_tree_hash_aligned_ranges():
    size = 5 * MIB + 7
    assert is_tree_hash_aligned(0, size, size)
    assert is_tree_hash_aligned(0, MIB, size) and is_tree_hash_aligned(4 * MIB, size, size)
    assert is_tree_hash_aligned(2 * MIB, 4 * MIB, size) and is_tree_hash_aligned(0, 4 * MIB, size)
    assert not is_tree_hash_aligned(MIB, 3 * MIB, size)  # starts on 1 MiB but is no node of the tree
    assert not is_tree_hash_aligned(100, MIB, size)


# uploads --------------------------------------------------------------------------------------------
def test_store_identity_and_vault_creation_is_idempotent(double, moto):
    store = make_store(double, "made-here")
    assert store.name == "glacier:us-east-1/made-here" and store.storage_key == "vault"
    again = make_store(double, "made-here")
    again.ensure()
    assert moto_archive_count(moto, "made-here") == 0
    assert len(calls(double, "create_vault", "made-here")) == 1


def test_small_file_goes_up_in_one_request_with_our_tree_hash(double, tmp_path):
    store = make_store(double, "small")
    path, sha, tree, _ = blob(tmp_path, 300_000)
    journal = FileJournal(tmp_path / "journal")
    archive_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal)
    assert journal.load() == ARCHIVE_JOURNAL_PREFIX + archive_id
    assert double.tree_hashes[archive_id] == tree
    assert not calls(double, "initiate_multipart_upload", "small")

    # with an 8 MiB part size, a 3 MiB file is still "small": its tree hash differs from its sha256
    store8 = make_store(double, "small", part_size=8 * MIB)
    path, sha, tree, _ = blob(tmp_path, 3 * MIB + 5, "three")
    assert sha != tree
    archive_id = store8.put(path, description=describe(sha), sha256=sha, tree_hash=tree)
    assert double.tree_hashes[archive_id] == tree
    assert not calls(double, "initiate_multipart_upload", "small")


def test_a_wrong_tree_hash_is_refused_by_the_store_service(double, tmp_path):
    store = make_store(double, "refused")
    path, sha, tree, _ = blob(tmp_path, 1000)
    with pytest.raises(OrchestratorError) as err:
        store.put(path, description=describe(sha), sha256=sha, tree_hash="0" * 64)
    assert "InvalidParameterValueException" in one_line(err.value)

    big, sha, tree, _ = blob(tmp_path, 3 * MIB + 1, "big")
    with pytest.raises(OrchestratorError, match="changed since it was hashed"):
        store.put(big, description=describe(sha), sha256=sha, tree_hash="1" * 64)
    assert not [u for u in double.uploads.values() if u.vault == "refused"], "the useless upload was aborted"


@pytest.mark.parametrize("size", [5 * MIB, 5 * MIB + 12345])
def test_multipart_upload_sends_every_part_once_and_completes_with_our_tree_hash(double, tmp_path, size):
    store = make_store(double, "multi", part_size=MIB, upload_workers=3)
    path, sha, tree, _ = blob(tmp_path, size)
    journal = FileJournal(tmp_path / "journal")
    archive_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal)
    (upload_id,) = [u for u, a in double.completed.items() if a == archive_id]
    starts = [s for s, _ in part_ranges(size, MIB)]
    assert sorted(double.part_puts[upload_id]) == starts, "each part exactly once"
    assert double.tree_hashes[archive_id] == tree == calculate_tree_hash(io.BytesIO(path.read_bytes()))
    assert journal.load() == ARCHIVE_JOURNAL_PREFIX + archive_id


def test_journal_holding_an_archive_id_means_no_upload_at_all(double, tmp_path):
    store = make_store(double, "journaled")
    path, sha, tree, _ = blob(tmp_path, 3 * MIB)
    journal = FileJournal(tmp_path / "journal")
    journal.save(ARCHIVE_JOURNAL_PREFIX + "already-stored-id")
    before = len(double.requests)
    assert store.put(path, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal) == "already-stored-id"
    assert len(double.requests) == before


def test_an_expired_upload_id_starts_a_new_upload(double, tmp_path):
    store = make_store(double, "expired", part_size=MIB)
    path, sha, tree, _ = blob(tmp_path, 2 * MIB + 1)
    journal = FileJournal(tmp_path / "journal")
    journal.save("upload-id-aws-forgot-after-24h")
    archive_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal)
    assert calls(double, "list_parts", "expired")[-1].endswith("/upload-id-aws-forgot-after-24h")
    assert double.tree_hashes[archive_id] == tree
    assert journal.load() == ARCHIVE_JOURNAL_PREFIX + archive_id


def test_an_upload_the_journal_never_heard_of_is_found_by_its_description(double, tmp_path):
    """A crash between initiate and the journal write: the open upload is adopted, not duplicated."""
    double.page_size = 2  # listings come in several pages
    store = make_store(double, "adopt", part_size=MIB)
    path, sha, tree, _ = blob(tmp_path, 6 * MIB + 10)
    description = describe(sha)
    data = path.read_bytes()
    raw = boto3.client("glacier", endpoint_url=double.url, region_name="us-east-1")
    for other in [("another description", MIB), (description, 2 * MIB)]:  # not ours: must be left alone
        raw.initiate_multipart_upload(vaultName="adopt", archiveDescription=other[0], partSize=str(other[1]))
    upload_id = raw.initiate_multipart_upload(vaultName="adopt", archiveDescription=description,
                                              partSize=str(MIB))["uploadId"]
    for start in (0, 2 * MIB, 3 * MIB):
        raw.upload_multipart_part(vaultName="adopt", uploadId=upload_id, range=f"bytes {start}-{start + MIB - 1}/*",
                                  body=data[start : start + MIB])
    garbage = random.Random(9).randbytes(MIB)  # a part AWS holds with other bytes: must be sent again
    raw.upload_multipart_part(vaultName="adopt", uploadId=upload_id, range=f"bytes {4 * MIB}-{5 * MIB - 1}/*",
                              body=garbage)
    already = len(double.part_puts[upload_id])
    journal = FileJournal(tmp_path / "journal")
    archive_id = store.put(path, description=description, sha256=sha, tree_hash=tree, journal=journal)
    assert double.completed[upload_id] == archive_id
    assert sorted(double.part_puts[upload_id][already:]) == [MIB, 4 * MIB, 5 * MIB, 6 * MIB]
    assert double.tree_hashes[archive_id] == tree
    assert len(calls(double, "initiate_multipart_upload", "adopt")) == 3, "no new upload was started"
    assert journal.load() == ARCHIVE_JOURNAL_PREFIX + archive_id


def test_a_killed_backup_resumes_its_vault_upload_sending_only_the_missing_parts(site, double, tmp_path):
    """kill -9 of a real inv backup after 3 of a part's 6 multipart pieces; the rerun sends the other 3, once."""
    site.set("backup.store", {"type": "glacier", "vault": "killed-backup", "endpoint_url": double.url,
                              "part_size": "1M", "upload_workers": 1, "max_attempts": 5})
    site.set("backup.chunk_size", "8M")
    (site.data / "random.bin").write_bytes(os.urandom(6 * MIB - 4096))
    tag = f"vault-kill-{os.getpid()}"
    proc = backup_child(site, tag, {"GEO_TEST_CRASH_AT": "vault-part-sent@3"})
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, out
    assert processes_tagged(tag) == []
    with site.catalog() as cat:
        (part,) = cat.all_parts()
    upload_id = part["upload_id"]
    assert part["status"] == "uploading" and upload_id in double.part_puts
    before = list(double.part_puts[upload_id])
    everything = {s for s, _ in part_ranges(part["size"], MIB)}
    assert len(before) == 3 and len(everything) == 6 and upload_id not in double.completed

    code, out = site.backup()
    assert code == 0, out
    resent = double.part_puts[upload_id][len(before):]
    assert sorted(resent) == sorted(everything - set(before)), "only the missing parts, each once"
    with site.catalog() as cat:
        (part,) = cat.all_parts()
    assert double.completed[upload_id] == part["archive_id"]
    assert double.tree_hashes[part["archive_id"]] == part["tree_hash"]


def test_an_upload_damaged_in_transit_is_refused_once_and_the_rerun_resumes(double, tmp_path):
    """No layer of ours re-sends an upload; AWS refuses a damaged one (400, which botocore does not retry)."""
    store = make_store(double, "damaged-upload", part_size=MIB, upload_workers=1)
    small, sha, tree, _ = blob(tmp_path, 1000, "small")
    double.corrupt_next_upload(1)
    with pytest.raises(OrchestratorError) as err:
        store.put(small, description=describe(sha), sha256=sha, tree_hash=tree)
    assert one_line(err.value).startswith(
        f"{store.name}: upload small: InvalidParameterValueException: Checksum mismatch")
    assert len(calls(double, "upload_archive", "damaged-upload")) == 1

    big, sha, tree, _ = blob(tmp_path, 3 * MIB + 3, "big", seed=77)
    journal = FileJournal(tmp_path / "journal")
    double.corrupt_next_upload(1)
    with pytest.raises(OrchestratorError) as err:
        store.put(big, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal)
    assert f"{store.name}: upload part 1/4 of big: InvalidParameterValueException: Checksum mismatch" \
        in one_line(err.value)
    upload_id = journal.load()
    assert len(calls(double, "upload_multipart_part", "damaged-upload")) == 1 and double.part_puts[upload_id] == []
    archive_id = store.put(big, description=describe(sha), sha256=sha, tree_hash=tree, journal=journal)
    assert sorted(double.part_puts[upload_id]) == [0, MIB, 2 * MIB, 3 * MIB] and double.tree_hashes[archive_id] == tree


def test_throttling_answers_are_retried_and_the_upload_succeeds(double, tmp_path):
    store = make_store(double, "throttled", part_size=MIB, upload_workers=2)
    path, sha, tree, _ = blob(tmp_path, 3 * MIB + 3)
    double.fail("upload_multipart_part", 2)
    double.fail("complete_multipart_upload", 1, status=500, code="ServiceUnavailableException",
                message="Service is unavailable")
    archive_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree)
    assert double.tree_hashes[archive_id] == tree
    assert not double.faults["upload_multipart_part"] and not double.faults["complete_multipart_upload"]
    (upload_id,) = [u for u, a in double.completed.items() if a == archive_id]
    assert sorted(double.part_puts[upload_id]) == [0, MIB, 2 * MIB, 3 * MIB]


def test_errors_are_one_line_and_name_no_secret(double, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        load_section("backup", {"store": {"type": "glacier", "vault": "no spaces/allowed", "endpoint_url": double.url}})
    assert "backup.store.vault" in one_line(err.value)

    store = make_store(double, "errors")
    key, secret = FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    double.fail("delete_archive", 1, status=403, code="InvalidSignatureException",
                message=f"Signature expired. Credential={key}/20250101/us-east-1/glacier/aws4_request, "
                        f"Signature=deadbeef{secret}")
    with pytest.raises(OrchestratorError) as err:
        store.delete("some-archive")
    assert "InvalidSignatureException" in one_line(err.value)

    unreachable = open_store(StoreConfig(type="glacier", vault="errors", endpoint_url="http://127.0.0.1:9",
                                         max_attempts=1))
    with pytest.raises(OrchestratorError) as err:
        unreachable.ensure()
    assert "endpoint" in one_line(err.value)

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    anonymous = open_store(StoreConfig(type="glacier", vault="errors", endpoint_url=double.url))
    with pytest.raises(ConfigError) as err:
        anonymous.ensure()
    assert "no AWS credentials" in one_line(err.value)


# inventory ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_list_is_not_ready_until_the_inventory_job_finishes(double, moto, tmp_path):
    store = make_store(double, "inventory", part_size=MIB)
    path, sha, tree, _ = blob(tmp_path, 2 * MIB + 9)
    part_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree)
    foreign_id = store.put_bytes(b"someone else's archive", description="not ours")
    with pytest.raises(NotReadyError) as err:
        store.list()
    assert "vault inventory requested" in one_line(err.value) and "ready in about 4 hours" in str(err.value)
    with pytest.raises(NotReadyError, match="ready in about"):
        store.list()
    assert len(calls(double, "initiate_job", "inventory")) == 1, "asked once, not on every call"

    def listed():
        try:
            return store.list()
        except NotReadyError:
            return None

    infos = {a.archive_id: a for a in wait_for(listed, timeout=15)}
    assert set(infos) == {part_id, foreign_id}
    part = infos[part_id]
    assert (part.size, part.tree_hash, part.sha256, part.description) == (2 * MIB + 9, tree, sha, describe(sha))
    assert part.created > time.time() - 3600
    assert infos[foreign_id].sha256 == ""

    store.delete(foreign_id)
    assert moto_archive_count(moto, "inventory") == 1
    assert store.find(describe(sha)) == [], "a vault cannot be searched; resume relies on the journal"


# retrieval ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def retrieved(double, tmp_path_factory):
    """A multipart archive whose Expedited retrieval job has finished."""
    tmp = tmp_path_factory.mktemp("retrieved")
    store = make_store(double, "retrieve", part_size=MIB, retrieval_tier="Expedited")
    path, sha, tree, leaves = blob(tmp, 9 * MIB + 12345)
    archive_id = store.put(path, description=describe(sha), sha256=sha, tree_hash=tree)
    store.backoff = Backoff(sleep=lambda seconds: None)  # never wait in tests; some record their delays
    first = store.request_retrieval(archive_id, "Expedited", 1)
    assert first.state == "pending" and first.eta_hours == pytest.approx(0.08)
    assert store.request_retrieval(archive_id, "Expedited", 1).job_id == first.job_id, "idempotent"
    with pytest.raises(NotReadyError) as err:
        store.read_range(archive_id, 0, MIB, first.job_id)
    assert "ready in about" in one_line(err.value)
    wait_for(lambda: store.retrieval(archive_id, first.job_id).state == "ready", timeout=15)
    part = {"name": "etc.tar.000000.xz", "archive_id": archive_id, "size": path.stat().st_size, "sha256": sha,
            "tree_hash": tree, "leaves": leaves}
    return store, archive_id, first.job_id, path.read_bytes(), part


def test_retrieval_becomes_ready_and_ranges_read_back_exactly(retrieved, double, tmp_path):
    store, archive_id, job_id, data, _ = retrieved
    again = store.request_retrieval(archive_id, "Expedited", 1)
    assert (again.state, again.job_id) == ("ready", job_id)
    assert store.retrieval(archive_id).state == "ready"
    for start, end in [(0, MIB), (MIB, 3 * MIB + 17), (8 * MIB, len(data)), (5, 6), (0, len(data))]:
        assert store.read_range(archive_id, start, end, job_id) == data[start:end]
    assert store.read_range(archive_id, 0, 0, job_id) == b""
    assert store.read_range(archive_id, 0, -1) == data, "no job id: the finished job is found"
    assert store.read_range(archive_id, 7 * MIB, -1, job_id) == data[7 * MIB :]
    assert store.get_bytes(archive_id) == data
    outputs = len(double.calls("get_job_output"))
    dest = tmp_path / "whole"
    assert download_verified(store, retrieved[4], dest, workers=2, job_id=job_id) == 0
    assert dest.read_bytes() == data
    assert len(double.calls("get_job_output")) - outputs == 2, "two 8 MiB ranges"


def test_an_expired_job_output_is_not_ready_and_asks_for_a_new_request(retrieved, double):
    store, archive_id, job_id, data, _ = retrieved
    double.fail("get_job_output", 1, status=404, code="ResourceNotFoundException", message="Job not found")
    with pytest.raises(NotReadyError) as err:
        store.read_range(archive_id, 0, MIB, job_id)
    assert "request the retrieval again" in one_line(err.value)
    assert store.read_range(archive_id, 0, MIB, job_id) == data[:MIB], "the job is looked up afresh"


def recorded_sleeps(store: GlacierVaultStore, monkeypatch) -> list[float]:
    """The store's retry layer records its delays instead of sleeping; returns the record."""
    slept: list[float] = []
    monkeypatch.setattr(store, "backoff", Backoff(sleep=slept.append))
    return slept


FIRST_RANGE = f"bytes=0-{8 * MIB - 1}"  # the first 8 MiB range of a download (tree-hash aligned)


def test_a_range_read_is_one_request_checked_against_the_tree_hash_aws_sends(retrieved, double):
    store, archive_id, job_id, data, _ = retrieved
    before = double.outputs()
    double.corrupt_next_output(1, checksum="original")
    with pytest.raises(CorruptRangeError) as err:
        store.read_range(archive_id, 2 * MIB, 4 * MIB, job_id)
    assert "bytes do not match the tree hash AWS sent with them" in one_line(err.value)
    assert double.outputs() - before == 1, "the store never loops: its caller retries"
    assert store.read_range(archive_id, 2 * MIB, 4 * MIB, job_id) == data[2 * MIB : 4 * MIB]


def test_a_range_corrupted_twice_is_read_exactly_three_times_then_written(retrieved, double, tmp_path, monkeypatch):
    store, archive_id, job_id, data, part = retrieved
    slept = recorded_sleeps(store, monkeypatch)
    before, first = double.outputs(), double.outputs(FIRST_RANGE)
    double.corrupt_next_output(2, checksum="original")
    dest = tmp_path / "part"
    assert download_verified(store, part, dest, workers=1, job_id=job_id) == 2
    assert dest.read_bytes() == data
    assert double.outputs(FIRST_RANGE) - first == 3 and double.outputs() - before == 4, "the second range once"
    assert len(slept) == 2 and 0 < slept[0] < slept[1]


def test_a_range_corrupted_every_time_fails_in_one_line_and_nothing_is_kept(retrieved, double, tmp_path,
                                                                             monkeypatch):
    store, archive_id, job_id, data, part = retrieved
    slept = recorded_sleeps(store, monkeypatch)
    first = double.outputs(FIRST_RANGE)
    double.corrupt_next_output(3, checksum="original")
    dest = tmp_path / "part"
    with pytest.raises(OrchestratorError) as err:
        download_verified(store, part, dest, workers=1, job_id=job_id, label="part etc.tar.000000.xz of set s1")
    assert one_line(err.value) == (
        f"part etc.tar.000000.xz of set s1 is corrupted in {store.name}: bytes 0-{8 * MIB - 1}: "
        "bytes do not match the tree hash AWS sent with them; failed verification 3 times")
    assert double.outputs(FIRST_RANGE) - first == 3 and len(slept) == 2
    assert not dest.exists() and not list(tmp_path.iterdir()), "nothing written as good, no leftovers"


def test_an_output_cut_off_midway_is_read_again_by_our_layer(retrieved, double, tmp_path, monkeypatch):
    """botocore never re-sends a request whose response it already returned: a broken body is ours to retry."""
    store, archive_id, job_id, data, part = retrieved
    slept = recorded_sleeps(store, monkeypatch)
    before = double.outputs()
    double.corrupt_next_output(1, checksum="cut")
    with pytest.raises(CorruptRangeError, match="transfer broke off"):
        store.read_range(archive_id, 0, MIB, job_id)
    double.corrupt_next_output(1, checksum="cut")
    assert store.get_bytes(archive_id) == data, "the streamed whole-archive read too"
    double.corrupt_next_output(1, checksum="cut")
    assert download_verified(store, part, tmp_path / "part", workers=1, job_id=job_id) == 1
    assert (tmp_path / "part").read_bytes() == data
    assert double.outputs() - before == 1 + 2 + 3 and len(slept) == 2


@pytest.mark.slow
def test_throttled_reads_are_retried_by_botocore_alone(retrieved, double, tmp_path, monkeypatch):
    _, archive_id, job_id, data, part = retrieved
    store = make_store(double, "retrieve", max_attempts=3)
    slept = recorded_sleeps(store, monkeypatch)
    first = double.outputs(FIRST_RANGE)
    double.fail("get_job_output", 2)
    assert download_verified(store, part, tmp_path / "part", workers=1, job_id=job_id) == 0
    assert (tmp_path / "part").read_bytes() == data
    assert double.outputs(FIRST_RANGE) - first == 3 and slept == [], "throttling succeeds, with no re-read of ours"

    first = double.outputs(FIRST_RANGE)
    double.fail("get_job_output", 10)
    with pytest.raises(OrchestratorError) as err:
        download_verified(store, part, tmp_path / "again", workers=1, job_id=job_id)
    double.clear_faults()
    assert "ThrottlingException" in one_line(err.value) and "failed verification" not in str(err.value)
    assert double.outputs(FIRST_RANGE) - first == 3, "botocore's 3 attempts, not multiplied by ours"
    assert slept == [] and not (tmp_path / "again").exists()


@pytest.mark.slow
def test_whole_archive_reads_are_verified_and_retried_by_one_layer(retrieved, double, tmp_path, monkeypatch):
    store, archive_id, job_id, data, _ = retrieved
    slept = recorded_sleeps(store, monkeypatch)
    before = double.outputs("")
    double.corrupt_next_output(2, checksum="original")
    assert store.read_range(archive_id, 0, -1, job_id) == data
    assert double.outputs("") - before == 3 and len(slept) == 2 and 0 < slept[0] < slept[1]

    double.corrupt_next_output(3, checksum="original")
    dest = tmp_path / "whole"
    with pytest.raises(OrchestratorError) as err:
        store.get(archive_id, dest)
    assert one_line(err.value) == (f"{store.name}: read archive {archive_id[:16]}...: bytes do not match the tree "
                                   "hash AWS sent with them; failed verification 3 times")
    assert double.outputs("") - before == 6 and len(slept) == 4
    assert not list(tmp_path.iterdir()), "no partial file is left"

    double.fail("get_job_output", 10)
    with pytest.raises(OrchestratorError, match="ThrottlingException"):
        store.get_bytes(archive_id)
    double.clear_faults()
    assert double.outputs("") - before == 11 and len(slept) == 4, "botocore's 5 attempts, no sleep of ours"


def test_a_corrupted_range_without_checksum_is_refetched_by_download_verified(retrieved, double, tmp_path):
    store, archive_id, job_id, data, part = retrieved
    double.corrupt_next_output(1, checksum="none")  # nothing for read_range to check: the catalog's leaves catch it
    dest = tmp_path / "part"
    assert download_verified(store, part, dest, workers=1, job_id=job_id) == 1
    assert dest.read_bytes() == data


def test_reading_before_a_retrieval_is_ready_says_so_in_one_line(double, tmp_path):
    store = make_store(double, "cold")
    archive_id = store.put_bytes(b"cold bytes", description="cold")
    with pytest.raises(NotReadyError) as err:
        store.read_range(archive_id, 0, 4)
    assert "request its retrieval first" in one_line(err.value)
    assert store.retrieval(archive_id).state == "absent"
    pending = store.request_retrieval(archive_id, "Bulk", 1)
    assert (pending.state, pending.eta_hours) == ("pending", 12)
    with pytest.raises(NotReadyError) as err:
        store.read_range(archive_id, 0, 4)
    assert "ready in about 12 hours" in one_line(err.value)
    with pytest.raises(ConfigError):
        store.request_retrieval(archive_id, "Instant", 1)

    # a job AWS no longer knows (outputs expire 24 h after completion); moto cannot say so, the double does
    double.fail("describe_job", 2, status=404, code="ResourceNotFoundException", message="Job not found")
    assert store.retrieval(archive_id, "expired-job").state == "absent"
    with pytest.raises(NotReadyError) as err:
        store.read_range(archive_id, 0, 4, "expired-job")
    assert "request the retrieval again" in one_line(err.value)


# end to end ---------------------------------------------------------------------------------------
def backup_chain(site, double, vault: str) -> list[str]:
    site.set("backup.store", {"type": "glacier", "vault": vault, "endpoint_url": double.url,
                              "retrieval_tier": "Expedited", "max_attempts": 5})
    (site.data / "big.bin").write_bytes(os.urandom(2 * MIB + 5000))
    (site.data / "notes.txt").write_text("first\n")
    (site.data / "sub").mkdir()
    (site.data / "sub" / "deep.txt").write_text("deep\n")
    os.symlink("notes.txt", site.data / "link")
    code, out = site.backup()
    assert code == 0, out
    next_second()
    (site.data / "notes.txt").write_text("second\n")
    (site.data / "sub" / "deep.txt").unlink()
    (site.data / "later.bin").write_bytes(os.urandom(300_000))
    code, out = site.backup()
    assert code == 0, out
    with site.catalog() as cat:
        sets = cat.sets()
        assert [s["kind"] for s in sets] == ["full", "incremental"]
        for s in sets:
            assert s["store"] == f"glacier:us-east-1/{vault}" and s["manifest_id"]
            for part in cat.parts(s["id"]):
                assert part["status"] == "stored" and part["archive_id"]
                assert part["upload_id"] == ARCHIVE_JOURNAL_PREFIX + part["archive_id"]
        return [s["id"] for s in sets]


def test_end_to_end_full_and_incremental_backup_to_a_vault(site, double):
    before = set(double.completed)
    backup_chain(site, double, "geo-test")
    assert set(double.completed) - before, "the 2 MiB file's parts went up as multipart uploads"
    assert not double.uploads or all(u.vault != "geo-test" for u in double.uploads.values()), "none left open"


def restore_when_ready(site, target: Path, timeout: float = 10) -> tuple[int, str]:
    """``inv restore`` as an admin would: exit 75 first, then again until the vault jobs finished."""
    code, out = site.restore(target)
    assert code == 75, out
    assert "not ready yet" in out and "ready in about" in out, out
    return rerun_until_ready(lambda: site.restore(target), timeout)


def rerun_until_ready(run, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.5)
        code, out = run()
        if code != 75 or time.monotonic() > deadline:
            return code, out


@pytest.mark.slow
def test_end_to_end_restore_from_a_vault_waits_for_retrieval_then_matches(site, double, tmp_path):
    from treecmp import fingerprint

    backup_chain(site, double, "geo-restore")
    expected = fingerprint(site.data)
    for local in (site.staging / "complete").rglob("*"):
        if local.is_file():
            local.unlink()  # only the vault has the parts now
    target = tmp_path / "restored"
    code, out = restore_when_ready(site, target)
    assert code == 0, out
    assert fingerprint(target / site.data.relative_to("/")) == expected


@pytest.mark.slow
def test_fresh_machine_rebuilds_the_catalog_from_the_vault_and_restores_the_chain(site, double, tmp_path):
    """Empty state and staging dirs: inventory job, then manifest retrievals, then part retrievals."""
    from orchestrator.backup import jobs
    from treecmp import fingerprint

    sets = backup_chain(site, double, "geo-fresh")
    expected = fingerprint(site.data)
    shutil.rmtree(site.root / "state")
    shutil.rmtree(site.staging)
    code, out = site.run("catalog-rebuild", jobs.rebuild)
    assert code == 75 and "vault inventory requested" in out, out
    code, out = rerun_until_ready(lambda: site.run("catalog-rebuild", jobs.rebuild), timeout=20)
    assert code == 0 and "recovered_sets: 2" in out, out
    with site.catalog() as cat:
        assert [s["id"] for s in cat.sets()] == sets
    target = tmp_path / "restored"
    code, out = restore_when_ready(site, target)
    assert code == 0, out
    assert fingerprint(target / site.data.relative_to("/")) == expected
