"""Tree hashes against botocore's independent implementation; the directory store as a vault."""

from __future__ import annotations

import io
import os
import random

import pytest
from botocore.utils import calculate_tree_hash

from orchestrator.backup import metadata
from orchestrator.backup.stores import DirectoryStore
from orchestrator.backup.treehash import MIB, TreeHasher, file_digests
from orchestrator.errors import OrchestratorError


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 2 * MIB, 3 * MIB + 12345, 7 * MIB])
def test_tree_hash_matches_botocore(size, tmp_path):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digests(path)[1] == calculate_tree_hash(io.BytesIO(data))


def test_tree_hash_is_independent_of_how_the_stream_is_cut():
    data = random.Random(7).randbytes(5 * MIB + 77)
    whole, pieces = TreeHasher(), TreeHasher()
    whole.update(data)
    rng, pos = random.Random(1), 0
    while pos < len(data):
        step = rng.choice([1, 1000, MIB - 3, MIB, 2 * MIB + 5])
        pieces.update(data[pos : pos + step])
        pos += step
    assert whole.hexdigest() == pieces.hexdigest() == calculate_tree_hash(io.BytesIO(data))


def test_directory_store_put_list_get_delete(tmp_path):
    store = DirectoryStore(tmp_path / "store", "vault")
    store.ensure()
    src = tmp_path / "part"
    src.write_bytes(os.urandom(3 * MIB))
    sha, tree, size = file_digests(src)
    desc = metadata.part_description(host="h", set_id="s", slug="etc", idx=0, sha256=sha, plain_size=9)
    archive_id = store.put(src, description=desc, sha256=sha, tree_hash=tree)
    (info,) = store.list()
    assert (info.archive_id, info.size, info.tree_hash, info.description) == (archive_id, size, tree, desc)
    assert store.find(desc) == [archive_id]
    assert metadata.parse_description(info.description)["d"] == "etc"
    out = tmp_path / "out"
    store.get(archive_id, out)
    assert out.read_bytes() == src.read_bytes()
    store.delete(archive_id)
    assert store.list() == []
    with pytest.raises(OrchestratorError, match="is not in the store"):
        store.get(archive_id, out)


def test_directory_store_rejects_a_mismatched_tree_hash_and_keeps_nothing(tmp_path):
    store = DirectoryStore(tmp_path / "store", "vault")
    store.ensure()
    src = tmp_path / "part"
    src.write_bytes(b"payload")
    with pytest.raises(OrchestratorError, match="arrived corrupted"):
        store.put(src, description="d", sha256="0" * 64, tree_hash="0" * 64)
    assert store.list() == [] and list((tmp_path / "store" / "vault" / "incoming").iterdir()) == []


def test_descriptions_are_printable_ascii_within_glacier_limit():
    desc = metadata.part_description(host="hôst-" + "x" * 200, set_id="20260101T000000Z", slug="v" * 80,
                                     idx=123456, sha256="a" * 64, plain_size=2**40)
    assert len(desc) <= 1024 and desc.isascii() and desc.isprintable()
    assert metadata.parse_description(desc)["h"].startswith("hôst-")
    assert metadata.parse_description("my archive Mon Jan 1") is None


class CorruptsOnce(DirectoryStore):
    """A real directory store whose first read of one range comes back damaged (a flaky network)."""

    def __init__(self, *args, bad_start: int):
        super().__init__(*args)
        self.bad_start = bad_start
        self.reads: list[int] = []

    def read_range(self, archive_id, start, end, job_id=None):
        data = super().read_range(archive_id, start, end, job_id)
        self.reads.append(start)
        if start == self.bad_start and self.reads.count(start) == 1:
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data


def test_ranged_download_refetches_only_the_bad_range(tmp_path):
    from orchestrator.backup.download import RANGE_SIZE, download_verified
    from orchestrator.backup.treehash import file_hashes

    store = CorruptsOnce(tmp_path / "store", "v", bad_start=RANGE_SIZE)
    store.ensure()
    src = tmp_path / "part"
    src.write_bytes(os.urandom(2 * RANGE_SIZE + 12345))
    sha, tree, size, leaves = file_hashes(src)
    archive_id = store.put(src, description="d", sha256=sha, tree_hash=tree)
    part = {"name": "p", "size": size, "sha256": sha, "tree_hash": tree, "leaves": leaves, "archive_id": archive_id}
    dest = tmp_path / "got"
    assert download_verified(store, part, dest, workers=3) == 1
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(store.reads) == [0, RANGE_SIZE, RANGE_SIZE, 2 * RANGE_SIZE]
