"""`inv binhost` in chroot mode, end to end, against a real busybox chroot with a FAKE Portage.

A real Gentoo stage3 and Portage cannot live in a busybox root, so the fixture
puts a fake Portage into a real busybox chroot: ``/usr/bin/python3`` is a shell
script that answers our Python probes (``binhost-info``, ``binhost-stale``,
``binhost-binpkgs``) with fixed JSON, and ``/usr/bin/emerge`` (also ``emaint``, ``egencache``,
``quickpkg``) is a shell script that logs its argv, its environment and the
mounts it sees to ``/tmp/emerge.log`` inside the chroot, then behaves as
``/etc/fake-emerge-mode`` says: ``ok``, ``fail``, ``sleep`` (a long build, for
signals) or ``daemon`` (leaves a background process behind).

Everything else is real: the job (``orchestrator.binhost.jobs.build`` through
``orchestrator.job.execute`` or ``inv``), ``ChrootTarget`` with its private
mount and PID namespaces, its lock and leftover handling, and the scripts from
``chroot/``, installed into the chroot and run there with ``env -i``. Runs as
root; every test checks the host's mount table and the processes rooted in the
chroot itself, and the fixture's teardown fails the test on a leak.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from busybox_root import make_busybox_root
from children import finish, wait_until
from daemons import running
from orchestrator.binhost.jobs import build
from orchestrator.binhost.system import BINHOST
from orchestrator.buildenv import INSIDE_DIR
from test_chroot_target import alive, assert_nothing_leaked, descendants, host_mounts_under, lock_is_free, rooted_in

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mount namespaces need root"),
    pytest.mark.timeout(180),  # above children.HANG_S: a hang fails in a wait that names it
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Applets our chroot/ scripts and the fakes below use, beyond busybox_root.APPLETS.
EXTRA_APPLETS = ("dirname", "basename", "nproc", "mktemp", "wc", "xargs", "printf", "sort", "sed", "tr")
EMERGE_LOG = "tmp/emerge.log"
MODE_FILE = "etc/fake-emerge-mode"
SLEEPING = "tmp/fake-emerge-sleeping"  # written by the fake emerge (mode sleep) just before it sleeps
LEAKED_ENV = {"FEATURES": "evil", "PORTAGE_BINHOST": "evil", "ORCH_TEST_HOST_ONLY": "evil"}

FAKE_PYTHON3 = r"""#!/bin/sh
# Fake python3: answers our Portage probes with fixed JSON (binhost-binpkgs: /etc/fake-binpkgs.json).
# Under --dry a probe's script comes on stdin (python3 -): its usage line names it.
script="$1"
if [ "$script" = "-" ]; then
    script=$(grep -o 'gentoo-ec2-orchestrator/binhost-[a-z]*' | head -n 1)
fi
case "$script" in
    *binhost-info)
        echo '{"eroot": "/", "pkgdir": "/var/cache/binpkgs", "binpkg_format": "gpkg", "repos": {"gentoo": "/var/db/repos/gentoo"}}' ;;
    *binhost-stale)
        echo '{"installed": 1, "stale": []}' ;;
    *binhost-binpkgs)
        shift
        echo "$*" > /tmp/binpkgs-args
        cat /etc/fake-binpkgs.json ;;
    *)
        echo "fake python3: unexpected $*" >&2
        exit 1 ;;
esac
"""

FAKE_PORTAGE_TOOL = r"""#!/bin/sh
# Fake emerge/emaint/egencache/quickpkg: log what it was given and saw, then act as the mode file says.
log=/tmp/emerge.log
mode=$(cat /etc/fake-emerge-mode 2>/dev/null || echo ok)
{
    echo "=== $(basename "$0") pid $$ mode $mode"
    printf 'argv:'
    printf ' %s' "$@"
    echo
    env | sort | sed 's/^/env: /'
    if [ -e /proc/self ]; then echo "proc-self: yes"; else echo "proc-self: no"; fi
    echo "pid-ns: $(readlink /proc/self/ns/pid)"
    echo "init: $(cat /proc/1/comm)"
    mount 2>&1 | sed 's/^/mount: /'
    echo "=== end"
} >> "$log"
case "$mode" in
    fail)
        echo "!!! fake $(basename "$0"): the build failed (mode fail)"
        exit 1 ;;
    sleep)
        echo ">>> Emerging (1 of 1) app-misc/slow-1.0::gentoo"
        touch /tmp/fake-emerge-sleeping
        exec sleep 600 ;;
    daemon)
        sleep 1000 </dev/null >/dev/null 2>&1 &
        echo "started a daemon" ;;
esac
case " $* " in
    *" --sync "*)
        echo ">>> Syncing repository 'gentoo' into '/var/db/repos/gentoo'..."
        echo "synced" > /var/db/repos/gentoo/profiles/synced ;;
    *" @world "*)
        echo ">>> Emerging (1 of 1) app-misc/fake-1.0::gentoo"
        echo "quiet line that only goes to the log" ;;
esac
exit 0
"""


# --- the fake Portage in a real busybox chroot ----------------------------


def make_fake_gentoo(root: Path) -> Path:
    make_busybox_root(root)
    for applet in EXTRA_APPLETS:
        if not os.path.lexists(root / "bin" / applet):
            (root / "bin" / applet).symlink_to("busybox")
    usr_bin = root / "usr" / "bin"
    usr_bin.mkdir(parents=True)
    (usr_bin / "env").symlink_to("/bin/busybox")
    for name, text in (("python3", FAKE_PYTHON3), ("emerge", FAKE_PORTAGE_TOOL)):
        (usr_bin / name).write_text(text)
        (usr_bin / name).chmod(0o755)
    for name in ("emaint", "egencache", "quickpkg"):
        (usr_bin / name).symlink_to("emerge")
    repo = root / "var" / "db" / "repos" / "gentoo"
    (repo / "metadata").mkdir(parents=True)
    (repo / "profiles").mkdir()
    (repo / "profiles" / "repo_name").write_text("gentoo\n")
    (repo / "metadata" / "timestamp.chk").write_text("Mon, 01 Jan 2024 00:00:00 +0000\n")
    pkgdir = root / "var" / "cache" / "binpkgs"
    pkgdir.mkdir(parents=True)
    (pkgdir / "Packages").write_text("ARCH: amd64\nVERSION: 0\n\n")
    (root / "etc" / "fake-binpkgs.json").write_text('{"pkgdir": "/var/cache/binpkgs", "binpkgs": 0, "slots": []}\n')
    (root / MODE_FILE).write_text("ok\n")
    (root / EMERGE_LOG).write_text("")
    return root


@pytest.fixture
def gentoo(tmp_path):
    """The fake Gentoo chroot; teardown kills what is left inside and fails the test on leaks."""
    root = make_fake_gentoo(tmp_path / "gentoo")
    yield root
    assert_nothing_leaked(tmp_path)


@pytest.fixture
def binhost_site(site, gentoo):
    site.set("binhost", {"mode": "chroot", "root": str(gentoo)})
    return site


def set_mode(root: Path, mode: str) -> None:
    (root / MODE_FILE).write_text(mode + "\n")


def calls(root: Path) -> list[dict]:
    """The fake tools' invocations, in order: {"tool", "pid", "argv", "env", "proc_self", "pid_ns", "init",
    "mounts"}."""
    found = []
    current = None
    for line in (root / EMERGE_LOG).read_text().splitlines():
        if line.startswith("=== end"):
            found.append(current)
            current = None
        elif line.startswith("=== "):
            words = line.split()  # === emerge pid 12 mode ok
            current = {"tool": words[1], "pid": int(words[3]), "argv": [], "env": {}, "proc_self": None,
                       "mounts": {}}
        elif current is None:
            continue
        elif line.startswith("argv:"):
            current["argv"] = line[len("argv:"):].split()
        elif line.startswith("env: "):
            key, _, value = line[len("env: "):].partition("=")
            current["env"][key] = value
        elif line.startswith("proc-self: "):
            current["proc_self"] = line.split(": ", 1)[1] == "yes"
        elif line.startswith(("pid-ns: ", "init: ")):
            key, _, value = line.partition(": ")
            current[key.replace("-", "_")] = value
        elif line.startswith("mount: "):
            fields = line[len("mount: "):].split()
            if len(fields) >= 5 and fields[1] == "on":  # busybox: "proc on /proc type proc (rw,...)"
                current["mounts"][fields[2]] = fields[4]
    return found


def lock_dir(site) -> Path:
    return site.root / "state" / "locks"


def progress_text(capfd) -> str:
    """Progress lines (stdout) and warnings (stderr) of an in-process run."""
    captured = capfd.readouterr()
    return captured.out + captured.err


def nothing_left(root: Path) -> bool:
    return not rooted_in(root) and not host_mounts_under(root)


def installed_scripts(root: Path) -> Path:
    return root / "usr" / "local" / "libexec" / "gentoo-ec2-orchestrator"


def error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 1, output
    return errors[0].strip()


# --- a real job in a child process (signals, a second holder) -------------


@contextmanager
def inv_child(site, tmp_path: Path, task: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``inv -f site.yaml <task>`` from the repository root, as cron or Jenkins runs it, run by
    ``daemons.running`` until the fake emerge (mode sleep) sleeps inside the chroot; yields it and its log."""
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(site.config))
    root = Path(site.config["binhost"]["root"])
    log = tmp_path / f"inv-{task}.log"
    with running([sys.executable, "-m", "invoke", "-f", str(config), task], what=f"inv {task}",
                 ready=(root / SLEEPING).exists, log=log, cwd=REPO_ROOT) as child:
        yield child, log


def pid_namespace(pid: int) -> tuple[str, list[int]]:
    """The PID namespace of ``pid`` and its pid in each namespace from ours inward (NSpid)."""
    status = Path(f"/proc/{pid}/status").read_text()
    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    return os.readlink(f"/proc/{pid}/ns/pid"), [int(n) for n in nspid]


def in_pid_namespace(namespace: str) -> list[int]:
    """Live processes in that PID namespace (by its /proc/<pid>/ns/pid link, not by any name)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == namespace and alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


# --- 1. a full run --------------------------------------------------------


def test_a_full_run_builds_inside_the_chroot_with_a_clean_environment(binhost_site, gentoo, monkeypatch, capfd):
    for key, value in LEAKED_ENV.items():
        monkeypatch.setenv(key, value)
    code, out = binhost_site.run("binhost", lambda run: build(run))
    err = progress_text(capfd)
    assert code == 0, out + err

    seen = calls(gentoo)
    assert [c["tool"] for c in seen] == ["emerge", "emerge", "egencache"], seen
    sync, world, egencache = seen
    assert sync["argv"] == ["--sync", "--color=n"]
    assert world["argv"][-1] == "@world"
    for option in ("--update", "--deep", "--newuse", "--with-bdeps=y", "--buildpkg", "--ask=n", "--keep-going=y"):
        assert option in world["argv"], world["argv"]
    assert egencache["argv"][:2] == ["--update", "--repo=gentoo"]
    ours = os.readlink("/proc/self/ns/pid")
    (session_ns,) = {call["pid_ns"] for call in seen}  # one session for the whole run
    assert session_ns.startswith("pid:[") and session_ns != ours, "not in a PID namespace of its own"
    for call in seen:
        # /proc is mounted inside the chroot, in the session's own PID namespace, whose init is its holder.
        assert call["proc_self"] is True and call["init"] == "sleep"
        assert call["mounts"].get("/proc") == "proc" and call["mounts"].get("/sys") == "sysfs"
        assert "/dev" in call["mounts"] and "/run" in call["mounts"]
        env = call["env"]
        for key in LEAKED_ENV:
            assert key not in env, f"{key} leaked into the chroot: {env}"
        assert set(env) - {"PWD", "SHLVL", "_"} == {"PATH", "HOME", "TERM", "LANG", "NOCOLOR", "QUICKPKG_JOBS"}
        assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    assert "  sync: updated gentoo" in out
    assert "  world: built 1: app-misc/fake-1.0" in out
    assert "  package: nothing to do: all 1 installed packages" in out
    assert "  publish: published gentoo" in out
    # Notable lines reach the progress stream; the rest only the stage's log.
    assert ">>> Emerging (1 of 1) app-misc/fake-1.0::gentoo" in err
    assert "quiet line that only goes to the log" not in out + err
    world_log = binhost_site.root / "state" / "binhost" / "logs" / "binhost-world.log"
    assert "quiet line that only goes to the log" in world_log.read_text()

    inside = installed_scripts(gentoo)
    shipped = sorted(name for name in os.listdir(REPO_ROOT / "chroot") if name.startswith("binhost-"))
    assert sorted(os.listdir(inside)) == shipped == sorted(BINHOST.scripts)
    for name in shipped:
        assert (inside / name).read_bytes() == (REPO_ROOT / "chroot" / name).read_bytes(), name
        assert os.access(inside / name, os.X_OK), name

    assert host_mounts_under(gentoo) == []
    assert rooted_in(gentoo) == {}
    assert in_pid_namespace(session_ns) == [], "the session's PID namespace ended with it"
    assert lock_is_free(lock_dir(binhost_site))
    assert list(lock_dir(binhost_site).glob("chroot-*.lock")), "no chroot lock was taken"
    assert not os.path.lexists(gentoo / "etc" / "resolv.conf")  # the host's copy is gone again


# --- 2. a failing step ----------------------------------------------------


def test_a_failing_emerge_is_one_error_line_with_the_log_and_the_next_run_works(binhost_site, gentoo, capfd):
    set_mode(gentoo, "fail")
    code, out = binhost_site.run("binhost-world", lambda run: build(run, ["world"]))
    assert code == 1, out
    log = binhost_site.root / "state" / "binhost" / "logs" / "binhost-world.log"
    error = error_line(out)
    assert "binhost-world" in error and str(log) in error, error
    assert "binhost-world exited 1" in error and "the build failed (mode fail)" in error, error
    assert "FAILED" in out.splitlines()[0]
    text = log.read_text()
    assert text.startswith("$ /usr/bin/env -i ") and str(INSIDE_DIR / "binhost-world") in text.splitlines()[0]
    assert "!!! fake emerge: the build failed (mode fail)" in text
    assert [c["tool"] for c in calls(gentoo)] == ["emerge"]
    assert host_mounts_under(gentoo) == [] and rooted_in(gentoo) == {}
    assert lock_is_free(lock_dir(binhost_site))

    set_mode(gentoo, "ok")
    capfd.readouterr()
    code, out = binhost_site.run("binhost-world", lambda run: build(run, ["world"]))
    assert code == 0, out + progress_text(capfd)
    assert "  world: built 1: app-misc/fake-1.0" in out
    assert len(calls(gentoo)) == 2
    assert nothing_left(gentoo) and lock_is_free(lock_dir(binhost_site))


# --- 3. a leftover process ------------------------------------------------


def test_a_process_left_behind_by_emerge_is_named_and_ended(binhost_site, gentoo, capfd):
    set_mode(gentoo, "daemon")
    code, out = binhost_site.run("binhost-world", lambda run: build(run, ["world"]))
    text = out + progress_text(capfd)
    assert code == 0, text
    assert [c["tool"] for c in calls(gentoo)] == ["emerge"]
    found = re.search(r"still running at the end of the session: .*pid (\d+) \(sleep 1000\)", text)
    assert found, text
    pid = int(found.group(1))
    assert re.search(rf"terminating [\d, ]*\b{pid}\b", text), text
    assert not alive(pid)
    wait_until(lambda: rooted_in(gentoo) == {}, lambda: f"still inside the chroot: {rooted_in(gentoo)}")
    assert host_mounts_under(gentoo) == []
    assert lock_is_free(lock_dir(binhost_site))


# --- 4. SIGTERM during a build --------------------------------------------


def test_sigterm_during_world_ends_the_build_and_cleans_up(binhost_site, gentoo, tmp_path):
    set_mode(gentoo, "sleep")
    ours = os.readlink("/proc/self/ns/pid")
    with inv_child(binhost_site, tmp_path, "binhost.world") as (child, log):
        assert not lock_is_free(lock_dir(binhost_site))
        assert host_mounts_under(gentoo) == []  # the session's mounts live in its own namespace
        namespaces = {pid: pid_namespace(pid) for pid in rooted_in(gentoo)}
        assert namespaces, "the build runs inside the chroot"
        (session_ns,) = {namespace for namespace, _ in namespaces.values()}
        assert session_ns != ours and all(len(nspid) == 2 for _, nspid in namespaces.values()), namespaces
        child.send_signal(signal.SIGTERM)
        code = finish(child, "inv binhost.world after SIGTERM")
    output = log.read_text()
    assert code == 130, output
    assert "stopped by SIGTERM" in output
    wait_until(lambda: nothing_left(gentoo), lambda: f"left: {rooted_in(gentoo)} {host_mounts_under(gentoo)}")
    assert in_pid_namespace(session_ns) == []
    assert lock_is_free(lock_dir(binhost_site))


# --- 5. a second run on the same chroot -----------------------------------


def test_a_second_run_on_the_same_chroot_is_refused(binhost_site, gentoo, tmp_path):
    set_mode(gentoo, "sleep")
    with inv_child(binhost_site, tmp_path, "binhost.world") as (child, _log):
        before = set(rooted_in(gentoo))
        set_mode(gentoo, "fail")  # were the second run let in, its emerge fails at once instead of hanging
        # Another job (its own job lock is free): the chroot's lock must refuse it.
        code, out = binhost_site.run("binhost-sync", lambda run: build(run, ["sync"]))
        assert code == 3, out
        error = error_line(out)
        assert f"chroot {gentoo} is already running (pid {child.pid} since" in error, error
        assert "lock file" in error and "chroot-" in error
        # The refused run touched nothing of the running one.
        assert set(rooted_in(gentoo)) == before
        assert [c["tool"] for c in calls(gentoo)] == ["emerge"]
        assert host_mounts_under(gentoo) == []
        assert child.poll() is None
    wait_until(lambda: nothing_left(gentoo), lambda: f"left: {rooted_in(gentoo)} {host_mounts_under(gentoo)}")
    assert lock_is_free(lock_dir(binhost_site))


# --- 6. bad input and --dry -----------------------------------------------


def test_a_root_that_does_not_exist_is_one_line_naming_binhost_root(site, tmp_path):
    missing = tmp_path / "no-such-chroot"
    site.set("binhost", {"mode": "chroot", "root": str(missing)})
    code, out = site.run("binhost", lambda run: build(run))
    assert code == 2, out
    error = error_line(out)
    assert "binhost.root" in error and str(missing) in error
    assert not missing.exists()
    assert host_mounts_under(tmp_path) == []


def test_a_root_without_a_shell_is_refused_before_anything_is_written(site, tmp_path):
    empty = tmp_path / "empty-chroot"
    (empty / "etc").mkdir(parents=True)
    site.set("binhost", {"mode": "chroot", "root": str(empty)})
    code, out = site.run("binhost", lambda run: build(run))
    assert code == 2, out
    error = error_line(out)
    assert str(empty) in error and "bin/sh" in error
    assert sorted(p.name for p in empty.iterdir()) == ["etc"]  # no mountpoints, no scripts
    assert host_mounts_under(tmp_path) == []
    assert lock_is_free(site.root / "state" / "locks")


def dry_run_checks(root: Path, code: int, out: str) -> None:
    assert code == 0, out
    assert "binhost: OK in " in out and "(dry run)" in out
    assert f"[dry-run] chroot:{root}: " in out
    assert f"mount --types proc /proc {root}/proc" in out
    sync_line = [line for line in out.splitlines() if "[dry-run]" in line and "binhost-sync" in line]
    world_line = [line for line in out.splitlines() if "[dry-run]" in line and "binhost-world" in line]
    assert sync_line and world_line, out
    assert "--keep-going=y" in world_line[0] and "env -i" in world_line[0]
    assert "  world: would update @world with --buildpkg" in out
    assert (root / EMERGE_LOG).read_text() == ""  # the fake emerge never ran
    assert host_mounts_under(root) == [] and rooted_in(root) == {}


def test_dry_run_after_a_real_run_mounts_nothing_and_runs_no_emerge(binhost_site, gentoo):
    code, out = binhost_site.run("binhost", lambda run: build(run))
    assert code == 0, out
    (gentoo / EMERGE_LOG).write_text("")
    before = descendants(os.getpid())
    code, out = binhost_site.run("binhost", lambda run: build(run), dry=True)
    dry_run_checks(gentoo, code, out)
    assert descendants(os.getpid()) == before
    assert lock_is_free(lock_dir(binhost_site))


def test_dry_run_on_a_fresh_chroot_mounts_nothing_and_runs_no_emerge(binhost_site, gentoo):
    code, out = binhost_site.run("binhost", lambda run: build(run), dry=True)
    try:
        dry_run_checks(gentoo, code, out)
    finally:
        assert not installed_scripts(gentoo).exists()  # dry: nothing written into the chroot
        assert host_mounts_under(gentoo) == [] and rooted_in(gentoo) == {}


# --- 7. prune in the chroot ------------------------------------------------


def test_prune_removes_what_the_chroots_portage_names_under_the_root_and_reindexes_inside(binhost_site, gentoo):
    """Paths come from inside (relative to the chroot's PKGDIR) and are removed on the build box under root."""
    old = gentoo / "var/cache/binpkgs/app-misc/old/old-1-1.gpkg.tar"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 4096)
    (gentoo / "etc/fake-binpkgs.json").write_text(json.dumps({"pkgdir": "/var/cache/binpkgs", "binpkgs": 1, "slots": [
        {"slot": "app-misc/old:0", "installed": None, "builds": [
            {"path": "app-misc/old/old-1-1.gpkg.tar", "cpv": "app-misc/old-1", "build_time": 1, "state": "-",
             "in_tree": False}]}]}))

    code, out = binhost_site.run("binhost-prune", lambda run: build(run, ["prune"]))
    assert code == 0, out
    assert "prune: removed app-misc/old/old-1-1.gpkg.tar (4096 bytes, no ebuild left, not installed)" in out
    assert "  prune: removed 1 of 1 binary packages, 4096 bytes (4.0 KiB): app-misc/old/old-1-1.gpkg.tar; " \
           "Packages lists 0" in out
    assert not (gentoo / "var/cache/binpkgs/app-misc").exists()
    assert (gentoo / "tmp/binpkgs-args").read_text() == "--json --repo=gentoo\n"
    (emaint,) = calls(gentoo)
    assert emaint["tool"] == "emaint" and emaint["argv"] == ["binhost", "--fix"] and emaint["proc_self"] is True
    assert host_mounts_under(gentoo) == [] and rooted_in(gentoo) == {}
