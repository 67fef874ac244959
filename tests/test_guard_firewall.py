"""The rendered default-drop rule set applied in a "server" network namespace, probed from a "client"
namespace over a veth pair (IPv4 and IPv6); knockd and sshd real; never the host's firewall.

A dropped SYN has no answer: "dropped" is a connect that times out (``DROP_WAIT_S``), the one place here
where the absence of an event is the result. Every such probe is paired with one that gets through on
the same path (a served port, or the knock), so a probe that could not pass at all proves nothing alone.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest
import yaml

from children import finished, wait_until
from guard_lab import rendered, sshd_in
from netns import checked_namespaces, linked
from orchestrator.security import render
from orchestrator.security.knock import send_sequence

DROP_WAIT_S = 1.0
SERVED = 8080
REPO = Path(__file__).resolve().parent.parent


def probe(address: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(DROP_WAIT_S)
        try:
            sock.connect((address, port))
            return "open"
        except socket.timeout:
            return "dropped"
        except OSError as exc:
            return f"error {exc.errno}"


def echo_server(port: int) -> socket.socket:
    """A dual-stack listener on ``port`` that echoes each connection's data (accepting in a thread)."""
    server = socket.socket(socket.AF_INET6)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", port))
    server.listen(16)
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    return server


def _serve(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


class Lab:
    def __init__(self, client, server, tmp):
        self.client, self.server, self.tmp = client, server, tmp
        self.link = linked(client, server)
        self.listeners = []
        self.knockd = None

    def guard(self, backend: str, **image):
        self.g = rendered(self.tmp, interface=self.link.b_if, tcp_ports=[SERVED], firewall={"backend": backend},
                          knock={"cmd_timeout": 600}, **image)
        return self

    def listen(self, *ports: int) -> None:
        self.listeners += [self.server.call(echo_server, port) for port in ports]

    def apply(self) -> None:
        if self.g.image.firewall.backend == "nftables":
            self.server.run("nft", "-f", str(self.g.path(render.NFTABLES_CONF)))
            return
        self.server.run("iptables-restore", str(self.g.path(render.RULES_V4)))
        self.server.run("ip6tables-restore", str(self.g.path(render.RULES_V6)))

    def start_knockd(self) -> None:
        out = self.tmp / "knockd.out"
        argv = ["knockd", "-i", self.link.b_if, "-c", str(self.g.knockd_conf), "-v", "-D"]
        self.knockd = self.server.running(argv, what="knockd", log=out, timeout=10,
                                          ready=lambda: out.exists() and "listening on" in out.read_text())

    def knock(self, to: str) -> None:
        knocks = [(k.port, k.proto) for k in self.g.secrets.open]
        self.client.call(send_sequence, to, knocks, seq_timeout=self.g.image.knock.seq_timeout)

    def probe(self, address: str, port: int) -> str:
        return self.client.call(probe, address, port)

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        if self.knockd:
            os.killpg(self.knockd.pid, signal.SIGKILL)  # SIGTERM would wait for its cmd_timeout children


@pytest.fixture
def lab(tmp_path):
    with checked_namespaces() as new:
        made = Lab(new(), new(), tmp_path)
        try:
            yield made
        finally:
            made.close()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_new_connection_to_ssh_is_dropped_over_ipv4_and_ipv6_and_a_served_port_is_not(lab, backend):
    lab.guard(backend).listen(22, SERVED)
    assert lab.probe(lab.link.b4, 22) == "open"  # before: the path works
    lab.apply()
    for address in (lab.link.b4, lab.link.b6):
        assert lab.probe(address, 22) == "dropped", address
        assert lab.probe(address, SERVED) == "open", address


OLD_RULES = "*filter\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\nCOMMIT\n"


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_an_established_connection_survives_the_rules(lab, backend):
    """The host's previous rules already track connections (as any stateful rule set does). Seen here: with
    NO conntrack user before, a session is picked up mid-stream as NEW and dropped until the server
    speaks first (see the report; it matters for the first ``inv harden`` of a bare host)."""
    lab.guard(backend).listen(22)
    for tool in ("iptables-restore", "ip6tables-restore"):
        lab.server.run("sh", "-c", f'printf "$1" | {tool}', "sh", OLD_RULES)

    def connect(address):
        sock = socket.create_connection((address, 22), timeout=5)
        sock.sendall(b"before")
        assert sock.recv(16) == b"before"
        return sock

    sessions = [lab.client.call(connect, address) for address in (lab.link.b4, lab.link.b6)]
    try:
        lab.apply()
        for sock in sessions:
            sock.sendall(b"after")
            assert sock.recv(16) == b"after"
        assert lab.probe(lab.link.b4, 22) == "dropped"
    finally:
        for sock in sessions:
            sock.close()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_knock_opened_source_gets_through_and_only_over_the_family_it_knocked(lab, backend):
    lab.guard(backend).listen(22)
    lab.apply()
    lab.start_knockd()
    assert lab.probe(lab.link.b4, 22) == "dropped"
    lab.knock(lab.link.b4)
    lab.client.call(wait_open, lab.link.b4, 22)
    assert lab.probe(lab.link.b6, 22) == "dropped"  # knocked over IPv4 only
    lab.knock(lab.link.b6)
    lab.client.call(wait_open, lab.link.b6, 22)


def wait_open(address: str, port: int) -> None:
    from orchestrator.security.access import PROBE_S
    import time
    deadline = time.monotonic() + 10
    while probe_quick(address, port) != "open":
        assert time.monotonic() < deadline, f"{address} port {port} never opened after the knock"
        time.sleep(PROBE_S)


def probe_quick(address: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((address, port))
            return "open"
        except OSError:
            return "closed"


def site_config(tmp: Path, lab: Lab, server) -> Path:
    config = {
        "orchestrator": {"state_dir": str(tmp / "state"), "progress": "plain"},
        "fleet": {"hosts": [{"name": "web1", "host": server.host, "port": server.port, "user": server.user,
                             "key_filename": server.key_filename, "known_hosts": server.known_hosts}]},
        "guard": {"secrets_file": str(lab.g.secrets_file),
                  "images": [{"name": "web", "hosts": ["web1"], "interface": lab.link.b_if,
                              "tcp_ports": [SERVED], "knock": {"cmd_timeout": 600}}]},
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def inv(lab: Lab, tmp_path: Path, site: Path, *words: str, name: str):
    argv = lab.client.argv(str(REPO / ".venv/bin/inv"), "-f", str(site), *words)
    return finished(argv, what=f"inv {' '.join(words)}", out_dir=tmp_path / name, cwd=REPO,
                    env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def test_inv_knock_opens_and_inv_knock_close_closes(lab, tmp_path):
    lab.guard("iptables").listen(22)
    lab.apply()
    lab.start_knockd()
    server = type("S", (), {"host": lab.link.b4, "port": 22, "user": "root", "key_filename": None,
                            "known_hosts": None})
    site = site_config(tmp_path, lab, server)
    done = inv(lab, tmp_path, site, "knock", "web1", name="open")
    assert done.returncode == 0, done.stderr
    lab.client.call(wait_open, lab.link.b4, 22)
    done = inv(lab, tmp_path, site, "knock", "web1", "--close", name="close")
    assert done.returncode == 0 and "sent the close sequence (3 knocks, image web)" in done.stdout, done.stderr
    wait_until(lambda: "-A guard-knock" not in lab.server.iptables("-S", "guard-knock"), "close left the rule",
               timeout=10)
    assert lab.probe(lab.link.b4, 22) == "dropped"


def test_inv_ssh_knocks_through_the_rules_and_runs_the_command(lab, tmp_path):
    lab.guard("iptables")
    lab.apply()
    lab.start_knockd()
    server = sshd_in(lab.server, tmp_path / "sshd", lab.link.b4)
    site = site_config(tmp_path, lab, server)
    assert lab.probe(lab.link.b4, 22) == "dropped"
    done = inv(lab, tmp_path, site, "ssh", "web1", "--", "echo", "through", "the", "guard", name="ssh")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "through the guard\n"
    assert "sent the open sequence (3 knocks, image web)" in done.stderr
    leaked = [str(k.port) for k in lab.g.secrets.open + lab.g.secrets.close]
    everything = done.stdout + done.stderr + "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json"))
    assert not [port for port in leaked if port in everything]
