"""Progress on a terminal vs in cron, the job lock, and local commands under --dry."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from test_config import ROOT, inv, write_site

from orchestrator.errors import CommandError, LockedError
from orchestrator.lock import held_lock
from orchestrator.progress import Progress
from orchestrator.run import LocalTarget


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


def test_lock_refuses_a_second_holder_and_is_freed_when_the_holder_dies(tmp_path):
    lock = tmp_path / "job.lock"
    with held_lock(lock, "inv backup"):
        with pytest.raises(LockedError, match=r"inv backup is already running \(pid \d+ since"):
            with held_lock(lock, "inv backup"):
                pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.');"
        "from orchestrator.lock import held_lock;"
        f"cm = held_lock(__import__('pathlib').Path({str(lock)!r}), 'x'); cm.__enter__();"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError):
        with held_lock(lock, "x"):
            pass
    holder.kill()
    holder.wait()
    with held_lock(lock, "x"):
        pass


def test_local_target_runs_argv_verbatim_and_reports_failures():
    target = LocalTarget()
    tricky = "a b; $(id) `id` 'q'"
    assert target.run(["printf", "%s", tricky]).stdout == tricky
    with pytest.raises(CommandError, match=r"local: sh exited 3: boom"):
        target.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert target.run(["false"], check=False).returncode == 1
    with pytest.raises(CommandError, match="command not found"):
        target.run(["definitely-not-a-command-xyz"])


def test_dry_local_target_prints_and_runs_nothing(tmp_path):
    lines = []
    target = LocalTarget(dry=True, echo=lines.append)
    victim = tmp_path / "keep me"
    victim.write_text("x")
    target.run(["rm", "-f", victim])
    assert victim.exists()
    assert lines == [f"[dry-run] local: rm -f '{victim}'"]
    assert target.run(["echo", "probe"], mutates=False).stdout == "probe\n", "read-only probes still run"


def test_a_streamed_command_is_killed_at_its_timeout():
    import time

    lines = []
    target = LocalTarget(echo=lines.append)
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        target.run(["sh", "-c", "echo started; exec sleep 30"], stream=True, timeout=1)
    assert caught.value.returncode == 124 and "timed out after 1 s" in str(caught.value)
    assert time.monotonic() - started < 10 and lines == ["started"]


def test_a_streamed_command_returns_although_a_background_child_holds_its_output():
    import time

    lines = []
    started = time.monotonic()
    result = LocalTarget(echo=lines.append).run(["sh", "-c", "sleep 20 & echo \"bg $!\"; echo done"], stream=True)
    background = int(lines[0].split()[1])
    os.kill(background, signal.SIGKILL)
    assert result.ok and lines == [f"bg {background}", "done"] and time.monotonic() - started < 10


def test_an_interrupted_streamed_command_is_killed_not_waited_for():
    """Ctrl-C or SIGTERM (raised as an exception while output is read) must not wait for the build."""
    import time

    pids = []

    def echo(line):
        pids.append(int(line)) if not pids else None
        if line == "go":
            raise KeyboardInterrupt

    target = LocalTarget(echo=echo)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        target.run(["sh", "-c", "echo $$; echo go; exec sleep 30"], stream=True)  # exec: sleep keeps the pid
    assert time.monotonic() - started < 10
    assert not alive(pids[0]), "the child was killed"


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


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
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert done.stderr.endswith("RuntimeError: boom\nerror: internal error: RuntimeError: boom\n")
    assert done.stdout.startswith("bug: FAILED in ") and "Traceback" not in done.stdout


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
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal,
                             text=True)
    os.close(terminal)
    stdout, _ = child.communicate(timeout=60)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert stdout == "bar\nbetween bars\n"
    assert b"50%" in drawn and b"WARNING: careful" in drawn and b"between bars" not in drawn
