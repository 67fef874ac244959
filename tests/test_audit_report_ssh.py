"""`inv audit-report HOST` against the real sshd (ausearch runs "on the host" over SSH on the fixture log via
--log), and RemoteTarget.stream_lines: line by line, stderr drained alongside, exit status, a command left
early killed on the host. Waits on events (process exit, files), never on time."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from children import finished
from conftest import Site
from orchestrator.errors import CommandError
from orchestrator.run import RemoteTarget
from orchestrator.security.audit_report import as_dict
from orchestrator.security.audit_jobs import report_local

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("every_session_ends")]
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "audit" / "fixture.log"


def target(sshd) -> RemoteTarget:
    return RemoteTarget(sshd.host, user=sshd.user, port=sshd.port, key_filename=sshd.key_filename,
                        known_hosts=sshd.known_hosts)


def test_stream_lines_yields_every_line_and_drains_a_flood_on_stderr(sshd):
    script = "head -c 3000000 /dev/zero | tr '\\0' e >&2; seq 1 200000; printf tail"
    with target(sshd) as remote:
        with remote.stream_lines(["sh", "-c", script]) as lines:
            got = list(lines)
    assert len(got) == 200001 and got[0] == b"1\n" and got[199999] == b"200000\n" and got[-1] == b"tail"


def test_stream_lines_raises_with_the_stderr_tail_on_a_failing_status(sshd):
    with target(sshd) as remote:
        with pytest.raises(CommandError, match=r"ausearch exited 1: .*stat: No such file or directory"):
            with remote.stream_lines(["ausearch", "--raw", "-if", "/nonexistent/audit.log"]) as lines:
                assert list(lines) == []
        with remote.stream_lines(["sh", "-c", "exit 3"], ok=(0, 3)) as lines:
            assert list(lines) == []


def test_a_stream_left_early_kills_the_command_on_the_host(sshd, tmp_path):
    pid_file = tmp_path / "pid"
    script = f'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; echo ready; exec sleep 600'
    with target(sshd) as remote:
        with pytest.raises(RuntimeError):
            with remote.stream_lines(["sh", "-c", script]) as lines:
                assert next(lines) == b"ready\n"
                raise RuntimeError("the consumer stops")
        pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def inv(site: Site, tmp_path: Path, *args: str):
    config = tmp_path / "inv" / "site.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump(site.config))
    return finished([sys.executable, "-m", "invoke", "-f", str(config), *args], what=f"inv {' '.join(args)}",
                    out_dir=tmp_path / "inv", cwd=REPO_ROOT)


@pytest.mark.skipif(shutil.which("ausearch") is None, reason="needs ausearch (auditd)")
def test_inv_audit_report_reads_the_hosts_log_over_ssh(site: Site, sshd, tmp_path):
    site.set("fleet", {"hosts": [{"name": "web1", "host": sshd.host, "port": sshd.port,
                                  "key_filename": sshd.key_filename, "known_hosts": sshd.known_hosts}]})
    out = tmp_path / "report.json"
    done = inv(site, tmp_path, "audit-report", "web1", "--log", str(FIXTURE), "--auid", "1000", "--json", str(out))
    assert done.returncode == 0, done
    assert "Audit report for AUID 1000 (2 events)" in done.stdout
    assert "   1  ls -l '/tmp/a b c' 'new\\x0aline'" in done.stdout.splitlines()
    data = json.loads(out.read_text())
    assert data == as_dict(report_local(FIXTURE, auid=1000))
    report = json.loads((site.root / "state/reports/audit-report-latest.json").read_text())["summary"]
    assert report["events"] == 2 and report["audit"]["auids"]["1000"]["syscalls"] == {"execve": 2}

    done = inv(site, tmp_path, "audit-report", "web1", "--log", "/nonexistent/audit.log")
    assert done.returncode == 1 and "error: 1 of 1 host(s) failed to read the audit log: web1: " in done.stderr
    assert "ausearch exited 1: stat: No such file or directory" in done.stderr
    done = inv(site, tmp_path, "audit-report", "web1", "--since", "someday")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (2, "error: --since: 'someday' is not 1h, 2d, an "
                                                               "ISO time like 2026-11-27T08:00 or one of boot, now, "
                                                               "recent, this-month, this-week, this-year, today, "
                                                               "week-ago, yesterday")
    done = inv(site, tmp_path, "audit-report", "local")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2, "error: HOST: give a host from fleet.hosts, or local with --file LOG (a log on this box)")
    done = inv(site, tmp_path, "audit-report", "local", "--file", str(FIXTURE), "--auid", "1001")
    assert done.returncode == 0 and "Audit report for AUID 1001 (1 events)" in done.stdout
    assert os.path.exists(out)
