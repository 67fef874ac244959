"""The dead-man switch for real: an sshd inside a throwaway network namespace, its firewall changed over SSH.

Never the host's firewall: every rule here is loaded inside the namespace (``netns_lab``), which is removed
with every process in it after each test. The window (3 s) is the thing under test: we wait for the
host's outcome file, not for a fixed time, except to show that a kept rule set outlives its window.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from children import finished, no_sshd_session_left, wait_until
from daemons import group_members
from netns_lab import SSH_PORT, netns_host
from orchestrator.faults import ENV as CRASH_ENV
from orchestrator.faults import GUARD_POINTS
from orchestrator.job import execute
from orchestrator.run import RemoteTarget
from orchestrator.security.deadman import KEEP_JOBS, apply_with_deadman, normalised, restore_text, settle_leftovers

WINDOW = 3
SLACK = 2  # the revert's own restore, and the host's clock granularity

OLD_V4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9 -j DROP
COMMIT
"""
OLD_V6 = OLD_V4.replace("--dport 9", "--dport 19")
GOOD_V4 = f"""*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:geo-ssh - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport {SSH_PORT} -j geo-ssh
-A geo-ssh -j ACCEPT
COMMIT
"""
GOOD_V6 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""
# Default DROP without an SSH accept (not even for the established session), and a table the old rules lack.
CUT_V4 = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 7 -j MARK --set-xmark 0x7/0xffffffff
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
COMMIT
"""
CUT_V6 = GOOD_V6
GOOD = {"iptables": GOOD_V4, "ip6tables": GOOD_V6}
CUT = {"iptables": CUT_V4, "ip6tables": CUT_V6}

OLD_NFT = """table inet geo {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 9 counter drop
\t}
}
"""
CUT_NFT = """flush ruleset
table inet geo {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiif "lo" accept
\t}
}
"""


@pytest.fixture
def host(tmp_path):
    with netns_host(tmp_path) as ns:
        ns.ns("iptables-restore", input=OLD_V4)
        ns.ns("ip6tables-restore", input=OLD_V6)
        yield ns
        no_sshd_session_left(ns.server)  # every connection we opened, old and new, was closed
    # netns_host asserted the namespace and every process in it gone


def saves(host) -> dict[str, str]:
    return {tool: host.ns(f"{tool}-save").stdout for tool in ("iptables", "ip6tables")}


def same_rules(before: dict[str, str], after: dict[str, str]) -> bool:
    return all(normalised(tool, before[tool]) == normalised(tool, after[tool]) for tool in before)


def target(host, **kw) -> RemoteTarget:
    srv = host.server
    return RemoteTarget(srv.host, port=srv.port, key_filename=srv.key_filename, known_hosts=srv.known_hosts,
                        connect_timeout=2, command_timeout=60, **kw)


def apply(host, tmp_path, rules, *, backend="iptables", window=WINDOW, dry=False, reconnects=None, first_port=None):
    """One ``apply_with_deadman`` inside a real job run; returns (outcome, what it printed).
    ``first_port``: the first new connection goes there (a port nothing listens on: refused)."""
    found = {}
    tries = []

    def reconnect():
        tries.append(time.monotonic())
        if reconnects is not None:
            reconnects.append(tries[-1])
        if first_port is not None and len(tries) == 1:
            return RemoteTarget(host.server.host, port=first_port, key_filename=host.server.key_filename,
                                known_hosts=host.server.known_hosts, connect_timeout=2)
        return target(host)

    def body(run):
        with target(host, dry=run.dry, echo=run.echo) as old:
            found["outcome"] = apply_with_deadman(run, old, new_rules=rules, backend=backend, window_s=window,
                                                  reconnect=reconnect, state_dir=str(tmp_path / "host-state"))

    config = {"orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"}, "run": {"dry": dry}}
    out = io.StringIO()
    code = execute(config, "deadman-test", body, out=out)
    assert code == 0, out.getvalue()
    return found["outcome"], out.getvalue()


def job_dirs(tmp_path) -> list[Path]:
    state = tmp_path / "host-state"
    return sorted(path for path in state.iterdir() if path.is_dir()) if state.exists() else []


def assert_revert_gone(job: Path) -> None:
    """The revert's pid (from its pid file) no longer runs (a zombie awaiting its reaper counts as gone),
    nor anything of its process group (its ``sleep``)."""
    pid = int((job / "pid").read_text())
    wait_gone_or_zombie(pid)
    wait_until(lambda: group_members(pid) == [], lambda: f"revert group {pid} left {group_members(pid)}",
               timeout=10)


def wait_gone_or_zombie(pid: int) -> None:
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True
    wait_until(gone, f"revert pid {pid} still runs", timeout=10)


def wait_outcome(job: Path, timeout: float = WINDOW + 20) -> str:
    wait_until(lambda: (job / "outcome").exists(), f"no outcome in {job}", timeout=timeout)
    return (job / "outcome").read_text().strip()


def revert_took(job: Path) -> float:
    """Seconds from the revert's start (its pid file) to its outcome, by the host's own file times."""
    return (job / "outcome").stat().st_mtime - (job / "pid").stat().st_mtime


def test_rules_that_cut_ssh_are_rolled_back_by_the_host(host, tmp_path):
    before, filter_before = saves(host), host.ns("iptables", "-S").stdout
    reconnects = []
    outcome, _ = apply(host, tmp_path, CUT, reconnects=reconnects)
    assert outcome.status == "reverted", outcome.message
    assert not outcome.ok
    (job,) = job_dirs(tmp_path)
    assert wait_outcome(job) == "reverted"
    assert os.readlink(job / "decision") == "reverted"
    assert revert_took(job) <= WINDOW + SLACK
    assert same_rules(before, saves(host))
    assert host.ns("iptables", "-S").stdout == filter_before  # the filter table byte for byte
    assert normalised("iptables", (job / "saved.iptables").read_text()) == normalised("iptables", before["iptables"])
    assert outcome.saved_path == str(job / "saved.iptables")
    assert reconnects, "a new connection was tried"
    assert_revert_gone(job)


def test_good_rules_are_confirmed_over_a_new_connection_and_kept(host, tmp_path):
    reconnects = []
    outcome, _ = apply(host, tmp_path, GOOD, reconnects=reconnects)
    assert outcome.status == "kept", outcome
    assert len(reconnects) == 1
    (job,) = job_dirs(tmp_path)
    assert os.readlink(job / "decision") == "confirmed"
    assert (job / "outcome").read_text().strip() == "confirmed"
    assert_revert_gone(job)
    time.sleep(WINDOW + SLACK)  # the window itself is what is under test: past it, nothing reverted
    assert (job / "outcome").read_text().strip() == "confirmed"
    assert "-P INPUT DROP" in host.ns("iptables", "-S").stdout
    assert "-A geo-ssh -j ACCEPT" in host.ns("iptables", "-S").stdout
    with target(host) as again:  # and SSH still gets in
        assert again.run(["true"]).ok


def test_a_failed_new_connection_is_tried_again_within_the_window(host, tmp_path):
    reconnects = []
    outcome, _ = apply(host, tmp_path, GOOD, window=10, reconnects=reconnects, first_port=SSH_PORT + 1)
    assert outcome.status == "kept", outcome.message
    assert len(reconnects) == 2
    (job,) = job_dirs(tmp_path)
    assert (job / "outcome").read_text().strip() == "confirmed"
    assert_revert_gone(job)


def test_nftables_cut_is_rolled_back(host, tmp_path):
    host.ns("nft", "-f", "-", input="flush ruleset\n" + OLD_NFT)
    before = host.ns("nft", "list", "ruleset").stdout
    outcome, _ = apply(host, tmp_path, {"nft": CUT_NFT}, backend="nftables")
    assert outcome.status == "reverted", outcome.message
    (job,) = job_dirs(tmp_path)
    assert revert_took(job) <= WINDOW + SLACK
    assert normalised("nft", host.ns("nft", "list", "ruleset").stdout) == normalised("nft", before)
    assert "policy drop" not in host.ns("nft", "list", "ruleset").stdout


def test_rules_that_fail_to_load_are_undone_at_once(host, tmp_path):
    before = saves(host)
    bad = {"iptables": GOOD_V4, "ip6tables": "*filter\n-A INPUT -j NO-SUCH-TARGET\nCOMMIT\n"}
    started = time.monotonic()
    outcome, _ = apply(host, tmp_path, bad, window=60)
    assert outcome.status == "reverted", outcome.message
    assert "ip6tables-restore" in outcome.message and "NO-SUCH-TARGET" in outcome.message
    assert time.monotonic() - started < 60, "restored by us, not by the window"
    (job,) = job_dirs(tmp_path)
    assert (job / "outcome").read_text().startswith("reverted (apply failed)")
    assert same_rules(before, saves(host))
    assert_revert_gone(job)


def test_dry_prints_every_step_and_changes_nothing(host, tmp_path):
    before = saves(host)
    outcome, printed = apply(host, tmp_path, CUT, dry=True)
    assert outcome.status == "planned"
    for step in ("save: iptables-save", "save: ip6tables-save", "arm: sh ", "apply: sh ", "iptables-restore < new",
                 "confirm over a new connection: sh "):
        assert step in printed, printed
    assert not (tmp_path / "host-state").exists()
    assert saves(host) == before


def run_child(host, tmp_path, rules, point: str, window: int = WINDOW):
    spec = tmp_path / "spec.json"
    srv = host.server
    spec.write_text(json.dumps({"host": srv.host, "port": srv.port, "key": srv.key_filename,
                                "known_hosts": srv.known_hosts, "rules": rules, "backend": "iptables",
                                "window": window, "state_dir": str(tmp_path / "host-state"),
                                "local_state": str(tmp_path / "child-state")}))
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = [sys.executable, str(Path(__file__).with_name("deadman_child.py")), str(spec)]
    return finished(child, what=f"deadman child killed at {point}", out_dir=tmp_path / "child", env=env)


@pytest.mark.parametrize("point", GUARD_POINTS)
def test_kill_at_each_crash_point_leaves_the_old_rules_or_brings_them_back(host, tmp_path, point):
    before = saves(host)
    rules = GOOD if point == "deadman-confirmed" else CUT
    done = run_child(host, tmp_path, rules, point)
    assert done.returncode == -9, done
    (job,) = job_dirs(tmp_path)
    if point == "deadman-saved":
        assert not (job / "pid").exists()  # nothing armed, nothing changed
        assert same_rules(before, saves(host))
    elif point == "deadman-confirmed":
        assert os.readlink(job / "decision") == "confirmed"
        assert_revert_gone(job)
        assert "-P INPUT DROP" in host.ns("iptables", "-S").stdout
    else:
        assert wait_outcome(job) == "reverted"
        assert revert_took(job) <= WINDOW + SLACK
        assert same_rules(before, saves(host))
    # a rerun finds the leftover (settled or nothing to do) and applies a good set
    outcome, _ = apply(host, tmp_path, GOOD)
    assert outcome.status == "kept", outcome
    left = [path for path in job_dirs(tmp_path) if not (path / "outcome").exists()]
    assert left == [] or (point == "deadman-saved" and left == [job])


def test_rerun_waits_for_a_pending_revert_then_applies(host, tmp_path):
    before = saves(host)
    done = run_child(host, tmp_path, CUT, "deadman-armed")  # killed with the revert armed, before the apply
    assert done.returncode == -9
    (leftover,) = job_dirs(tmp_path)
    assert not (leftover / "outcome").exists(), "the revert is still pending when the rerun starts"
    outcome, _ = apply(host, tmp_path, GOOD)
    assert (leftover / "outcome").read_text().strip() == "reverted"
    assert outcome.status == "kept", outcome
    assert not same_rules(before, saves(host))  # now the good set


def test_settle_leftovers_finishes_a_revert_that_died(host, tmp_path):
    """A revert killed before its window (as by a reboot): the next run restores the saved rules itself."""
    before = saves(host)
    done = run_child(host, tmp_path, CUT, "deadman-applied", window=600)
    assert done.returncode == -9
    (job,) = job_dirs(tmp_path)
    pid = int((job / "pid").read_text())
    os.kill(pid, 9)  # the revert we started (by its pid file); its sleep child goes with the namespace
    wait_gone_or_zombie(pid)
    assert not same_rules(before, saves(host))  # the cutting set is live
    host.ns("iptables", "-I", "INPUT", "-p", "tcp", "--dport", str(SSH_PORT), "-j", "ACCEPT")  # let us in
    with target(host) as old:
        outcomes = settle_leftovers(old, str(tmp_path / "host-state"))
    assert outcomes == ["reverted"]
    assert (job / "outcome").read_text().startswith("reverted (by a later run)")
    assert same_rules(before, saves(host))


def test_old_finished_jobs_are_pruned_and_unfinished_ones_kept(host, tmp_path):
    state = tmp_path / "host-state"
    for n in range(KEEP_JOBS + 2):
        old = state / f"2020010{n}T000000Z-{n:012x}"
        old.mkdir(parents=True)
        (old / "outcome").write_text("confirmed\n")
    unfinished = state / "20190101T000000Z-aaaaaaaaaaaa"  # no deadman.sh: never armed, never settled
    unfinished.mkdir()
    outcome, _ = apply(host, tmp_path, GOOD)
    assert outcome.status == "kept", outcome.message
    names = sorted(path.name for path in job_dirs(tmp_path))
    assert unfinished.name in names
    assert len(names) == KEEP_JOBS + 1
    assert names[-1] == Path(outcome.saved_path).parent.name


def test_normalised_ignores_counters_comments_and_empty_tables():
    saved = "# Generated by x\n*filter\n:INPUT ACCEPT [5:300]\n-A INPUT -j DROP\nCOMMIT\n# Completed\n"
    now = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n*mangle\n:INPUT ACCEPT [9:9]\nCOMMIT\n"
    assert normalised("iptables", saved) == normalised("iptables", now)
    assert normalised("iptables", saved) != normalised("iptables", now.replace("-j DROP", "-j ACCEPT"))
    dropping = now.replace(":INPUT ACCEPT [9:9]", ":INPUT DROP [0:0]")  # a table with a DROP policy is not empty
    assert normalised("iptables", now) != normalised("iptables", dropping)
    assert normalised("nft", "counter packets 3 bytes 9 drop") == normalised("nft", "counter packets 0 bytes 0 drop")


def test_restore_text_empties_tables_the_old_rules_lacked():
    text = restore_text("iptables", OLD_V4, CUT_V4)
    assert text.startswith(OLD_V4)
    assert "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]" in text and "--set-xmark" not in text
    assert restore_text("iptables", OLD_V4, GOOD_V4) == OLD_V4
    assert restore_text("nft", OLD_NFT, CUT_NFT) == "flush ruleset\n" + OLD_NFT


def test_a_revert_that_cannot_restore_is_reported_failed(host, tmp_path, monkeypatch):
    """Fault injected: a restore file the host's iptables-restore refuses. The cutting set stays, the old
    path never comes back, and the host is reported failed (never reverted, never kept)."""
    from orchestrator.security import deadman

    monkeypatch.setattr(deadman, "restore_text", lambda tool, saved, new: "*filter\n-A NO-SUCH-CHAIN -j DROP\nCOMMIT\n")
    monkeypatch.setattr(deadman, "SETTLE_S", 3)
    outcome, _ = apply(host, tmp_path, CUT)
    assert outcome.status == "failed", outcome.message
    assert "the old path did not come back" in outcome.message
    (job,) = job_dirs(tmp_path)
    assert (job / "outcome").read_text().startswith("revert-failed")
    host.ns("iptables-restore", input=OLD_V4)  # let the cut sessions end (the fixture checks they do)


def test_normalised_ignores_what_knockd_fwknopd_and_fail2ban_change_by_themselves():
    base = "*filter\n:INPUT DROP [0:0]\n:guard-knock - [0:0]\n:f2b-sshd - [0:0]\n-A INPUT -j guard-knock\nCOMMIT\n"
    busy = base.replace("COMMIT", "-A guard-knock -s 10.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT\n"
                                  "-A f2b-sshd -s 192.0.2.9/32 -j REJECT\n-A FWKNOP_INPUT -s 10.0.0.2/32 -j ACCEPT\nCOMMIT")
    assert normalised("iptables", busy) == normalised("iptables", base)
    assert normalised("iptables", base) != normalised("iptables", base.replace("-j guard-knock", "-j ACCEPT"))
    nft = "table inet guard {\n\tset knock4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n%s\t}\n}\n"
    elements = "\t\telements = { 10.0.0.1 timeout 10s expires 9s,\n\t\t\t     10.0.0.3 timeout 10s expires 2s }\n"
    assert normalised("nft", nft % elements) == normalised("nft", nft % "")
