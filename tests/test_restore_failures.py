"""A failed restore leaves nothing that looks complete: mid-chain, on a bad chunk, and after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from backupcheck import ROOT, processes_tagged
from conftest import next_second, summary_value
from treecmp import fingerprint

RESTORE_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from orchestrator.job import execute
from orchestrator.backup import jobs
config = json.load(open(sys.argv[1]))
config["run"] = {{"dry": False}}
sys.exit(execute(config, "restore", lambda run: jobs.restore(run, sys.argv[2])))
"""


def chain_of_two(site) -> tuple[str, str]:
    (site.data / "a").write_bytes(os.urandom(1500 * 1024))
    code, out = site.backup()
    assert code == 0, out
    next_second()
    (site.data / "b").write_bytes(os.urandom(1500 * 1024))
    code, out2 = site.backup()
    assert code == 0, out2
    return summary_value(out, "set"), summary_value(out2, "set")


def nothing_left(tmp_path, target) -> None:
    assert not target.exists()
    assert list(tmp_path.glob(f".{target.name}.restore-*")) == [], "no hidden partial tree"


def test_a_corrupt_part_of_the_second_set_of_a_chain_fails_the_whole_restore(site, tmp_path):
    full, incr = chain_of_two(site)
    for part in (site.staging / "complete" / incr).iterdir():
        part.unlink()
    with site.catalog() as cat:
        last = cat.parts(incr)[-1]
    path = site.root / "store" / "backups" / "archives" / last["archive_id"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x55
    path.write_bytes(bytes(data))
    target = tmp_path / "r"
    code, out = site.restore(target)
    assert code == 1
    assert f"part {last['name']} of set {incr} is corrupted in directory:" in out
    nothing_left(tmp_path, target)
    code, out = site.restore(target, full)
    assert code == 0, "the intact older set still restores"


def test_a_chunk_that_decodes_to_other_bytes_stops_the_restore(site, tmp_path):
    full, incr = chain_of_two(site)
    with site.catalog() as cat:
        (part,) = [p for p in cat.parts(incr) if p["idx"] == 0]
        wrong = ("1" if part["plain_sha256"][0] == "0" else "0") + part["plain_sha256"][1:]
        cat.conn.execute("UPDATE parts SET plain_sha256 = ? WHERE set_id = ? AND idx = 0", (wrong, incr))
        name = part["name"]
    target = tmp_path / "r"
    code, out = site.restore(target)
    assert code == 1
    assert f"part {name} of set {incr} decoded to different bytes than were backed up; nothing more was unpacked" in out
    nothing_left(tmp_path, target)


def test_kill_9_during_unpacking_leaves_no_target_and_the_next_restore_works(site, tmp_path):
    chain_of_two(site)
    target = tmp_path / "r"
    cfg = site.root / "restore-config.json"
    cfg.write_text(json.dumps(site.config))
    tag = f"restore-kill-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", RESTORE_CHILD.format(root=str(ROOT)), str(cfg), str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "GEO_TEST_TAG": tag, "GEO_TEST_CRASH_AT": "restore-unpacking@2"})
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == -9, out
    assert processes_tagged(tag) == []
    assert not target.exists(), "a killed restore never leaves a target that looks complete"
    assert list(tmp_path.glob(".r.restore-*")), "the hidden work directory is what a kill leaves"
    code, out = site.restore(target)
    assert code == 0, out
    nothing_left_but_target = list(tmp_path.glob(".r.restore-*"))
    assert nothing_left_but_target == []
    assert fingerprint(target / site.data.relative_to("/")) == fingerprint(site.data)
