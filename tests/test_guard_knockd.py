"""The knock client against a real knockd running our rendered knockd.conf, behind our rendered
default-drop rules, in a throwaway "server" network namespace; the knocks come from a "client"
namespace over a veth pair (never the host's firewall).

knockd's commands run ``iptables`` inside the server namespace: ``iptables -S guard-knock`` there shows
what a knock did. That a knock did *nothing* is proven by an event, not by waiting: knockd (``-v``)
prints every packet it sees and handles them in order, so once a sentinel packet sent after the knocks
is printed, the knocks were judged; "OPEN SESAME" never appeared and no rule was added. (knockd's pcap
filter holds only its doors' ports: the sentinel is the close sequence's first knock alone, which
starts nothing.)

Seen here (knockd 0.8): knockd keeps ONE attempt per source address, across doors; a wrong knock
fails it, and the source's next packet is spent removing it. So after wrong knocks, or a sentinel, the
same address's next sequence fails too; a test that then proves the door still works knocks from the
client's other (IPv6) address.
"""

from __future__ import annotations

import os
import signal

import pytest

from children import wait_until
from guard_lab import rendered
from netns import checked_namespaces, linked
from orchestrator.errors import OrchestratorError
from orchestrator.security import render
from orchestrator.security.knock import send_sequence
from orchestrator.security.secrets import consume_one_time, read_store


@pytest.fixture
def lab(tmp_path):
    with checked_namespaces() as new:
        made = Lab(new(), new(), tmp_path)
        yield made
        made.kill()


class Lab:
    def __init__(self, client, server, tmp):
        self.client, self.server, self.tmp = client, server, tmp
        self.link = linked(client, server)
        self.out = tmp / "knockd.out"

    def start(self, **image):
        """Render image ``web`` for the server's veth, apply its rules, start knockd on its knockd.conf."""
        self.guard = rendered(self.tmp, interface=self.link.b_if, **image)
        for tool, path in (("iptables-restore", render.RULES_V4), ("ip6tables-restore", render.RULES_V6)):
            self.server.run(tool, str(self.guard.path(path)))
        argv = ["knockd", "-i", self.link.b_if, "-c", str(self.guard.knockd_conf), "-v", "-D"]
        self.proc = self.server.running(argv, what="knockd", log=self.out, timeout=10,
                            ready=lambda: self.out.exists() and f"listening on {self.link.b_if}" in self.out.read_text())
        return self

    def kill(self) -> None:
        """SIGKILL knockd's group: on SIGTERM it waits for its cmd_timeout children (up to cmd_timeout)."""
        if getattr(self, "proc", None):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def knock(self, knocks, *, to: str | None = None, **kwargs) -> None:
        knocks = [(k.port, k.proto) if hasattr(k, "proto") else k for k in knocks]
        self.client.call(send_sequence, to or self.link.b4, knocks, seq_timeout=self.guard.image.knock.seq_timeout,
                         **kwargs)

    def settled(self, to: str | None = None) -> None:
        """Every packet sent before now was seen and judged: the sentinel's line is printed."""
        port = self.guard.secrets.close[0].port
        before = self.text().count(f":{port} ")
        self.knock([(port, "tcp")], to=to)
        wait_until(lambda: self.text().count(f":{port} ") > before, "knockd never printed the sentinel", timeout=10)

    def text(self) -> str:
        return self.out.read_text()

    def rules(self, v6: bool = False) -> list[str]:
        return [line for line in self.server.iptables("-S", render.KNOCK_CHAIN, v6=v6).splitlines()
                if line.startswith("-A")]

    def wait_rules(self, count: int, v6: bool = False) -> None:
        wait_until(lambda: len(self.rules(v6)) == count, lambda: f"want {count} rule(s), have {self.rules(v6)}",
                   timeout=10)


def test_the_open_sequence_adds_the_rule_and_the_close_sequence_removes_it(lab):
    lab.start(knock={"cmd_timeout": 600})
    assert lab.rules() == []
    lab.knock(lab.guard.secrets.open)
    lab.wait_rules(1)
    assert lab.rules() == [f"-A guard-knock -s {lab.link.a4}/32 -p tcp -m tcp --dport 22 -j ACCEPT"]
    lab.knock(lab.guard.secrets.close)
    lab.wait_rules(0)


def test_an_ipv6_knock_opens_for_the_ipv6_source(lab):
    lab.start(knock={"cmd_timeout": 600})
    lab.knock(lab.guard.secrets.open, to=lab.link.b6)
    lab.wait_rules(1, v6=True)
    assert lab.rules(v6=True) == [f"-A guard-knock -s {lab.link.a6}/128 -p tcp -m tcp --dport 22 -j ACCEPT"]
    assert lab.rules() == []


def test_the_wrong_order_opens_nothing(lab):
    lab.start()
    a, b, c = lab.guard.secrets.open
    lab.knock([b, a, c])
    lab.knock([c, b, a])
    lab.knock([a, b])
    lab.settled()
    assert "OPEN SESAME" not in lab.text() and lab.rules() == []
    lab.knock([a, b, c], to=lab.link.b6)  # the door works: the nothing above was knockd's judgement
    lab.wait_rules(1, v6=True)


def test_knocks_slower_than_seq_timeout_open_nothing(lab):
    lab.start(knock={"seq_timeout": 2})  # 1 s was too short for the good knock on a loaded box (seen once)
    lab.knock(lab.guard.secrets.open, gap=2.5)  # each gap alone longer than seq_timeout
    lab.settled()
    assert "OPEN SESAME" not in lab.text() and lab.rules() == []
    lab.knock(lab.guard.secrets.open, to=lab.link.b6)
    lab.wait_rules(1, v6=True)


def test_cmd_timeout_removes_the_rule_by_itself(lab):
    lab.start(knock={"cmd_timeout": 1})
    lab.knock(lab.guard.secrets.open)
    lab.wait_rules(1)
    lab.wait_rules(0)  # nothing but knockd's own timer runs stop_command
    assert "command timeout" in lab.text()


def test_a_used_one_time_sequence_does_not_open_twice(lab):
    """The replay goes first, the next sequence after it: knockd judges packets in order, so when the next
    one has opened, the replay was seen (or filtered out) and opened nothing: exactly two openings."""
    lab.start(knock={"one_time": True, "one_time_count": 4})
    otp_file = lab.guard.path("/etc/knockd/one_time_sequences")
    first, left = consume_one_time(lab.guard.secrets_file, lab.guard.image)
    assert left == 3 and len(read_store(lab.guard.secrets_file)["images"]["web"]["one_time"]) == 3  # saved first
    lab.knock(first)
    lab.wait_rules(1)
    assert otp_file.read_text().startswith("#")  # knockd crossed it out
    lab.knock(first)  # an eavesdropper's replay
    second, _ = consume_one_time(lab.guard.secrets_file, lab.guard.image)
    lab.knock(second)
    lab.wait_rules(2)
    assert lab.text().count("OPEN SESAME") == 2
    consume_one_time(lab.guard.secrets_file, lab.guard.image)
    with pytest.raises(OrchestratorError, match="only the last"):
        consume_one_time(lab.guard.secrets_file, lab.guard.image)  # knockd 0.8 aborts after its last line
