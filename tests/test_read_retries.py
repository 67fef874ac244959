"""The one retry layer of ours (orchestrator.backup.retry) on its own, and through a real directory store.

The S3 and vault tests count the requests a server saw; these pin the policy:
how many reads, which errors, and the delays handed to the (injected) sleeper.
"""

from __future__ import annotations

import os

import pytest

from orchestrator.backup.download import RANGE_SIZE, download_verified
from orchestrator.backup.retry import Backoff, CorruptRangeError, verified_read
from orchestrator.backup.stores import DirectoryStore
from orchestrator.backup.treehash import file_hashes
from orchestrator.errors import NotReadyError, OrchestratorError


class Answers:
    """A read that raises the given errors in turn, then returns ``b"good"``; counts its calls."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return b"good"


def bad(reason: str = "got 3 bytes for a range of 4") -> CorruptRangeError:
    return CorruptRangeError("store: reading a", reason)


def test_delays_double_from_one_second_are_capped_and_jittered_downwards_by_at_most_half():
    low = Backoff(jitter=lambda: 0.0, cap=8.0)
    high = Backoff(jitter=lambda: 1.0, cap=8.0)
    assert [low.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [high.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    jittered = Backoff()
    for _ in range(200):
        first, second, third = (jittered.delay(n) for n in (1, 2, 3))
        assert 0.5 <= first < 1.0 <= second < 2.0 <= third < 4.0
    with pytest.raises(ValueError):
        Backoff(attempts=0)


def test_a_read_wrong_twice_is_read_three_times_with_growing_delays():
    slept: list[float] = []
    read = Answers(bad(), bad())
    assert verified_read(read, "reading a", Backoff(sleep=slept.append)) == b"good"
    assert read.calls == 3 and len(slept) == 2 and 0.5 <= slept[0] < 1.0 <= slept[1] < 2.0


def test_a_read_wrong_every_time_gives_up_after_three_with_one_line_that_is_not_retried_again():
    slept: list[float] = []
    read = Answers(bad("short"), bad("short"), bad("tree hash differs"), bad("never reached"))
    with pytest.raises(OrchestratorError) as err:
        verified_read(read, "part p is corrupted in s3://b/", Backoff(sleep=slept.append))
    assert str(err.value) == "part p is corrupted in s3://b/: tree hash differs; failed verification 3 times"
    assert not isinstance(err.value, CorruptRangeError), "an outer caller must not retry it once more"
    assert read.calls == 3 and len(slept) == 2, "no sleep after the last read"


@pytest.mark.parametrize("error", [NotReadyError("s: not restored yet"), OrchestratorError("s: AccessDenied"),
                                   OrchestratorError("s: archive a is not in the store"), OSError("disk")])
def test_anything_but_a_wrong_answer_fails_at_once(error):
    slept: list[float] = []
    read = Answers(error)
    with pytest.raises(type(error)) as err:
        verified_read(read, "reading a", Backoff(sleep=slept.append))
    assert err.value is error and read.calls == 1 and slept == []


class CountingStore(DirectoryStore):
    """A real directory store that counts its single reads, per start offset."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads: list[int] = []

    def _read_once(self, archive_id, start, end, job_id):
        self.reads.append(start)
        return super()._read_once(archive_id, start, end, job_id)


def test_a_range_damaged_on_disk_is_read_three_times_without_waiting_then_named(tmp_path, monkeypatch):
    store = CountingStore(tmp_path / "store", "v")
    store.ensure()
    src = tmp_path / "part"
    src.write_bytes(os.urandom(2 * RANGE_SIZE + 100))
    sha, tree, size, leaves = file_hashes(src)
    archive_id = store.put(src, description="d", sha256=sha, tree_hash=tree)
    stored = store.archives / archive_id
    damaged = bytearray(stored.read_bytes())
    damaged[RANGE_SIZE + 5] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    slept: list[float] = []
    monkeypatch.setattr(store, "backoff", Backoff(first=DirectoryStore.backoff.first, sleep=slept.append))
    part = {"name": "p", "size": size, "sha256": sha, "tree_hash": tree, "leaves": leaves, "archive_id": archive_id}
    dest = tmp_path / "got"
    with pytest.raises(OrchestratorError) as err:
        download_verified(store, part, dest, workers=1, label="part p of set s")
    assert str(err.value) == (f"part p of set s is corrupted in {store.name}: bytes {RANGE_SIZE}-{2 * RANGE_SIZE - 1}: "
                              "MiB 8 does not match the catalog's leaf hash; failed verification 3 times")
    assert store.reads.count(RANGE_SIZE) == 3 and slept == [0.0, 0.0], "a disk is re-read at once"
    assert not dest.exists() and not list(tmp_path.glob(".got*"))
