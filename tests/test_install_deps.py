"""scripts/install-deps waits for a held apt/dpkg lock, saying so, instead of failing at once.

apt-get and the venv's python are stand-ins here (no packages are installed by the suite); the
lock is a real fcntl lock, as apt takes it, on a scratch file named by APT_LOCK_FILES.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLDER = ("import fcntl, sys\n"
          "fh = open(sys.argv[1], 'w')\n"
          "fcntl.lockf(fh, fcntl.LOCK_EX)\n"
          "print('held', flush=True)\n"
          "sys.stdin.read()\n")


def scratch_checkout(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A copy of the script with stand-in apt-get and .venv/bin/python that log their argv."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install-deps", repo / "scripts" / "install-deps")
    log = tmp_path / "calls.log"
    for stub in (tmp_path / "bin" / "apt-get", repo / ".venv" / "bin" / "python"):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n')
        stub.chmod(0o755)
    lock = tmp_path / "lock-frontend"
    lock.touch()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "APT_LOCK_FILES": str(lock)}
    return repo, log, env


def hold(lock: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_held_lock_is_waited_for_then_the_install_goes_on(tmp_path):
    repo, log, env = scratch_checkout(tmp_path)
    lock = Path(env["APT_LOCK_FILES"])
    holder = hold(lock)
    script = subprocess.Popen(["sh", str(repo / "scripts" / "install-deps")], env=env, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    try:
        said = script.stderr.readline()
        assert not log.exists(), "nothing ran while the lock was held"
    finally:
        holder.stdin.close()  # the holder exits, and its lock goes with it
        holder.wait()
    assert script.wait(timeout=120) == 0, script.stderr.read()
    assert re.fullmatch(rf"install-deps: waiting for {re.escape(str(lock))} \(held by pid {holder.pid}, python[\w.]*\) "
                        r"\(0 s of 600 s\)\n", said)
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get -o DPkg::Lock::Timeout=600 update -qq"
    assert calls[1].startswith("apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends tar ")
    assert calls[2:] == ["python -m pip install -q --upgrade pip", "python -m pip install -q -e ."]


def test_a_lock_held_past_the_limit_fails_with_one_line_naming_it(tmp_path):
    repo, log, env = scratch_checkout(tmp_path)
    lock = Path(env["APT_LOCK_FILES"])
    holder = hold(lock)
    try:
        done = subprocess.run(["sh", str(repo / "scripts" / "install-deps")], env={**env, "APT_LOCK_WAIT": "0"},
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.stdin.close()
        holder.wait()
    assert done.returncode == 1
    assert re.fullmatch(rf"install-deps: {re.escape(str(lock))} \(held by pid {holder.pid}, python[\w.]*\) is still "
                        r"held after 0 s; giving up\n", done.stderr)
    assert not log.exists(), "apt-get never ran"


def test_no_lock_held_means_no_waiting(tmp_path):
    repo, log, env = scratch_checkout(tmp_path)
    done = subprocess.run(["sh", str(repo / "scripts" / "install-deps"), "--test"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    assert log.read_text().splitlines()[-1] == "python -m pip install -q -e .[test]"
