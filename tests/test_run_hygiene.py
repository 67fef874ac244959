"""Progress on a terminal vs in cron, the job lock, and local commands under --dry."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

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
    result = LocalTarget(echo=lines.append).run(["sh", "-c", "sleep 20 & echo done"], stream=True)
    assert result.ok and lines == ["done"] and time.monotonic() - started < 10
    subprocess.run(["pkill", "-f", "^sleep 20$"], check=False)


def test_an_interrupted_streamed_command_is_killed_not_waited_for():
    """Ctrl-C or SIGTERM (raised as an exception while output is read) must not wait for the build."""
    import time

    target = LocalTarget(echo=lambda line: (_ for _ in ()).throw(KeyboardInterrupt) if line == "go" else None)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        target.run(["sh", "-c", "echo go; exec sleep 30"], stream=True)
    assert time.monotonic() - started < 10
    assert subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True).returncode == 1, "the child was killed"
