"""read_file / replace_file on every target: a plain directory (local), a real busybox chroot, and a real
sshd on a loopback port (remote). The remote host is this machine, so its files are checked directly.

Every promise of ``Target.replace_file`` is asserted on each target: written only on change, refused
text leaves the old file byte-identical, the previous version kept, mode and owner kept, a diff and
no write under --dry, and a kill -9 at each step leaves the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from busybox_root import make_busybox_root
from children import finished, no_sshd_session_left
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.faults import ENV as CRASH_ENV
from orchestrator.run import ChrootTarget, LocalTarget, RemoteTarget
from orchestrator.run.files import FILE_POINTS, PREVIOUS_KEPT, atomic_write
from test_chroot_target import assert_nothing_leaked

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="owners, chroots and sshd need root"),
    pytest.mark.timeout(180),
]

REPO = Path(__file__).resolve().parents[1]
PLACES = ("local", "chroot", "remote")
NEEDS_VALID = ["grep", "-q", "^valid", "{}"]  # host grep and busybox grep alike




@dataclass
class Place:
    """One target and where the files it names are on this machine."""

    kind: str
    base: Path  # a file the target calls "<prefix>/x" is base / "x" here
    prefix: str
    spec: dict  # how a child process opens the same target
    stack: ExitStack
    lines: list[str] = field(default_factory=list)
    opened: list = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def host(self, name: str) -> Path:
        return self.base / name

    def target(self, *, dry: bool = False):
        """A target on this place; a chroot session is opened (validators run inside), except under --dry."""
        target = open_target(self.spec, dry=dry, echo=self.lines.append)
        self.opened.append(target)
        if self.kind == "remote" or (self.kind == "chroot" and not dry):
            self.stack.enter_context(target)
        return target


def open_target(spec: dict, *, dry: bool = False, echo=None):
    if spec["kind"] == "local":
        return LocalTarget(dry=dry, echo=echo)
    if spec["kind"] == "chroot":
        return ChrootTarget(spec["root"], lock_dir=spec["lock_dir"], dry=dry, echo=echo, resolv_conf=False)
    return RemoteTarget(spec["host"], port=spec["port"], key_filename=spec["key"], known_hosts=spec["known_hosts"],
                        dry=dry, echo=echo)


@pytest.fixture(params=PLACES)
def place(request, tmp_path):
    kind = request.param
    if kind == "local":
        base = tmp_path / "files"
        yield from _place(kind, base, str(base), {"kind": kind})
    elif kind == "chroot":
        root = make_busybox_root(tmp_path / "root")
        spec = {"kind": kind, "root": str(root), "lock_dir": str(tmp_path / "locks")}
        yield from _place(kind, root / "srv", "/srv", spec)
        assert_nothing_leaked(tmp_path)
    else:
        server = request.getfixturevalue("sshd")
        base = tmp_path / "files"
        spec = {"kind": kind, "host": server.host, "port": server.port, "key": server.key_filename,
                "known_hosts": server.known_hosts}
        yield from _place(kind, base, str(base), spec)
        no_sshd_session_left(server)


def _place(kind: str, base: Path, prefix: str, spec: dict):
    base.mkdir(parents=True)
    with ExitStack() as stack:
        yield Place(kind, base, prefix, spec, stack)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- replace_file ----------------------------------------------------------


def test_a_new_file_is_written_with_its_directories_and_rewriting_the_same_text_does_nothing(place):
    target = place.target()
    assert target.replace_file(place.path("etc/new.conf"), "one\ntwo\n") is True
    written = place.host("etc/new.conf")
    assert written.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    before = written.stat()

    assert target.replace_file(place.path("etc/new.conf"), "one\ntwo\n") is False

    after = written.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "not rewritten"
    assert listing(place.host("etc")) == ["new.conf"], "no previous version of a file that did not change"


def test_a_changed_file_keeps_its_mode_and_owner_and_the_previous_version(place):
    old = place.host("app.conf")
    old.write_bytes(b"old\n")
    os.chown(old, 1234, 2345)
    old.chmod(0o640)

    assert place.target().replace_file(place.path("app.conf"), "new\n") is True

    new, previous = place.host("app.conf"), place.host(".app.conf.previous")
    assert new.read_bytes() == b"new\n" and previous.read_bytes() == b"old\n"
    for path in (new, previous):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 2345), path
    assert listing(place.base) == [".app.conf.previous", "app.conf"], "no temp file left"


def test_keep_previous_false_keeps_none_and_a_second_change_keeps_only_the_last(place):
    target = place.target()
    place.host("a.conf").write_text("v1\n")
    target.replace_file(place.path("a.conf"), "v2\n", keep_previous=False)
    assert listing(place.base) == ["a.conf"]
    target.replace_file(place.path("a.conf"), "v3\n")
    target.replace_file(place.path("a.conf"), "v4\n")
    assert place.host(".a.conf.previous").read_text() == "v3\n" and place.host("a.conf").read_text() == "v4\n"


@pytest.mark.parametrize("validator", ["argv", "callable"])
def test_text_the_validator_refuses_is_one_line_and_the_old_file_stays_byte_identical(place, validator):
    old = b"valid = yes\r\nodd bytes \xff\n"
    place.host("app.conf").write_bytes(old)
    validate = NEEDS_VALID if validator == "argv" else _refuse_without_valid

    with pytest.raises(OrchestratorError) as info:
        place.target().replace_file(place.path("app.conf"), "broken\n", validate=validate)

    message = str(info.value)
    assert "\n" not in message and f"{place.path('app.conf')}: new text refused, file left unchanged" in message
    assert place.host("app.conf").read_bytes() == old
    assert listing(place.base) == ["app.conf"], "no previous version, no temp file"


def _refuse_without_valid(text: str) -> None:
    if not text.startswith("valid"):
        raise ConfigError("app.conf: the first line must say valid")


def test_a_callable_validators_config_error_stays_a_config_error(place):
    with pytest.raises(ConfigError, match="the first line must say valid"):
        place.target().replace_file(place.path("app.conf"), "nope\n", validate=_refuse_without_valid)
    assert not place.host("app.conf").exists()


def test_text_the_validator_accepts_is_written(place):
    assert place.target().replace_file(place.path("app.conf"), "valid\n", validate=NEEDS_VALID)
    assert place.host("app.conf").read_text() == "valid\n"


def test_dry_prints_a_unified_diff_and_writes_nothing(place):
    place.host("app.conf").write_text("keep\nold\n")
    before = listing(place.base)

    assert place.target(dry=True).replace_file(place.path("app.conf"), "keep\nnew\n") is True
    assert place.target(dry=True).replace_file(place.path("app.conf"), "keep\nold\n") is False

    path = place.path("app.conf")
    assert place.lines[-7:] == [f"[dry-run] {place.opened[0].describe()}: replace {path}", f"--- {path}",
                                f"+++ {path}", "@@ -1,2 +1,2 @@", " keep", "-old", "+new"]
    assert place.host("app.conf").read_text() == "keep\nold\n" and listing(place.base) == before


def test_dry_runs_the_validator_too(place):
    with pytest.raises(OrchestratorError, match="new text refused"):
        place.target(dry=True).replace_file(place.path("app.conf"), "broken\n", validate=NEEDS_VALID)
    assert not any(line.startswith("+broken") for line in place.lines)


def test_a_new_file_under_dry_diffs_against_dev_null(place):
    place.target(dry=True).replace_file(place.path("new.conf"), "line\n")
    assert place.lines[-4:] == ["--- /dev/null", f"+++ {place.path('new.conf')}", "@@ -0,0 +1 @@", "+line"]
    assert listing(place.base) == []


def test_a_symlink_is_followed_and_stays_a_link(place):
    place.host("real.conf").write_text("old\n")
    place.host("link.conf").symlink_to("real.conf")

    place.target().replace_file(place.path("link.conf"), "new\n")

    assert place.host("link.conf").is_symlink() and place.host("real.conf").read_text() == "new\n"
    assert place.host(".real.conf.previous").read_text() == "old\n"


# --- read_file ---------------------------------------------------------------


def test_read_file_returns_the_text_or_none(place):
    place.host("app.conf").write_bytes("é\n".encode())
    target = place.target()
    assert target.read_file(place.path("app.conf")) == "é\n"
    assert target.read_file(place.path("missing.conf")) is None


def test_a_relative_path_is_refused(place):
    with pytest.raises(OrchestratorError, match="is not an absolute path to a file"):
        place.target().replace_file("etc/fstab", "x\n")


# --- kill -9 in the middle -----------------------------------------------------

CHILD = """
import json, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_file_ops import open_target
spec, path, text = json.loads(open(sys.argv[1]).read())
open_target(spec).replace_file(path, text)
"""
BIG = "".join(f"line {i} of the new text\n" for i in range(20000))  # several write chunks


# The previous version is written first (one chunk: file-writing@1, file-written@1, file-replaced@1),
# then the new text (file-writing@2.., file-written@2, file-replaced@2).
@pytest.mark.parametrize("point,survivor", [("file-written@1", "old"), (PREVIOUS_KEPT, "old"),
                                            ("file-writing@3", "old"), ("file-written@2", "old"),
                                            ("file-replaced@2", "new")])
def test_a_kill_9_during_a_replacement_leaves_the_old_or_the_new_file_never_half(place, point, survivor, tmp_path):
    assert point.split("@")[0] in (*FILE_POINTS, PREVIOUS_KEPT)
    old = "old text\n" * 1000
    place.host("app.conf").write_text(old)
    job = tmp_path / "job.json"
    job.write_text(json.dumps([place.spec, place.path("app.conf"), BIG]))
    argv = [sys.executable, "-c", CHILD.format(repo=str(REPO), tests=str(REPO / "tests")), str(job)]

    done = finished(argv, what=f"replace_file killed at {point}", out_dir=tmp_path / "child",
                    env={**os.environ, CRASH_ENV: point})

    assert done.returncode == -9, f"crash point {point} never reached: {done.stderr}"
    assert place.host("app.conf").read_text() == (old if survivor == "old" else BIG)
    stray = set(listing(place.base)) - {"app.conf", ".app.conf.previous"}
    assert all(name.startswith((".app.conf.", "..app.conf.previous.")) and name.endswith(".tmp")
               for name in stray), f"only a temp file, named after the file it was for: {stray}"
    place.target().replace_file(place.path("app.conf"), BIG)
    assert place.host("app.conf").read_text() == BIG, "the next run finishes the job"


# --- the local building block ---------------------------------------------------


def test_atomic_write_replaces_the_file_with_the_mode_asked_for(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    atomic_write(path, "new", mode=0o600)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert listing(tmp_path) == ["state.json"]


def test_a_chroot_symlink_to_an_absolute_path_stays_inside_the_chroot(tmp_path):
    root = make_busybox_root(tmp_path / "root")
    host_file = tmp_path / "host-owned.conf"
    host_file.write_text("the host's own\n")
    (root / "etc" / "app.conf").symlink_to(host_file)  # absolute: inside the chroot it names root/<host_file>
    target = ChrootTarget(root, lock_dir=tmp_path / "locks", resolv_conf=False)

    assert target.read_file("/etc/app.conf") is None
    target.replace_file("/etc/app.conf", "chroot's\n")

    assert host_file.read_text() == "the host's own\n"
    assert (root / str(host_file).lstrip("/")).read_text() == "chroot's\n"
    assert (root / "etc" / "app.conf").is_symlink()


def test_a_chroot_validator_runs_inside_the_chroot(tmp_path):
    root = make_busybox_root(tmp_path / "root")
    (root / "etc" / "only-in-the-chroot").write_text("")
    with ChrootTarget(root, lock_dir=tmp_path / "locks", resolv_conf=False) as target:
        target.replace_file("/etc/app.conf", "x\n", validate=["cat", "/etc/only-in-the-chroot", "{}"])
    assert (root / "etc" / "app.conf").read_text() == "x\n"
    assert listing(root / "tmp") == [], "the validation copy is gone"
    assert_nothing_leaked(tmp_path)
