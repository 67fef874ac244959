"""Progress on a terminal vs in cron, the job lock, and local commands under --dry."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from children import HANG_S, Finished, finished, wait_gone
from daemons import group_members, running, stop_group
from test_config import INV, ROOT, write_site

from orchestrator.errors import CommandError, LockedError
from orchestrator.lock import held_lock
from orchestrator.progress import Progress
from orchestrator.run import LocalTarget


def inv(args: list[str], cwd: Path) -> Finished:
    """``inv -r <repo> ARGS`` from ``cwd`` with no INVOKE_* variable, run to its end as its own process group."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    runs = len(list(cwd.glob("inv-*")))
    return finished([str(INV), "-r", str(ROOT), *args], what=f"inv {' '.join(args)}", out_dir=cwd / f"inv-{runs}",
                    env=clean, cwd=cwd)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = Progress("auto", stream=stream)
    progress.say("etc: tar /etc")
    with progress.counter("etc") as counter:
        counter.update(10)
    assert progress.mode == "plain"
    assert re.fullmatch(r"\d\d:\d\d:\d\d etc: tar /etc\n", stream.getvalue())


def test_bars_on_a_terminal():
    stream = FakeTty()
    progress = Progress("auto", stream=stream)
    with progress.counter("etc", total=1024) as counter:
        counter.update(512)
        progress.say("between bars")
    assert progress.mode == "bar"
    assert "50%" in stream.getvalue() and "between bars" in stream.getvalue()


HOLDER = """
import signal, sys
from pathlib import Path
from orchestrator.lock import held_lock
with held_lock(Path(sys.argv[1]), "x"):
    print("held", flush=True)
    while True:
        signal.pause()
"""


def test_lock_refuses_a_second_holder_and_is_freed_when_the_holder_dies(tmp_path):
    lock = tmp_path / "job.lock"
    with held_lock(lock, "inv backup"):
        with pytest.raises(LockedError, match=r"inv backup is already running \(pid \d+ since"):
            with held_lock(lock, "inv backup"):
                pass
    log = tmp_path / "holder.log"
    with running([sys.executable, "-c", HOLDER, str(lock)], what="a lock holder", log=log, cwd=ROOT,
                 ready=lambda: log.exists() and log.read_text() == "held\n") as holder:
        with pytest.raises(LockedError) as caught:
            with held_lock(lock, "x"):
                pass
        assert re.fullmatch(rf"x is already running \(pid {holder.pid} since [^)]+\); lock file {re.escape(str(lock))}",
                            str(caught.value)), str(caught.value)
        holder.kill()
        assert holder.wait() == -signal.SIGKILL
    assert group_members(holder.pid) == []
    with held_lock(lock, "x"):
        pass


def test_local_target_runs_argv_verbatim_and_reports_failures():
    target = LocalTarget()
    tricky = "a b; $(id) `id` 'q'"
    assert target.run(["printf", "%s", tricky]).stdout == tricky
    with pytest.raises(CommandError) as failed:
        target.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert (failed.value.returncode, str(failed.value)) == (3, "local: sh exited 3: boom")
    assert target.run(["false"], check=False).returncode == 1
    with pytest.raises(CommandError) as missing:
        target.run(["definitely-not-a-command-xyz"])
    assert (missing.value.returncode, str(missing.value)) == (
        127, "local: definitely-not-a-command-xyz exited 127: definitely-not-a-command-xyz: command not found")


def test_dry_local_target_prints_and_runs_nothing(tmp_path):
    lines = []
    target = LocalTarget(dry=True, echo=lines.append)
    victim = tmp_path / "keep me"
    victim.write_text("x")
    target.run(["rm", "-f", victim])
    assert victim.exists()
    assert lines == [f"[dry-run] local: rm -f '{victim}'"]
    assert target.run(["echo", "probe"], mutates=False).stdout == "probe\n", "read-only probes still run"


@pytest.mark.timeout(60)  # a command that never ends: only a kill ends this test
def test_a_streamed_command_is_killed_at_its_timeout():
    lines = []
    target = LocalTarget(echo=lines.append)
    with pytest.raises(CommandError) as caught:
        target.run(["sh", "-c", "echo $$; exec sleep infinity"], stream=True, timeout=1)  # exec: sleep keeps the pid
    assert (caught.value.returncode, str(caught.value)) == (124, "local: sh exited 124: timed out after 1 s")
    (pid,) = map(int, lines)
    assert not alive(pid), "the command was killed at its timeout"


@pytest.mark.timeout(60)  # the background child never ends: waiting for its output would hang
def test_a_streamed_command_returns_although_a_background_child_holds_its_output():
    lines = []
    try:
        result = LocalTarget(echo=lines.append).run(["sh", "-c", 'sleep infinity & echo "bg $!"; echo done'],
                                                    stream=True)
        background = int(lines[0].split()[1])
        assert result.ok and lines == [f"bg {background}", "done"]
        assert alive(background), "returned while the background child still holds the pipe"
    finally:
        for line in lines[:1]:
            os.kill(int(line.split()[1]), signal.SIGKILL)
            wait_gone(int(line.split()[1]), "the background sleep")


@pytest.mark.timeout(60)  # a command that never ends: only a kill ends this test
def test_an_interrupted_streamed_command_is_killed_not_waited_for():
    """Ctrl-C or SIGTERM (raised as an exception while output is read) must not wait for the build."""
    pids = []

    def echo(line):
        pids.append(int(line)) if not pids else None
        if line == "go":
            raise KeyboardInterrupt

    target = LocalTarget(echo=echo)
    with pytest.raises(KeyboardInterrupt):
        target.run(["sh", "-c", "echo $$; echo go; exec sleep infinity"], stream=True)  # exec: sleep keeps the pid
    assert not alive(pids[0]), "the child was killed"


# where each line goes: cron runs `inv backup >/dev/null` and mails whatever reaches stderr ------------------
def test_a_clean_run_writes_only_to_stdout(tmp_path):
    write_site(tmp_path)
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1].startswith("  report: ") and "backup: OK in " in done.stdout
    assert re.search(r"^\d\d:\d\d:\d\d \S+_data: tar /", done.stdout, re.M), "plain progress lines on stdout"


def test_warnings_go_to_stderr_and_the_summary_to_stdout(tmp_path):
    write_site(tmp_path)
    stray = tmp_path / "staging/clihost/inflight/stray"
    stray.mkdir(parents=True)
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert (done.returncode, done.stderr) == (0, f"warning: removed stray inflight directory {stray}\n")
    assert "backup: OK in " in done.stdout and "stray" not in done.stdout


def test_a_failed_run_is_one_error_line_on_stderr_with_its_report(tmp_path):
    write_site(tmp_path, "  hooks: [{name: dump, argv: [sh, -c, 'echo broken >&2; exit 3']}]\n")
    done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert (done.returncode, done.stderr) == (1, "error: pre-backup hook 'dump' exited 3: broken\n")
    assert "\nbackup: FAILED in " in done.stdout
    latest = json.loads((tmp_path / "state/reports/backup-latest.json").read_text())
    assert (latest["exit_code"], latest["error"]) == (1, "pre-backup hook 'dump' exited 3: broken")


def test_a_refused_run_writes_its_own_report_and_leaves_latest_alone(tmp_path):
    write_site(tmp_path)
    assert inv(["-f", "site.yaml", "backup"], tmp_path).returncode == 0
    reports = tmp_path / "state/reports"
    ran = os.readlink(reports / "backup-latest.json")
    lock = tmp_path / "state/locks/backup.lock"
    with held_lock(lock, "inv backup"):
        done = inv(["-f", "site.yaml", "backup"], tmp_path)
    assert done.returncode == 3
    assert re.fullmatch(rf"error: inv backup is already running \(pid {os.getpid()} since [^)]+\); "
                        rf"lock file {re.escape(str(lock))}\n", done.stderr)
    assert done.stdout.startswith("backup: FAILED in ")
    assert os.readlink(reports / "backup-latest.json") == ran, "latest still points at the run that ran"
    (refused,) = [p for p in reports.glob("backup-2*.json") if p.name != ran]
    assert json.loads(refused.read_text())["exit_code"] == 3
    assert json.loads((reports / ran).read_text())["status"] == "ok"


def test_an_internal_error_prints_its_traceback_on_stderr(tmp_path):
    script = (
        "import sys\n"
        "from orchestrator.job import execute\n"
        "def body(run):\n"
        "    raise RuntimeError('boom')\n"
        f"config = {{'orchestrator': {{'state_dir': {str(tmp_path / 'state')!r}, 'progress': 'plain'}}}}\n"
        "sys.exit(execute(config, 'bug', body))\n"
    )
    done = finished([sys.executable, "-c", script], what="a job with a bug", out_dir=tmp_path / "bug", cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert done.stderr.endswith("RuntimeError: boom\nerror: internal error: RuntimeError: boom\n")
    assert done.stdout.startswith("bug: FAILED in ") and "Traceback" not in done.stdout


def read_until_closed(controller: int) -> bytes:
    """What a pty's other side wrote, until every holder of it has closed it (EIO); a hang fails."""
    drawn = b""
    while True:
        readable, _, _ = select.select([controller], [], [], HANG_S)
        assert readable, f"the pty is still held open (waited {HANG_S:.0f} s); so far: {drawn!r}"
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed its end
            return drawn
        if not chunk:
            return drawn
        drawn += chunk


def test_bars_are_drawn_on_a_terminal_stderr_while_messages_go_to_stdout():
    script = (
        "from orchestrator.progress import Progress\n"
        "progress = Progress('auto')\n"
        "print(progress.mode, flush=True)\n"
        "with progress.counter('etc', total=1024) as counter:\n"
        "    counter.update(512)\n"
        "    progress.say('between bars')\n"
        "progress.warn('careful')\n"
    )
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a fresh pty is 0 columns wide
    child = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", sys.executable, "-c", script], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=terminal, text=True, start_new_session=True)
    os.close(terminal)
    try:
        stdout, _ = child.communicate(timeout=HANG_S)
        drawn = read_until_closed(controller)
    finally:
        os.close(controller)
        stop_group(child)
    assert stdout == "bar\nbetween bars\n"
    assert b"50%" in drawn and b"WARNING: careful" in drawn and b"between bars" not in drawn
