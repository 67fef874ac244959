"""The cold-storage restore flow: request once, exit 75 with an estimate, rerun or --wait.

The store here is a real directory store given vault-like timing (archives are
readable only after a retrieval request and a few status checks), so the flow
is tested in milliseconds; the S3 and vault tests run it against moto.
"""

from __future__ import annotations

import pytest

from conftest import summary_value
from treecmp import fingerprint

from orchestrator.backup import jobs
from orchestrator.backup.stores import DirectoryStore, Retrieval
from orchestrator.errors import EXIT_NOT_READY, NotReadyError


class ThawingStore(DirectoryStore):
    storage_key = "vault"

    def __init__(self, *args, checks_until_ready: int):
        super().__init__(*args)
        self.checks_until_ready = checks_until_ready
        self.requests: dict[str, int] = {}

    def retrieval(self, archive_id, job_id=None):
        if archive_id not in self.requests:
            return Retrieval("absent")
        self.requests[archive_id] += 1
        if self.requests[archive_id] > self.checks_until_ready:
            return Retrieval("ready", job_id)
        return Retrieval("pending", job_id, eta_hours=5)

    def request_retrieval(self, archive_id, tier, days):
        assert archive_id not in self.requests, "a retrieval is never requested twice"
        self.requests[archive_id] = 0
        return Retrieval("pending", f"job-{archive_id[:8]}", eta_hours=5)

    def read_range(self, archive_id, start, end, job_id=None):
        if self.requests.get(archive_id, 0) <= self.checks_until_ready:
            raise NotReadyError("not thawed")
        assert job_id == f"job-{archive_id[:8]}", "the recorded job is used to read"
        return super().read_range(archive_id, start, end, job_id)


@pytest.fixture
def thawing(site, monkeypatch):
    (site.data / "f").write_bytes(b"cold data " * 50000)
    code, out = site.backup()
    assert code == 0, out
    for part_dir in (site.staging / "complete").iterdir():
        for part in part_dir.iterdir():
            part.unlink()  # staging copies gone: everything must come from cold storage
    store = ThawingStore(site.root / "store", "backups", checks_until_ready=0)
    monkeypatch.setattr(jobs, "open_store", lambda cfg: store)
    return store


def test_first_restore_requests_retrieval_and_exits_75_with_an_estimate(site, tmp_path, thawing):
    target = tmp_path / "r"
    code, out = site.restore(target)
    assert code == EXIT_NOT_READY == 75
    assert "not ready yet: 1 of 1 archives are being retrieved" in out
    assert "(Standard tier), ready in about 5 hours; run inv restore again then, or add --wait" in out
    assert not target.exists() and not list(tmp_path.glob(".r.restore-*"))
    requested = dict(thawing.requests)
    with site.catalog() as cat:
        assert {r["archive_id"] for r in cat.conn.execute("SELECT archive_id FROM retrievals")} == set(requested)

    code, out = site.restore(target)
    assert code == 0, out
    assert set(thawing.requests) == set(requested), "the rerun reused the recorded jobs"
    assert fingerprint(target / site.data.relative_to("/")) == fingerprint(site.data)
    with site.catalog() as cat:
        assert cat.conn.execute("SELECT COUNT(*) FROM retrievals").fetchone()[0] == 0, "finished jobs forgotten"


def test_wait_polls_until_readable(site, tmp_path, thawing):
    site.set("backup.store.poll_seconds", 0)
    thawing.checks_until_ready = 3
    code, out = site.run("restore", lambda r: jobs.restore(r, str(tmp_path / "r"), wait=True))
    assert code == 0, out
    assert summary_value(out, "parts") == str(len(thawing.requests))


def test_bad_tier_is_a_config_error(site, tmp_path, thawing):
    code, out = site.run("restore", lambda r: jobs.restore(r, str(tmp_path / "r"), tier="Instant"))
    assert code == 2 and "--tier: 'Instant' is not one of Expedited, Standard, Bulk" in out
