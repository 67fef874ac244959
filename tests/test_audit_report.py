"""The audit report on logs in the kernel's exact record format (tests/audit/fixture.log, written by hand:
interleaved events, hex-encoded EXECVE arguments, a long argument split over two EXECVE records, CWD in
hex, a 32-bit syscall, PARENT and (null) PATH items, auditd's ENRICHED fields after \\x1d), read through
the real `ausearch --raw -if` (offline: no daemon, no kernel) and by the parser directly; `--since`; the
bounded counters."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.errors import CommandError, ConfigError
from orchestrator.security import audit_report as ar
from orchestrator.security.audit_jobs import ausearch_argv, local_lines, report_local, since_args

FIXTURE = Path(__file__).parent / "audit" / "fixture.log"
LONG = "x" * 40 + " with a space and more " + "y" * 40
needs_ausearch = pytest.mark.skipif(shutil.which("ausearch") is None, reason="needs ausearch (auditd)")

EXPECTED_1000 = {
    "events": 2,
    "syscalls": {"execve": 2},
    "commands": {"top": [{"name": f"echo '{LONG}' done", "count": 1},
                         {"name": "ls -l '/tmp/a b c' 'new\\x0aline'", "count": 1}],
                 "more_distinct": 0, "dropped_occurrences": 0},
    "files": {"top": [{"name": n, "count": 1} for n in ("/home/alice/my dir/notes.txt", "/lib64/ld-linux-x86-64.so.2",
                                                         "/usr/bin/echo", "/usr/bin/ls")],
              "more_distinct": 0, "dropped_occurrences": 0},
}


def direct(auid=None) -> ar.Report:
    with FIXTURE.open("rb") as log:
        return ar.Report(auid).feed_all(log)


@needs_ausearch
def test_through_ausearch_and_direct_give_the_same_report():
    via = ar.as_dict(report_local(FIXTURE))
    assert via == ar.as_dict(direct())
    assert (via["records"], via["events"]) == (31, 5)  # the USER_LOGIN event has no system call: not counted
    assert via["auids"]["1000"] == EXPECTED_1000
    assert via["auids"]["1001"]["files"]["top"] == [{"name": "/etc/passwd", "count": 1}]
    assert via["auids"]["1001"]["syscalls"] == {"openat": 1}
    assert via["auids"]["7005"]["syscalls"] == {"open (i386)": 1}
    assert via["auids"]["7005"]["files"]["top"] == [{"name": "/opt/legacy/etc/legacy.conf", "count": 1}]
    assert via["auids"]["unset"] == {"events": 1, "syscalls": {"write": 1},
                                     "commands": {"top": [], "more_distinct": 0, "dropped_occurrences": 0},
                                     "files": {"top": [], "more_distinct": 0, "dropped_occurrences": 0}}
    assert via["total"]["syscalls"] == {"execve": 2, "open (i386)": 1, "openat": 1, "write": 1}


@needs_ausearch
def test_one_login_uid_through_ausearch_ul():
    assert ausearch_argv(log="/x", auid=1000) == ["ausearch", "--raw", "-if", "/x", "-ul", "1000"]
    report = report_local(FIXTURE, auid=1000)
    assert list(report.users) == [1000] and ar.as_dict(report)["auids"]["1000"] == EXPECTED_1000
    assert report_local(FIXTURE, auid=4242).events == 0


@needs_ausearch
def test_since_reaches_ausearch_in_utc_and_a_missing_file_fails():
    assert report_local(FIXTURE, since="2023-11-14T22:13:21").events == 3  # C, D, E: after A and B
    assert report_local(FIXTURE, since="2023-11-14T23:13:21+01:00").events == 3
    assert report_local(FIXTURE, since="1h").events == 0  # the fixture is from 2023: nothing matches, no error
    with pytest.raises(CommandError, match=r"^local: ausearch exited 1: stat: No such file"):
        report_local(FIXTURE.with_name("missing.log"))


def test_since_forms():
    now = datetime(2026, 11, 27, 8, 30, 0, tzinfo=timezone.utc)
    assert since_args("recent") == ["-ts", "recent"] and since_args("this-week") == ["-ts", "this-week"]
    assert since_args("1h", now) == ["-ts", "11/27/26", "07:30:00"]
    assert since_args("2d", now) == ["-ts", "11/25/26", "08:30:00"]
    assert since_args("2026-11-27T10:00:00+02:00") == ["-ts", "11/27/26", "08:00:00"]
    assert since_args("2026-11-27 08:00") == ["-ts", "11/27/26", "08:00:00"]
    with pytest.raises(ConfigError, match=r"^--since: 'last tuesday' is not 1h, 2d"):
        since_args("last tuesday")


def test_the_text_report_has_the_seeds_three_lists_per_login_uid():
    lines = ar.text_lines(direct(1000), top=3)
    assert lines[0] == "2 event(s) from 31 record(s) for login uid 1000"
    assert lines[2:6] == ["Audit report for AUID 1000 (2 events)", "System calls made:", "   2  execve",
                          "Commands executed:"]
    assert "Files opened:" in lines and lines[-1] == "   ... 1 more"


def test_decoding_of_values():
    assert ar.decode(b'"plain"') == "plain" and ar.decode(b"(null)") is None
    assert ar.decode(b"2F746D702F6120622063") == "/tmp/a b c"
    assert ar.decode(b"C3A9") == "\u00e9" and ar.decode(b"FF") == "\udcff"  # invalid UTF-8 kept, not lost
    assert ar.proctitle(b"6C73002D6C") == "ls -l" and ar.proctitle(b'"-bash"') == "-bash"
    fields = ar.fields(b'argc=2 a0="a b" a1=616263 key=(null) msg=\'op=x res=1\'')
    assert fields == {"argc": b"2", "a0": b'"a b"', "a1": b"616263", "key": b"(null)", "msg": b"'op=x res=1'"}


def test_execve_pieces_join_in_order_whatever_the_record_order():
    execve = ar.Execve()
    execve.add(b'argc=3 a0="cmd" a1_len=6 a1[1]=646566')
    execve.add(b'a1[0]="abc" a2=2061')
    assert execve.argv() == ["cmd", "abcdef", " a"]


def interleaved(count: int) -> list[bytes]:
    """``count`` events, every SYSCALL record first, then every PATH record, no EOE at all."""
    lines = [f"type=SYSCALL msg=audit(1700000000.000:{i}): arch=c000003e syscall=2 success=yes exit=3 items=1 "
             f"ppid=1 pid={i} auid=1000 uid=1000 comm=\"x\" exe=\"/x\" key=(null)\n".encode() for i in range(count)]
    return lines + [f'type=PATH msg=audit(1700000000.000:{i}): item=0 name="/f{i}" nametype=NORMAL\n'.encode()
                    for i in range(count)]


def test_interleaved_events_within_the_open_limit_are_whole():
    stats = ar.Report().feed_all(interleaved(ar.MAX_OPEN)).users[1000]
    assert stats.events == ar.MAX_OPEN and len(stats.files.counts) == ar.MAX_OPEN


def test_beyond_the_open_limit_memory_stays_bounded_and_each_event_counts_once():
    report = ar.Report()
    for line in interleaved(ar.MAX_OPEN + 10):
        report.feed(line)
        assert len(report.open) <= ar.MAX_OPEN
    report.finish()
    assert report.users[1000].events == ar.MAX_OPEN + 10 and not report.open


def test_top_counter_memory_is_bounded_and_frequent_keys_survive():
    counter = ar.TopCounter(cap=10)
    for i in range(10_000):
        counter.add("frequent")
        counter.add(f"rare-{i}")
    assert len(counter.counts) < 20 and counter.top(1) == [("frequent", 10_000)]
    assert counter.dropped + sum(counter.counts.values()) == 20_000


def test_a_local_command_left_early_is_killed_and_not_waited_for(tmp_path):
    with pytest.raises(RuntimeError):
        with local_lines(["sh", "-c", "echo one; exec sleep 600"]) as lines:
            assert next(lines) == b"one\n"
            raise RuntimeError("consumer stops")
