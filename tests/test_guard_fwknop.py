"""fwknopd in a throwaway network namespace: one SPA packet from our client opens, a real replay of the
captured packet does not.

The replay is real: an eavesdropper's packet socket (``AF_PACKET``) in the namespace copies the UDP
payload off the wire as our client sends it, and the very same bytes are sent again later. (fwknopd's
``--pcap-file`` test mode accepts replays, so it would prove nothing.)
"""

from __future__ import annotations

import io
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from children import wait_until
from guard_lab import rendered
from netns import Netns, checked_namespaces
from orchestrator.errors import OrchestratorError
from orchestrator.job import execute
from orchestrator.security.access import knock_job
from orchestrator.security import knock
from orchestrator.security import render
from orchestrator.security.knock import SPA_PORT, send_spa
from orchestrator.security.secrets import generate_key

ETH_P_IP = 0x0800


@pytest.fixture
def ns():
    """A fresh namespace; after the test it and its daemons are gone, and no namespace of ours is left."""
    with checked_namespaces() as new:
        yield new()


@pytest.fixture
def guard(tmp_path):
    """Image ``web`` with guard fwknop, rendered (fwknopd.conf, access.conf with generated keys) for ``lo``."""
    return rendered(tmp_path, guard="fwknop", interface="lo", knock={"cmd_timeout": 2})


@pytest.fixture
def keys(guard) -> tuple[str, str]:
    return guard.secrets.spa_key.reveal(), guard.secrets.hmac_key.reveal()


@pytest.fixture
def fwknopd(ns: Netns, tmp_path, guard):
    run = tmp_path / "run"
    run.mkdir()
    conf, access = guard.path(render.FWKNOPD_CONF), guard.path(render.ACCESS_CONF)
    subprocess.run(["fwknopd", "-c", str(conf), "-a", str(access), "--exit-parse-config"], check=True,
                   capture_output=True)
    log = tmp_path / "fwknopd.log"
    ns.running(["fwknopd", "-f", "-i", "lo", "-c", str(conf), "-a", str(access), "-r", str(run),
                "-p", str(run / "fwknopd.pid"), "-d", str(run / "digest.cache")], what="fwknopd", log=log,
               ready=lambda: log.exists() and "main event loop" in log.read_text(), timeout=15)
    return log


def spa_rules(ns: Netns) -> list[str]:
    done = ns.run("iptables", "-S", "FWKNOP_INPUT", check=False)
    return [line for line in done.stdout.splitlines() if "--dport 22" in line]


def eavesdropper() -> socket.socket:
    """A packet socket on ``lo`` (made inside the namespace) that sees every IPv4 packet there."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind(("lo", ETH_P_IP))
    sock.settimeout(10)
    return sock


def captured_spa(sock: socket.socket) -> bytes:
    """The UDP payload of the first packet to the SPA port."""
    while True:
        packet = sock.recv(65535)
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] == socket.IPPROTO_UDP and struct.unpack("!H", packet[ihl + 2:ihl + 4])[0] == SPA_PORT:
            return packet[ihl + 8:]


def replay(payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, ("127.0.0.1", SPA_PORT))


def count(log: Path, text: str) -> int:
    return log.read_text().count(text)


def test_a_valid_spa_packet_opens_and_its_replay_is_refused(ns, fwknopd, keys):
    sock = ns.call(eavesdropper)
    try:
        ns.call(send_spa, "127.0.0.1", *keys, [(22, "tcp")])
        payload = captured_spa(sock)
    finally:
        sock.close()
    wait_until(lambda: len(spa_rules(ns)) == 1, lambda: f"no SPA rule: {fwknopd.read_text()[-800:]}", timeout=10)
    wait_until(lambda: not spa_rules(ns), "the SPA rule did not expire", timeout=15)
    ns.call(replay, payload)
    wait_until(lambda: count(fwknopd, "Replay detected") == 1, "fwknopd did not judge the replay", timeout=10)
    assert spa_rules(ns) == []
    ns.call(send_spa, "127.0.0.1", *keys, [(22, "tcp")])  # a fresh packet still opens: only the replay was refused
    wait_until(lambda: len(spa_rules(ns)) == 1, "a fresh SPA packet did not open", timeout=10)


def test_a_packet_with_a_wrong_hmac_key_opens_nothing(ns, fwknopd, keys):
    wrong_hmac = generate_key(64)
    ns.call(send_spa, "127.0.0.1", keys[0], wrong_hmac, [(22, "tcp")])
    wait_until(lambda: "HMAC" in fwknopd.read_text().split("main event loop", 1)[1], "fwknopd did not judge it",
               timeout=10)
    assert spa_rules(ns) == []


def test_the_keys_reach_fwknop_only_in_a_0600_file(ns, tmp_path, monkeypatch, keys):
    """A wrapper in front of the real client records its command line and the rc file's mode."""
    record = tmp_path / "record"
    wrapper = tmp_path / "fwknop"
    wrapper.write_text("#!/bin/sh\n"
                       f"tr '\\0' ' ' < /proc/$$/cmdline > {record}; echo >> {record}\n"
                       f"stat -c %a \"$2\" >> {record}\n"
                       "exec fwknop \"$@\"\n")
    wrapper.chmod(stat.S_IRWXU)
    monkeypatch.setattr(knock, "FWKNOP", str(wrapper))
    ns.call(send_spa, "127.0.0.1", *keys, [(22, "tcp")])
    argv, mode = record.read_text().splitlines()
    assert keys[0] not in argv and keys[1] not in argv and "--rc-file" in argv
    assert mode == "600"
    rc = argv.split("--rc-file ")[1].split()[0]
    assert not Path(rc).exists()  # removed after the send


def test_a_failing_fwknop_is_one_line_without_the_keys(tmp_path, monkeypatch, keys):
    wrapper = tmp_path / "fwknop"
    wrapper.write_text("#!/bin/sh\ncat \"$2\"; cat \"$2\" >&2; exit 3\n")
    wrapper.chmod(stat.S_IRWXU)
    monkeypatch.setattr(knock, "FWKNOP", str(wrapper))
    with pytest.raises(OrchestratorError) as caught:
        send_spa("127.0.0.1", *keys, [(22, "tcp")])
    assert str(caught.value) == "fwknop: sending the SPA packet to 127.0.0.1 failed (exit 3)"


def test_inv_knock_on_an_fwknop_image_sends_one_spa_packet_that_opens(ns, fwknopd, guard, tmp_path):
    cfg = {
        "orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
        "fleet": {"hosts": [{"name": "web1", "host": "127.0.0.1"}]},
        "guard": {"secrets_file": str(guard.secrets_file),
                  "images": [{"name": "web", "hosts": ["web1"], "guard": "fwknop", "interface": "lo"}]},
        "run": {"dry": False},
    }
    out = io.StringIO()
    code = ns.call(execute, cfg, "knock", knock_job("web1", False), locked=False, out=out)
    assert code == 0 and "web1: sent one SPA packet (image web)" in out.getvalue(), out.getvalue()
    wait_until(lambda: len(spa_rules(ns)) == 1, lambda: f"no SPA rule: {fwknopd.read_text()[-800:]}", timeout=10)
    assert keys_absent(guard, out.getvalue() + "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json")))


def keys_absent(guard, text: str) -> bool:
    return guard.secrets.spa_key.reveal() not in text and guard.secrets.hmac_key.reveal() not in text
