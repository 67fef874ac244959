"""Parse-only validation of audit rules by the real auditctl under strace: good rules pass, each kind of bad
line is caught with auditctl's reason on one line, and the false pass (auditctl in a user namespace exits 0
without parsing) cannot happen. The kernel's audit is not namespaced: every test checks that this machine's
audit state (`auditctl -l`, `auditctl -s`, both read-only) is the same afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.config import load_section
from orchestrator.errors import OrchestratorError
from orchestrator.security.audit_rules import render_audit, render_next_boot
from orchestrator.security.audit_validate import parses, rule_lines, traced, validate_audit
from orchestrator.security.validate import ValidationError

pytestmark = pytest.mark.skipif(not (shutil.which("strace") and shutil.which("auditctl")),
                                reason="needs strace and auditctl (sh scripts/install-deps --test)")
KEY = "guard.images[0]"


def kernel_audit_state() -> str:
    def out(argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout

    status = [line for line in out(["auditctl", "-s"]).splitlines()
              if not line.startswith(("lost", "backlog ", "backlog_wait_time_actual"))]
    return out(["auditctl", "-l"]) + "\n".join(status)


@pytest.fixture(autouse=True)
def audit_state_unchanged():
    before = kernel_audit_state()
    yield
    assert kernel_audit_state() == before


def image(**audit):
    return load_section("guard", {"images": [{"name": "web", "audit": {"enabled": True, **audit}}]}).images[0]


def test_every_rendered_file_passes_including_the_next_boot_one():
    web = image(everything_auid=7005, immutable=True, watches=["/srv/www"], local_rules=[
        "-a always,exit -F arch=b64 -S mount,umount2 -F auid>=1000 -F auid!=unset -k mounts",
        "-w /srv/data -p rwa -k data"])
    files = {**render_audit(web), **render_next_boot(web)}
    assert validate_audit(web, files, KEY) == ["audit-parse"]


BAD_LINES = [
    ("-a always,exit -F arch=b64 -S nosuchsyscall -k x", "Syscall name unknown: nosuchsyscall"),
    ("-a always,exit -F arch=b64 -S execve -F bogusfield=1 -k y", "-F unknown field: bogusfield"),
    ("-a sometimes,exit -S execve", "bad keyword sometimes,exit"),
    ("-w /etc/passwd -p wz -k pw", "Permission z isn't supported"),
    ("-a always,exit -F arch=b64 -S execve -F auid>=abc", "auid"),
    ("-A always,exit -F arch=b99 -S execve", "arch"),
]


@pytest.mark.parametrize("line, reason", BAD_LINES)
def test_a_bad_local_rule_is_one_line_with_its_key_file_line_and_reason(line, reason):
    web = image(local_rules=["-w /srv -p wa -k srv", line])
    with pytest.raises(ValidationError) as caught:
        validate_audit(web, render_audit(web), KEY)
    message = str(caught.value)
    assert message.startswith(f"{KEY}.audit.local_rules[1]: /etc/audit/rules.d/90-local.rules:")
    assert f"auditctl refused {line!r}: " in message and reason in message and "\n" not in message


def test_a_repeated_rule_is_refused_before_auditctl():
    web = image(local_rules=["-w /etc/passwd -p wa -k identity"])
    with pytest.raises(ValidationError, match=r"90-local.rules:\d+: '-w /etc/passwd -p wa -k identity' repeats "
                                              r"/etc/audit/rules.d/30-main.rules:\d+"):
        validate_audit(web, render_audit(web), KEY)


def test_each_good_line_really_made_its_send_and_only_audit_get_went_through(tmp_path):
    web = image(everything_auid=7005)
    for i, line in enumerate(rule_lines(render_audit(web))):
        rules = tmp_path / f"{i}.rules"
        rules.write_text(line.text + "\n")
        rules.chmod(0o600)
        trace = traced(["auditctl", "-R", str(rules)], tmp_path / f"{i}.trace", when="2+")
        assert (trace.sends, trace.injected) == (2, 1), line  # AUDIT_GET let through, the rule's send failed
        first = next(l for l in (tmp_path / f"{i}.trace").read_text().splitlines() if "sendto(" in l)
        assert "nlmsg_type=0x3e8" in first and "INJECTED" not in first


def test_a_refused_line_makes_no_send(tmp_path):
    assert not parses("-a always,exit -F arch=b64 -S nosuchsyscall", tmp_path)
    trace = (tmp_path / "trace").read_text()
    assert trace.count("sendto(") == 1 and "INJECTED" not in trace


def test_the_user_namespace_false_pass_is_an_error_not_a_pass(tmp_path, monkeypatch):
    """auditctl in a user namespace exits 0 for any file without parsing it (FIELD-NOTES): shown here, then
    the same auditctl put first on PATH makes validation refuse to answer."""
    rules = tmp_path / "bad.rules"
    rules.write_text("-a always,exit -F arch=b64 -S nosuchsyscall\n")
    rules.chmod(0o600)
    done = subprocess.run(["unshare", "-U", "-r", "auditctl", "-R", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0  # the false pass the exit code would give
    wrapper = tmp_path / "bin" / "auditctl"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec unshare -U -r {shutil.which("auditctl")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    web = image()
    with pytest.raises(OrchestratorError, match=r"^guard.images\[0\].audit: cannot validate audit rules here: "
                                                r"auditctl made no netlink send for a known-good rule"):
        validate_audit(web, render_audit(web), KEY)


def test_a_world_writable_file_would_be_refused_silently_so_ours_are_0600(tmp_path):
    assert parses("-w /etc/passwd -p wa -k x", tmp_path)
    assert (Path(tmp_path) / "one.rules").stat().st_mode & 0o777 == 0o600
