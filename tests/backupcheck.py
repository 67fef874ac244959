"""What every backup test that kills, resumes or rebuilds checks: the store holds exactly what the
catalog says, a rebuild from the store alone gives the same sets, and nothing of a killed run lives on."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from orchestrator.job import execute
from orchestrator.backup import jobs
config = json.load(open(sys.argv[1]))
config["run"] = {{"dry": False}}
sys.exit(execute(config, "backup", jobs.backup))
"""


def backup_child(site, tag: str, env: dict | None = None) -> subprocess.Popen:
    """``inv backup`` as its own process group (so a crash point's kill -9 takes only it and its children)."""
    cfg = site.root / f"config-{tag}.json"
    cfg.write_text(json.dumps(site.config))
    return subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "GEO_TEST_TAG": tag, **(env or {})})


def backup_killed_at(site, point: str) -> None:
    """A real backup, SIGKILLed with its process group at crash point ``point``; nothing of it survives."""
    tag = f"kill-{point}-{os.getpid()}-{time.monotonic_ns()}"
    proc = backup_child(site, tag, {"GEO_TEST_CRASH_AT": point})
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == -9, f"crash point {point} was never reached (exit {proc.returncode}):\n{out}"
    assert processes_tagged(tag) == [], "a process of the killed run survived"


def processes_tagged(tag: str, deadline_s: float = 30.0) -> list[str]:
    """Processes that inherited our tag (a killed run's tar, xz or gpg, even after reparenting) and are
    still alive ``deadline_s`` after the kill.

    A child killed with its group still shows in /proc for a moment while it exits and until
    init reaps it; waiting for that event (zombies do not count), with a deadline, tells it
    from a child that really lives on.
    """
    deadline = time.monotonic() + deadline_s
    while (found := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _tagged(tag: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if f"GEO_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {cmdline}")
        except OSError:
            continue
    return found


def store_matches_catalog(site) -> None:
    """Every archive of a complete set is stored once, and nothing else (no orphan, no duplicate)."""
    with site.catalog() as cat:
        expected = []
        for row in cat.sets(status="complete"):
            expected += [p["archive_id"] for p in cat.parts(row["id"])] + [row["manifest_id"]]
        expected.append(cat.meta("catalog_copy_archive"))
        leftovers = [r["id"] for r in cat.sets() if r["status"] == "inflight"]
    archives = site.store().list()
    descriptions = Counter(a.description for a in archives)
    assert leftovers == [], f"sets still inflight: {leftovers}"
    assert [d for d, n in descriptions.items() if n > 1] == [], "an archive is stored twice"
    assert sorted(a.archive_id for a in archives) == sorted(expected)


def catalog_facts(catalog) -> list[tuple]:
    facts = []
    for row in catalog.sets(status="complete"):
        parts = [(p["slug"], p["idx"], p["archive_id"], p["sha256"], p["plain_sha256"]) for p in catalog.parts(row["id"])]
        files = [(d["slug"], d["entries"], len(catalog.files(row["id"], d["slug"]))) for d in catalog.dirs(row["id"])]
        facts.append((row["id"], row["kind"], row["parent_id"], row["chain_id"], row["manifest_id"], parts, files))
    return facts


def rebuild_gives_the_same_sets(site, tmp_path: Path) -> None:
    """``inv catalog.rebuild`` on an empty state dir recovers exactly the catalogued sets, twice over."""
    from orchestrator.backup import jobs
    from orchestrator.backup.catalog import Catalog
    from orchestrator.job import execute

    fresh = copy.deepcopy(site.config)
    state = tmp_path / f"fresh-state-{len(list(tmp_path.iterdir()))}"
    fresh["orchestrator"]["state_dir"] = str(state)
    fresh["run"] = {"dry": False}
    for attempt in (1, 2):
        assert execute(copy.deepcopy(fresh), "catalog-rebuild", jobs.rebuild) == 0, f"rebuild {attempt} failed"
    with site.catalog() as original, Catalog.open(state / "catalog.sqlite") as rebuilt:
        assert catalog_facts(rebuilt) == catalog_facts(original)
