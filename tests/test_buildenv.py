"""orchestrator.buildenv: the build session any job opens (binhost today, kernel next), in a real busybox
chroot (private namespaces, real mounts) and in a prefix directory.

A session is parametrised by its scripts and by the lines worth showing: here a "kernel" spec whose script
talks like ``make`` (``  CC  init/main.o``) and whose notable pattern is make's own, next to the binhost's
spec. One lock per root: a second session on the same chroot or prefix is refused, whatever its kind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from busybox_root import make_busybox_root
from orchestrator.binhost.system import BINHOST, build_system
from orchestrator.buildenv import INSIDE_DIR, BuildRoot, SessionSpec, open_session
from orchestrator.buildenv.session import stdin_command
from orchestrator.errors import EXIT_LOCKED
from test_chroot_target import assert_nothing_leaked, host_mounts_under

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mount namespaces need root"),
    pytest.mark.timeout(180),
]

MAKE_LIKE = """#!/bin/sh
# A stand-in for a kernel build: make's kind of output, and what the environment held.
echo "  CC      init/main.o"
echo "a line only the log keeps"
echo "  LD      vmlinux"
env | sort | sed 's/^/env: /'
echo "args: $*"
"""
KERNEL_NOTABLE = re.compile(r"^\s+(CC|LD|AR|INSTALL)\s|^make(\[\d+\])?: \*\*\*")


@pytest.fixture
def scripts(tmp_path) -> Path:
    source = tmp_path / "scripts"
    source.mkdir()
    (source / "kernel-make").write_text(MAKE_LIKE)
    (source / "kernel-make").chmod(0o755)
    return source


@pytest.fixture
def kernel(scripts) -> SessionSpec:
    return SessionSpec(name="kernel", scripts=("kernel-make",), notable=KERNEL_NOTABLE, source=scripts)


@pytest.fixture
def chroot(tmp_path):
    root = make_busybox_root(tmp_path / "root")
    for applet in ("sort", "sed"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    yield root
    assert_nothing_leaked(tmp_path)


def run_job(site, body, dry: bool = False) -> tuple[int, str]:
    return site.run("buildenv-test", body, dry=dry)


def test_a_session_installs_only_its_own_scripts_and_shows_only_its_notable_lines(site, chroot, kernel, capfd):
    logs = site.root / "logs"
    seen = {}

    def body(run):
        with open_session(run, kernel, BuildRoot("chroot", chroot, "kernel.root"), log_dir=logs, timeout=60,
                          env={"KERNEL_JOBS": "2"}) as session:
            seen["result"] = session.script("kernel-make", "olddefconfig", stream=True)
            seen["notable"] = list(session.log.lines)

    os.environ["ORCH_TEST_HOST_ONLY"] = "leak"
    try:
        code, output = run_job(site, body)
    finally:
        del os.environ["ORCH_TEST_HOST_ONLY"]
    assert code == 0, output
    assert sorted(os.listdir(chroot / INSIDE_DIR.relative_to("/"))) == ["kernel-make"]
    assert seen["notable"] == ["  CC      init/main.o", "  LD      vmlinux"]
    progress = capfd.readouterr().out
    assert "CC      init/main.o" in progress and "a line only the log keeps" not in progress + output
    log = (logs / "kernel-make.log").read_text()
    assert "a line only the log keeps" in log and "args: olddefconfig" in log
    env = dict(line[len("env: "):].split("=", 1) for line in log.splitlines() if line.startswith("env: "))
    assert env["KERNEL_JOBS"] == "2" and env["PATH"].startswith("/usr/local/sbin")
    assert "ORCH_TEST_HOST_ONLY" not in env, "env -i: nothing of the build box's environment"
    assert host_mounts_under(chroot) == []


def test_a_script_the_spec_does_not_name_is_refused(site, chroot, kernel):
    def body(run):
        with open_session(run, kernel, BuildRoot("chroot", chroot, "kernel.root"), log_dir=site.root / "logs",
                          timeout=60) as session:
            session.script("binhost-world")

    code, output = run_job(site, body)
    assert code == 1
    assert "error: internal error: ValueError: binhost-world is not one of the kernel session's scripts" in output


def test_binhost_and_kernel_sessions_on_the_same_chroot_are_serialised_by_one_lock(site, chroot, kernel):
    site.set("binhost", {"mode": "chroot", "root": str(chroot)})
    second = {}

    def body(run):
        with build_system(run, run.section("binhost")):
            second["code"], second["output"] = run_job(site, lambda inner: _open_kernel(inner, kernel, chroot))

    code, output = site.run("binhost-lock-test", body)
    assert code == 0, output
    assert second["code"] == EXIT_LOCKED, second["output"]
    assert re.search(rf"error: chroot {re.escape(str(chroot))} is already running \(pid {os.getpid()} ",
                     second["output"]), second["output"]
    assert sorted(os.listdir(chroot / INSIDE_DIR.relative_to("/"))) == sorted(BINHOST.scripts), \
        "the refused session installed nothing"


def _open_kernel(run, kernel, root):
    with open_session(run, kernel, BuildRoot("chroot", root, "kernel.root"), log_dir=root.parent / "logs",
                      timeout=60):
        pass


def test_two_sessions_on_the_same_prefix_are_serialised_too(site, tmp_path, kernel):
    prefix = tmp_path / "prefix"
    (prefix / "etc" / "portage").mkdir(parents=True)
    where = BuildRoot("prefix", prefix, "kernel.root")
    second = {}

    def body(run):
        with open_session(run, kernel, where, log_dir=tmp_path / "logs", timeout=60) as session:
            assert session.script("kernel-make", "x").stdout.count("PORTAGE_OVERRIDE_EPREFIX=" + str(prefix)) == 1
            second["code"], second["output"] = run_job(site, lambda inner: _open_prefix(inner, BINHOST, where))

    code, output = site.run("prefix-lock-test", body)
    assert code == 0, output
    assert second["code"] == EXIT_LOCKED
    assert f"error: build session in prefix {prefix} is already running (pid {os.getpid()} " in second["output"]


def _open_prefix(run, spec, where):
    with open_session(run, spec, where, log_dir=where.root.parent / "logs", timeout=60):
        pass


def test_under_dry_a_probe_runs_the_checkouts_copy_on_stdin_with_its_own_interpreter(site, chroot, kernel, capfd):
    seen = {}

    def body(run):
        with open_session(run, kernel, BuildRoot("chroot", chroot, "kernel.root"), log_dir=site.root / "logs",
                          timeout=60) as session:
            seen["out"] = session.script("kernel-make", "probe-arg", mutates=False).stdout

    code, output = run_job(site, body, dry=True)
    assert code == 0, output
    assert "args: probe-arg" in seen["out"], "sh -s -- passes the script's arguments on"
    assert "[dry-run] would install kernel-make" in capfd.readouterr().out
    assert not (chroot / INSIDE_DIR.relative_to("/")).exists(), "nothing installed under --dry"


def test_stdin_command_follows_the_shebang():
    assert stdin_command("#!/usr/bin/env python3\nprint()\n") == ["python3", "-"]
    assert stdin_command("#!/bin/sh\necho\n") == ["/bin/sh", "-s", "--"]
    assert stdin_command("#!/bin/bash -e\necho\n") == ["/bin/bash", "-e", "-s", "--"]
    assert stdin_command("echo no shebang\n") == ["/bin/sh", "-s", "--"]
