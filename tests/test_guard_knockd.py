"""The knock client against a real knockd in a throwaway network namespace (never the host's firewall).

knockd runs ``iptables`` inside the namespace; ``iptables -S`` there shows what a knock did. That a knock
did *nothing* is proven by an event, not by waiting: after it, a second door ("probe", its own ports)
is knocked, and its command writes a marker file. knockd handles packets in order, so once the marker
is there the knocks before it were seen and judged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from children import wait_until
from netns import Netns, checked_namespaces
from orchestrator.errors import OrchestratorError
from orchestrator.security.knock import OneTimeLedger, send_sequence

OPEN = [(7001, "tcp"), (7002, "udp"), (7003, "tcp")]
CLOSE = [(7103, "tcp"), (7102, "tcp"), (7101, "udp")]
PROBE = [(7901, "tcp"), (7902, "tcp")]
OTP = ["7201,7202,7203", "7301,7302:udp,7303", "7401,7402,7403"]
RULE = "-A INPUT -s 127.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT"
IPT = "/usr/sbin/iptables"


def knockd_conf(tmp: Path, *, seq_timeout: int = 5, cmd_timeout: int | None = None, otp: Path | None = None) -> str:
    add = f"{IPT} -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
    delete = f"{IPT} -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
    opener = [f"sequence = {seq(OPEN)}", f"seq_timeout = {seq_timeout}", "tcpflags = syn"]
    if cmd_timeout is not None:
        opener += [f"start_command = {add}", f"cmd_timeout = {cmd_timeout}", f"stop_command = {delete}"]
    else:
        opener += [f"command = {add}"]
    doors = {
        "openSSH": opener,
        "closeSSH": [f"sequence = {seq(CLOSE)}", "seq_timeout = 5", "tcpflags = syn", f"command = {delete}"],
        "probe": [f"sequence = {seq(PROBE)}", "seq_timeout = 5", "tcpflags = syn",
                  f"command = /bin/sh -c 'echo %IP% >> {tmp}/probe'"],
    }
    if otp:
        doors["otpSSH"] = [f"one_time_sequences = {otp}", "seq_timeout = 5", "tcpflags = syn", f"command = {add}"]
    text = f"[options]\n\tLogFile = {tmp}/knockd.log\n\tPidFile = {tmp}/knockd.pid\n\tInterface = lo\n"
    for door, lines in doors.items():
        text += f"\n[{door}]\n" + "".join(f"\t{line}\n" for line in lines)
    return text


def seq(knocks) -> str:
    return ",".join(f"{port}:{proto}" for port, proto in knocks)


class Knockd:
    def __init__(self, ns: Netns, tmp: Path):
        self.ns, self.tmp, self.probes = ns, tmp, 0

    def knock(self, knocks, **kwargs) -> None:
        self.ns.call(send_sequence, "127.0.0.1", knocks, seq_timeout=5, **kwargs)

    def settled(self) -> None:
        """Every knock sent before now has been judged: the probe door's marker line appears."""
        self.probes += 1
        self.knock(PROBE)
        marker = self.tmp / "probe"
        wait_until(lambda: marker.exists() and len(marker.read_text().splitlines()) >= self.probes,
                   "knockd did not run the probe door's command", timeout=10)

    def rules(self) -> list[str]:
        return [line for line in self.ns.iptables("-S", "INPUT").splitlines() if "--dport 22" in line]

    def wait_rules(self, count: int) -> None:
        wait_until(lambda: len(self.rules()) == count, lambda: f"want {count} rule(s), have {self.rules()}",
                   timeout=10)


@pytest.fixture
def ns():
    """A fresh namespace; after the test it and its daemons are gone, and no namespace of ours is left."""
    with checked_namespaces() as new:
        yield new()


@pytest.fixture
def start_knockd(ns, tmp_path):
    """``start_knockd(seq_timeout=, cmd_timeout=, otp=)``: knockd on ``lo`` in a fresh namespace."""
    return lambda **options: _start(ns, tmp_path, **options)


@pytest.fixture
def knockd(start_knockd):
    return start_knockd()


def _start(ns: Netns, tmp_path: Path, otp: bool = False, **options) -> Knockd:
    if otp:
        options["otp"] = tmp_path / "otp"
        options["otp"].write_text("".join(f"{line}\n" for line in OTP))
    conf = tmp_path / "knockd.conf"
    conf.write_text(knockd_conf(tmp_path, **options))
    out = tmp_path / "knockd.out"
    ns.running(["knockd", "-i", "lo", "-c", str(conf), "-v", "-D"], what="knockd", log=out,
               ready=lambda: out.exists() and "listening on lo" in out.read_text(), timeout=10)
    return Knockd(ns, tmp_path)


def test_the_open_sequence_adds_the_rule_and_the_close_sequence_removes_it(knockd):
    assert knockd.rules() == []
    knockd.knock(OPEN)
    knockd.wait_rules(1)
    assert knockd.rules() == [RULE]
    knockd.knock(CLOSE)
    knockd.wait_rules(0)


def test_the_wrong_order_opens_nothing(knockd):
    knockd.knock([OPEN[1], OPEN[0], OPEN[2]])
    knockd.knock(OPEN[::-1])
    knockd.knock(OPEN[:2])
    knockd.settled()
    assert knockd.rules() == []
    knockd.knock(OPEN)  # the door still works: the nothing above was knockd's judgement
    knockd.wait_rules(1)


def test_knocks_slower_than_seq_timeout_open_nothing(start_knockd):
    knockd = start_knockd(seq_timeout=1)
    knockd.knock(OPEN, gap=1.6)  # 3.2 s for a 1 s seq_timeout
    knockd.settled()
    assert knockd.rules() == []
    knockd.knock(OPEN)
    knockd.wait_rules(1)


def test_cmd_timeout_removes_the_rule_by_itself(start_knockd):
    knockd = start_knockd(cmd_timeout=1)
    knockd.knock(OPEN)
    knockd.wait_rules(1)
    assert "command timeout" not in (knockd.tmp / "knockd.out").read_text()
    knockd.wait_rules(0)  # nothing but knockd's own timer runs stop_command
    assert "command timeout" in (knockd.tmp / "knockd.out").read_text()


def test_a_used_one_time_sequence_does_not_open_twice(start_knockd, tmp_path):
    knockd = start_knockd(otp=True)
    ledger = OneTimeLedger(tmp_path / "secrets" / "otp.used")
    sequences = [[(int(k.split(":")[0]), k.split(":")[1] if ":" in k else "tcp") for k in line.split(",")]
                 for line in OTP]
    first = ledger.claim(len(OTP), "image web")
    assert first == 0 and ledger.used() == 1  # claimed before sending
    knockd.knock(sequences[first])
    knockd.wait_rules(1)
    assert (tmp_path / "otp").read_text().startswith("#")  # knockd crossed it out
    knockd.knock(sequences[first])  # an eavesdropper's replay
    knockd.settled()
    assert len(knockd.rules()) == 1
    second = ledger.claim(len(OTP), "image web")
    assert second == 1
    knockd.knock(sequences[second])
    knockd.wait_rules(2)
    with pytest.raises(OrchestratorError, match="no unused one-time knock sequence left"):
        ledger.claim(len(OTP), "image web")  # the last line stays unused: knockd 0.8 aborts after it
    assert ledger.used() == 2
