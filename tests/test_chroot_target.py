"""ChrootTarget against a real busybox rootfs: real namespaces, real mounts, real signals.

Runs as root. Every mount is made inside a private namespace; each test checks
the host's mount table itself, and the fixture's teardown fails the test (and
cleans up) if a mount or a process inside the chroot outlives it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from busybox_root import make_busybox_root
from children import finish, wait_until
from daemons import group_members, running
from orchestrator.errors import CommandError, ConfigError, LockedError, OrchestratorError
from orchestrator.run import ChrootTarget

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mount namespaces need root"),
    pytest.mark.timeout(180),  # above children.HANG_S: a hang fails in a wait that names it
]

HOST_RESOLV = Path("/etc/resolv.conf")
CHROOT_RESOLV = "nameserver 192.0.2.53\n"


# --- independent observers: they do not use the code under test ---------


def host_mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in the host's table (ours, init's, findmnt's)."""
    top = str(path)
    found = []
    for table in ("/proc/self/mountinfo", "/proc/1/mountinfo"):
        with open(table) as handle:
            for line in handle:
                point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                if point == top or point.startswith(top + "/"):
                    found.append(f"{table}: {point}")
    listed = subprocess.run(["findmnt", "--raw", "--noheadings", "--output", "TARGET"],
                            capture_output=True, text=True, check=True).stdout.split()
    return found + [f"findmnt: {p}" for p in listed if p == top or p.startswith(top + "/")]


def rooted_in(path: Path) -> dict[int, str]:
    """Live processes whose root directory is ``path`` or below, with their command line."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            where = os.readlink(f"/proc/{entry}/root")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if where == str(path) or where.startswith(f"{path}/"):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode().strip()
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """``pid``'s live children, grandchildren, ... (read from /proc/*/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier and alive(child)}
        found |= frontier
    return found


def lock_is_free(lock_dir: Path) -> bool:
    for path in lock_dir.glob("chroot-*.lock"):
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def nothing_left(root: Path, pids=()) -> bool:
    return not rooted_in(root) and not host_mounts_under(root) and not any(alive(p) for p in pids)


# --- fixtures -------------------------------------------------------------


def assert_nothing_leaked(tmp_path: Path) -> None:
    """Kill and unmount whatever a test left under ``tmp_path``, then fail if there was any."""
    leaked_procs = rooted_in(tmp_path)
    for pid in leaked_procs:
        os.kill(pid, signal.SIGKILL)
    leaked_mounts = host_mounts_under(tmp_path)
    for line in sorted(set(leaked_mounts), reverse=True):
        subprocess.run(["umount", "--lazy", line.split(": ", 1)[1]], check=False)
    assert not leaked_procs and not leaked_mounts, f"leaked: {leaked_procs} {leaked_mounts}"


@pytest.fixture
def root(tmp_path):
    """A busybox rootfs; teardown kills what is left inside and fails the test on leaks."""
    path = make_busybox_root(tmp_path / "root")
    (path / "etc" / "resolv.conf").write_text(CHROOT_RESOLV)
    yield path
    assert_nothing_leaked(tmp_path)


@pytest.fixture
def lock_dir(tmp_path):
    return tmp_path / "locks"


def session(root: Path, lock_dir: Path, **kwargs) -> ChrootTarget:
    lines = kwargs.pop("lines", None)
    echo = lines.append if lines is not None else (lambda line: None)
    return ChrootTarget(root, lock_dir=lock_dir, echo=echo, **kwargs)


# --- running inside -------------------------------------------------------


def test_commands_run_inside_the_chroot_with_the_handbook_mounts(root, lock_dir):
    lines: list[str] = []
    with session(root, lock_dir, lines=lines) as t:
        streamed = t.run(["sh", "-c", "echo one; echo two >&2"], stream=True)
        mounts = t.run(["cat", "/proc/self/mounts"]).stdout
        t.run(["sh", "-c", "echo inside > /tmp/marker"])
        dev_null = t.run(["ls", "/dev/null"]).stdout.strip()
        passwd = t.run(["cat", "/etc/passwd"]).stdout
    mounted = {line.split()[1]: line.split()[2] for line in mounts.splitlines()}
    assert mounted.get("/proc") == "proc"
    assert mounted.get("/sys") == "sysfs"
    assert "/dev" in mounted and "/run" in mounted
    assert dev_null == "/dev/null"
    assert (root / "tmp" / "marker").read_text() == "inside\n"
    assert passwd.startswith("root:x:0:0")
    assert lines == ["one", "two"] and streamed.stdout == "one\ntwo\n"


def test_cwd_is_a_path_inside_the_chroot(root, lock_dir):
    (root / "etc" / "portage").mkdir()
    with session(root, lock_dir) as t:
        assert t.run(["pwd"], cwd="/etc/portage").stdout.strip() == "/etc/portage"
        assert t.run(["pwd"]).stdout.strip() == "/"
        with pytest.raises(CommandError) as caught:
            t.run(["pwd"], cwd="/no/such/dir")
    assert caught.value.returncode == 2
    assert str(caught.value) == (f"chroot:{root}: pwd exited 2: "
                                 "sh: cd: line 0: can't cd to /no/such/dir: No such file or directory")


def test_no_mount_ever_reaches_the_host_table(root, lock_dir, tmp_path):
    src = tmp_path / "distfiles"
    src.mkdir()
    (src / "hello").write_text("from the host\n")
    with session(root, lock_dir, extra_binds=[(src, "/var/cache/distfiles")]) as t:
        inside = t.run(["cat", "/var/cache/distfiles/hello"]).stdout
        t.run(["touch", "/var/cache/distfiles/from-chroot"])
        during = host_mounts_under(tmp_path)
    assert inside == "from the host\n"
    assert (src / "from-chroot").exists()
    assert during == []
    assert host_mounts_under(tmp_path) == []
    assert list((root / "var" / "cache" / "distfiles").iterdir()) == []


def test_a_failing_command_raises_and_the_session_still_cleans_up(root, lock_dir):
    before = descendants(os.getpid())
    with pytest.raises(CommandError) as caught:
        with session(root, lock_dir) as t:
            holders = descendants(os.getpid()) - before
            t.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert caught.value.returncode == 3
    assert f"chroot:{root}" in str(caught.value) and "boom" in str(caught.value)
    assert holders, "no namespace holder was started"
    assert nothing_left(root, holders)
    assert lock_is_free(lock_dir)


def test_an_exception_inside_the_with_block_cleans_up(root, lock_dir):
    before = descendants(os.getpid())
    with pytest.raises(RuntimeError, match="step failed"):
        with session(root, lock_dir) as t:
            holders = descendants(os.getpid()) - before
            t.run(["true"])
            raise RuntimeError("step failed")
    assert holders
    assert nothing_left(root, holders)
    assert lock_is_free(lock_dir)
    assert (root / "etc" / "resolv.conf").read_text() == CHROOT_RESOLV
    with pytest.raises(OrchestratorError, match="outside its `with` block"):
        t.run(["true"])


# --- locking --------------------------------------------------------------


def test_a_second_session_on_the_same_chroot_is_refused(root, lock_dir, tmp_path):
    other = make_busybox_root(tmp_path / "other")
    with session(root, lock_dir) as first:
        with pytest.raises(LockedError, match=f"chroot {re.escape(str(root))} is already running"):
            with session(root, lock_dir):
                pass
        with session(other, lock_dir) as second:
            assert second.run(["echo", "ok"]).stdout == "ok\n"
        assert first.run(["echo", "still here"]).stdout == "still here\n"
    with session(root, lock_dir) as again:
        assert again.run(["true"]).ok


# --- leftover processes ---------------------------------------------------


def test_a_process_left_running_is_named_and_killed(root, lock_dir):
    lines: list[str] = []
    with session(root, lock_dir, lines=lines) as t:
        t.run(["sh", "-c", "sleep 299 </dev/null >/dev/null 2>&1 &"])
        started = rooted_in(root)
    assert list(started.values()) == ["sleep 299"], "the one process left inside the chroot"
    (pid,) = started
    assert [(p.pid, p.command, p.in_session) for p in t.leftover_processes] == [(pid, "sleep 299", True)]
    warning = "\n".join(lines)
    assert f"pid {pid} (sleep 299)" in warning
    assert not alive(pid)


def test_a_leftover_gets_sigterm_and_a_grace_period_before_sigkill(root, lock_dir):
    script = "trap 'echo terminated > /tmp/trapped; exit 0' TERM; sleep 296 & wait"
    with session(root, lock_dir) as t:
        t.run(["sh", "-c", f"sh -c {shlex.quote(script)} </dev/null >/dev/null 2>&1 &"])
        wait_until(lambda: sorted(rooted_in(root).values()) == ["sh -c " + script, "sleep 296"],
                   lambda: f"the trapping shell and its sleep inside the chroot: {rooted_in(root)}")
    assert sorted(p.command for p in t.leftover_processes) == ["sh -c " + shlex.quote(script), "sleep 296"]
    assert (root / "tmp" / "trapped").read_text() == "terminated\n"


def test_a_process_not_started_by_the_session_is_named_but_left_alone(root, lock_dir):
    """A manual ``chroot`` by someone else, run as a daemon of this test (daemons.running)."""
    def inside() -> bool:
        return list(rooted_in(root).values()) == ["/bin/sleep 298"]

    with running(["chroot", str(root), "/bin/sleep", "298"], what="a manual chroot", ready=inside) as stranger:
        assert list(rooted_in(root)) == [stranger.pid], "setpriv and chroot exec: one process, our child"
        lines: list[str] = []
        with session(root, lock_dir, lines=lines) as t:
            t.run(["true"])
        assert [(p.pid, p.in_session) for p in t.leftover_processes] == [(stranger.pid, False)]
        assert f"pid {stranger.pid} (/bin/sleep 298)" in "\n".join(lines)
        assert "left running" in "\n".join(lines)
        assert stranger.poll() is None
    assert not alive(stranger.pid) and group_members(stranger.pid) == []


def test_a_timed_out_command_is_killed_by_the_end_of_the_session(root, lock_dir):
    with session(root, lock_dir) as t:
        with pytest.raises(CommandError) as caught:
            t.run(["sleep", "30"], timeout=0.5)
    assert caught.value.returncode == 124
    assert str(caught.value) == f"chroot:{root}: sleep exited 124: timed out after 0.5 s"
    assert [p.command for p in t.leftover_processes] == ["sleep 30"]
    assert nothing_left(root)


# --- signals: a real child process runs the session -----------------------


SESSION_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from orchestrator.errors import Interrupted
    from orchestrator.run import ChrootTarget
    from orchestrator.signals import terminate_unwinds

    try:
        with terminate_unwinds(), ChrootTarget(Path(sys.argv[1]), lock_dir=Path(sys.argv[2])) as t:
            t.run(["sh", "-c", "sleep 297 </dev/null >/dev/null 2>&1 &"])
            print("ready", flush=True)
            while True:
                signal.pause()
    except Interrupted as exc:
        print(f"interrupted: {exc}", flush=True)
        sys.exit(130)
    """
)


@pytest.fixture
def child_session(root, lock_dir, tmp_path):
    """A Python child (run by daemons.running) that opens a session and waits; yield (it, its log, its helpers)."""
    script = tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    log = tmp_path / "session.log"

    def ready() -> bool:
        return log.exists() and log.read_text().splitlines()[:1] == ["ready"]

    helpers: set[int] = set()
    try:
        with running([sys.executable, str(script), str(root), str(lock_dir)], what="a chroot session in a child",
                     ready=ready, log=log) as child:
            helpers = descendants(child.pid)
            assert helpers and list(rooted_in(root).values()) == ["sleep 297"]
            yield child, log, helpers
    finally:
        for pid in filter(alive, helpers):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_unwinds_the_session(child_session, root, lock_dir, tmp_path):
    child, log, helpers = child_session
    assert host_mounts_under(tmp_path) == []
    assert not lock_is_free(lock_dir)
    child.send_signal(signal.SIGTERM)
    code = finish(child, "the session after SIGTERM")
    output = log.read_text()
    assert code == 130, output
    assert "interrupted: stopped by SIGTERM" in output
    assert re.search(r"pid \d+ \(sleep 297\)", output)
    wait_until(lambda: nothing_left(root, helpers),
               lambda: f"left after SIGTERM: {rooted_in(root)} {host_mounts_under(tmp_path)} {helpers}")
    assert lock_is_free(lock_dir)
    assert (root / "etc" / "resolv.conf").read_text() == CHROOT_RESOLV


def test_kill_9_leaves_no_holder_no_process_and_no_mount(child_session, root, lock_dir, tmp_path):
    child, _log, helpers = child_session
    child.kill()
    assert finish(child, "the session after kill -9") == -signal.SIGKILL
    wait_until(lambda: nothing_left(root, helpers),
               lambda: f"left after kill -9: {rooted_in(root)} {host_mounts_under(tmp_path)} {helpers}")
    assert lock_is_free(lock_dir)
    with session(root, lock_dir) as t:
        t.run(["true"])
    assert (root / "etc" / "resolv.conf").read_text() == CHROOT_RESOLV


# --- resolv.conf ----------------------------------------------------------


@pytest.mark.skipif(not HOST_RESOLV.exists(), reason="the host has no /etc/resolv.conf to copy")
@pytest.mark.parametrize("own", ["file", "symlink", "none"])
def test_resolv_conf_is_the_hosts_inside_and_the_chroots_own_after(root, lock_dir, own):
    target = root / "etc" / "resolv.conf"
    target.unlink()
    if own == "file":
        target.write_text(CHROOT_RESOLV)
    elif own == "symlink":
        target.symlink_to("/run/orchestrator-test-absent/resolv.conf")
    host_before = HOST_RESOLV.read_bytes()
    with session(root, lock_dir) as t:
        inside = t.run(["cat", "/etc/resolv.conf"]).stdout
        is_plain_file = target.is_file() and not target.is_symlink()
    assert inside.encode() == host_before
    assert is_plain_file
    assert HOST_RESOLV.read_bytes() == host_before
    assert not Path("/run/orchestrator-test-absent").exists()
    if own == "file":
        assert target.read_text() == CHROOT_RESOLV
    elif own == "symlink":
        assert os.readlink(target) == "/run/orchestrator-test-absent/resolv.conf"
    else:
        assert not os.path.lexists(target)
    assert sorted(p.name for p in (root / "etc").iterdir()) == sorted(
        ["group", "passwd"] + (["resolv.conf"] if own != "none" else []))


def test_resolv_conf_false_leaves_the_chroots_file_alone(root, lock_dir):
    with session(root, lock_dir, resolv_conf=False) as t:
        inside = t.run(["cat", "/etc/resolv.conf"]).stdout
    assert inside == CHROOT_RESOLV


# --- dry run and validation -----------------------------------------------


def test_dry_run_prints_the_plan_and_mounts_nothing(root, lock_dir, tmp_path):
    lines: list[str] = []
    before = descendants(os.getpid())
    with session(root, lock_dir, dry=True, lines=lines) as t:
        started = descendants(os.getpid()) - before
        assert t.run(["emerge", "--sync"]).ok
        probe = t.run(["cat", "/etc/resolv.conf"], mutates=False).stdout
    text = "\n".join(lines)
    assert f"mount --types proc /proc {root}/proc" in text
    assert f"mount --rbind /sys {root}/sys" in text and f"mount --bind /run {root}/run" in text
    assert "unshare --mount" in text and "cp --dereference /etc/resolv.conf" in text
    assert f"[dry-run] chroot:{root}: emerge --sync" in text
    assert started == set()
    assert host_mounts_under(tmp_path) == []
    assert probe == CHROOT_RESOLV
    assert not lock_dir.exists()


@pytest.mark.parametrize("case, why", [
    ("missing", "{} does not exist"),
    ("file", "{} is not a directory"),
    ("no-shell", "{} has no bin/sh: not an unpacked root filesystem (stage3)"),
    ("host-root", "{} is the host's /; refusing"),
    ("symlinked-proc", "{}: proc is a symlink; a mountpoint must be a directory"),
])
def test_a_bad_root_is_one_clear_line(tmp_path, lock_dir, case, why):
    bad = {
        "missing": tmp_path / "nowhere",
        "file": tmp_path / "a-file",
        "no-shell": tmp_path / "empty",
        "host-root": Path("/"),
        "symlinked-proc": tmp_path / "rootfs",
    }[case]
    if case == "file":
        bad.write_text("")
    elif case == "no-shell":
        bad.mkdir()
    elif case == "symlinked-proc":
        make_busybox_root(bad)
        (bad / "proc").rmdir()
        (bad / "proc").symlink_to("/proc")
    with pytest.raises(ConfigError) as caught:
        ChrootTarget(bad, lock_dir=lock_dir)
    assert str(caught.value) == "chroot root " + why.format(bad)
    assert host_mounts_under(tmp_path) == []
    assert not lock_dir.exists()


def test_an_extra_bind_outside_the_chroot_is_refused(root, lock_dir, tmp_path):
    with pytest.raises(ConfigError) as caught:
        ChrootTarget(root, lock_dir=lock_dir, extra_binds=[(tmp_path, "../escape")])
    assert str(caught.value) == f"chroot {root}: extra bind target ../escape is not a path inside the chroot"
    (root / "outside").symlink_to(tmp_path)
    with pytest.raises(ConfigError) as caught:
        ChrootTarget(root, lock_dir=lock_dir, extra_binds=[(tmp_path, "/outside/x")])
    assert str(caught.value) == f"chroot {root}: extra bind target /outside/x is not a path inside the chroot"
    assert host_mounts_under(tmp_path) == [] and not lock_dir.exists()
