"""Renamed and replaced directories in an incremental chain: restorable by inv restore and by hand.

GNU tar records a directory it finds under a new name (same device and inode) as a
rename, and cannot replay it when the new name exists at restore time
(``rm -rf B && mv A B``: "Cannot rename A to B: Directory not empty"). The backup makes
tar dump such directories whole instead (orchestrator/backup/snar.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest

from conftest import next_second, summary_value
from test_restore_by_hand import recipe, with_values
from treecmp import fingerprint

from orchestrator.backup import snar
from orchestrator.backup.tarindex import StreamIndex, UnrestorableStream


def backup_ok(site) -> str:
    code, out = site.backup()
    assert code == 0, out
    return summary_value(out, "set")


def tree(site) -> None:
    for name, text in (("A/a", "a\n"), ("A/sub/s", "s\n"), ("B/b", "b\n"), ("E/e", "e\n")):
        (site.data / name).parent.mkdir(parents=True, exist_ok=True)
        (site.data / name).write_text(text)


def by_hand(site, tmp_path, sets: list[str]) -> dict:
    with site.catalog() as cat:
        (slug,) = [d["slug"] for d in cat.dirs(sets[-1])]
    target = tmp_path / "by-hand"
    script = with_values(recipe(), SETS_DIR=str(site.staging / "complete"), SETS=" ".join(sets), SLUG=slug,
                         TARGET=str(target))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return fingerprint(target / site.data.relative_to("/"))


def restored(site, tmp_path, set_id: str) -> dict:
    target = tmp_path / f"r-{set_id}"
    code, out = site.restore(target, set_id)
    assert code == 0, out
    return fingerprint(target / site.data.relative_to("/"))


@pytest.mark.parametrize("change", ["replace B by A", "swap A and B", "move E into B"])
def test_renamed_directories_restore_with_inv_and_by_hand(site, tmp_path, change):
    tree(site)
    full = backup_ok(site)
    next_second()
    data = site.data
    if change == "replace B by A":
        shutil.rmtree(data / "B")
        os.rename(data / "A", data / "B")
    elif change == "swap A and B":
        os.rename(data / "A", data / "tmp")
        os.rename(data / "B", data / "A")
        os.rename(data / "tmp", data / "B")
    else:
        os.rename(data / "E", data / "B" / "E2")
    incr = backup_ok(site)
    expected = fingerprint(data)
    assert restored(site, tmp_path, incr) == expected
    assert by_hand(site, tmp_path, [full, incr]) == expected


def test_a_new_directory_on_a_deleted_directorys_inode_is_not_taken_for_a_rename(site, tmp_path):
    """Inode reuse, made deterministic: the parent's snapshot says the old D had N's inode."""
    tree(site)
    full = backup_ok(site)
    next_second()
    shutil.rmtree(site.data / "E")
    (site.data / "N").mkdir()
    (site.data / "N" / "n").write_text("new\n")
    (snapshot,) = (site.root / "state" / "snapshots" / "testhost" / full).glob("*.snar")
    parsed = snar.parse(snapshot.read_bytes())
    st = os.lstat(site.data / "N")
    (old_e,) = [d for d in parsed.dirs if d.name.endswith(b"/E")]
    old_e.dev, old_e.ino = str(st.st_dev).encode(), str(st.st_ino).encode()
    snapshot.write_bytes(parsed.dump())
    assert "E" in tar_renames(snapshot, site.data), "plain tar takes N for a rename of E"
    incr = backup_ok(site)
    assert restored(site, tmp_path, incr) == fingerprint(site.data)


def tar_renames(snapshot, data) -> str:
    """The rename records plain GNU tar writes with (a copy of) this snapshot."""
    copy = snapshot.with_name("probe.snar")
    shutil.copy(snapshot, copy)
    stream = subprocess.run(["tar", "-c", "--format=posix", f"--listed-incremental={copy}", "-f", "-", "-C", "/",
                             os.path.relpath(data, "/")], capture_output=True, check=True).stdout
    copy.unlink()
    with tarfile.open(fileobj=__import__("io").BytesIO(stream)) as tf:
        dumpdirs = [m.pax_headers.get("GNU.dumpdir", "") for m in tf if m.isdir()]
    return "".join(r for d in dumpdirs for r in d.split("\0") if r[:1] in ("R", "T"))


def test_a_stream_with_rename_records_is_refused_by_the_index(tmp_path):
    """Should a rename slip in between our scan and tar's (a race), the set is not reported as good."""
    src = tmp_path / "src"
    (src / "d" / "A").mkdir(parents=True)
    (src / "d" / "B").mkdir()
    (src / "d" / "A" / "a").write_text("a")
    snap = tmp_path / "s.snar"
    subprocess.run(["tar", "-c", "--format=posix", f"-g{snap}", "-f", "/dev/null", "-C", str(src), "d"], check=True)
    next_second()
    shutil.rmtree(src / "d" / "B")
    os.rename(src / "d" / "A", src / "d" / "B")
    stream = subprocess.run(["tar", "-c", "--format=posix", f"-g{snap}", "-f", "-", "-C", str(src), "d"],
                            capture_output=True, check=True).stdout
    index = StreamIndex("d")
    index.feed(stream)
    with pytest.raises(UnrestorableStream, match=r"d: a directory was renamed while it was being backed up"):
        index.finish()


def test_snapshot_round_trips_byte_for_byte(site):
    tree(site)
    full = backup_ok(site)
    (snapshot,) = (site.root / "state" / "snapshots" / "testhost" / full).glob("*.snar")
    data = snapshot.read_bytes()
    assert snar.parse(data).dump() == data
    with pytest.raises(snar.SnapshotFormatError, match="not a GNU tar format-2 snapshot"):
        snar.parse(b"GNU tar-1.34-1\n")
