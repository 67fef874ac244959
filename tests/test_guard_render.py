"""Rendered guard files against the real daemons (knockd, fwknopd, fail2ban-client, iptables-restore, nft),
each in throwaway network namespaces or scratch copies; broken values refused by them; the rule set's
behaviour between two namespaces; ``inv guard.render`` leaving no secret anywhere but the secrets file and
the rendered tree."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_section
from orchestrator.errors import ConfigError
from orchestrator.security import render as r
from orchestrator.security import validate as v
from orchestrator.security.jobs import write_tree
from orchestrator.security.render import RenderedFile, render_image
from orchestrator.security.secrets import load_or_create

pytestmark = pytest.mark.timeout(180)
REPO_ROOT = Path(__file__).resolve().parents[1]

IMAGES = {
    "knockd-iptables": {"tcp_ports": [80, 443], "udp_ports": [53]},
    "knockd-nftables": {"tcp_ports": [80], "firewall": {"backend": "nftables"}},
    "knockd-one-time": {"knock": {"one_time": True, "one_time_count": 6, "tcpflags": "syn,!ack"}},
    "knockd-udp-given": {"ssh_port": 2222, "knock": {"open": ["7001:udp", 7002, "7003:udp"]}},
    "fwknop": {"guard": "fwknop", "tcp_ports": [443]},
    "none-v4-only": {"guard": "none", "tcp_ports": [80], "firewall": {"ipv6": False, "allow_ping": False}},
    "nft-v4-only": {"firewall": {"backend": "nftables", "ipv6": False}},
    "mail-each-systemd": {"fail2ban": {"mail": "each", "backend": "systemd", "destemail": "ops@example.com"}},
    "mail-digest-polling": {"fail2ban": {"mail": "digest", "backend": "polling", "logpath": "/var/log/messages",
                                         "ignoreip": ["203.0.113.0/24", "2001:db8::/32"], "recidive": False,
                                         "increment": False, "bantime": "3600", "findtime": "1h30m"}},
}


def image(name: str = "web", **settings):
    return load_section("guard", {"images": [{"name": name, **settings}]}).images[0]


def rendered(tmp_path: Path, variant: str):
    cfg = image(**IMAGES[variant])
    secrets = load_or_create(tmp_path / "secrets.json", cfg)
    return cfg, secrets, render_image(cfg, secrets)


@pytest.fixture
def made_namespaces(monkeypatch):
    """The names of the namespaces validation creates (a spy around the real ``network_namespace``)."""
    made: list[str] = []
    real = v.network_namespace

    @contextmanager
    def spy():
        with real() as name:
            made.append(name)
            yield name

    monkeypatch.setattr(v, "network_namespace", spy)
    return made


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_rendered_files_are_accepted_by_the_daemons_themselves(tmp_path, variant, made_namespaces):
    cfg, secrets, files = rendered(tmp_path, variant)
    passed = v.validate_image(cfg, secrets, files, key="guard.images[0]")
    assert len(made_namespaces) == 1 and not set(made_namespaces) & namespaces()
    expected = {"structure", "jail", "firewall", "fail2ban"}
    expected |= {"knockd": {"sequences", "knock-commands", "knockd"}, "fwknop": {"keys", "fwknopd"},
                 "none": set()}[cfg.guard]
    assert set(passed) == expected
    secret_files = [p for p in files if "knockd" in p or "fwknop" in p or "rules" in p or "nftables" in p]
    assert all(files[p].mode == 0o600 for p in secret_files)


def test_what_each_file_says(tmp_path):
    cfg, secrets, files = rendered(tmp_path, "knockd-iptables")
    knockd = files[r.KNOCKD_CONF].text
    assert f"sequence      = {r.knock_text(secrets.open)}\n" in knockd
    assert f"sequence      = {r.knock_text(secrets.close)}\n" in knockd
    assert "start_command = /sbin/iptables -I guard-knock -s %IP% -p tcp --dport 22 -j ACCEPT" in knockd
    assert "stop_command_6 = /sbin/ip6tables -D guard-knock -s %IP% -p tcp --dport 22 -j ACCEPT" in knockd
    assert "cmd_timeout   = 10\n" in knockd and "seq_timeout   = 5\n" in knockd
    v4, v6 = files[r.RULES_V4].text, files[r.RULES_V6].text
    for text in (v4, v6):
        assert ":INPUT DROP [0:0]" in text and "-A INPUT -p tcp --dport 22 -j guard-knock" in text
        assert "-A INPUT -p tcp --dport 443 -j ACCEPT" in text and "-A INPUT -p udp --dport 53 -j ACCEPT" in text
    assert "--icmp-type fragmentation-needed" in v4 and "--icmpv6-type packet-too-big" in v6
    assert "neighbour-solicitation -m hl --hl-eq 255" in v6 and "router-advertisement" in v6
    jail = files[r.JAIL_LOCAL].text
    assert 'filter   = sshd[_daemon="sshd(?:-session)?"]' in jail and "banaction = iptables-multiport" in jail
    assert "ignoreip = 127.0.0.1/8 ::1\n" in jail and "[recidive]" in jail and "bantime.increment = true" in jail
    assert "action = %(action_)s" in jail


def test_nftables_and_mail_variants(tmp_path):
    _, _, files = rendered(tmp_path, "knockd-nftables")
    assert r.RULES_V4 not in files and "table inet guard {" in files[r.NFTABLES_CONF].text
    assert "banaction = nftables-multiport" in files[r.JAIL_LOCAL].text
    assert "add element inet guard knock4 { %IP% timeout 10s }" in files[r.KNOCKD_CONF].text
    _, _, files = rendered(tmp_path, "mail-each-systemd")
    jail = files[r.JAIL_LOCAL].text
    assert "action = %(action_mwl)s" in jail and "destemail = ops@example.com" in jail
    assert "journalmatch = _SYSTEMD_UNIT=sshd.service + _COMM=sshd + _COMM=sshd-session" in jail
    _, _, files = rendered(tmp_path, "mail-digest-polling")
    jail = files[r.JAIL_LOCAL].text
    assert "action = %(action_)s" in jail and "logpath  = /var/log/messages" in jail and "[recidive]" not in jail
    assert "ignoreip = 127.0.0.1/8 ::1 203.0.113.0/24 2001:db8::/32\n" in jail
    assert files[r.DIGEST_CRON].mode == 0o755 and "fail2ban-client banned" in files[r.DIGEST_CRON].text
    subprocess.run(["sh", "-n", "/dev/stdin"], input=files[r.DIGEST_CRON].text, text=True, check=True)


def test_fail2ban_sees_the_sshd_session_fix_and_our_journalmatch(tmp_path):
    """fail2ban's own dump of our jail (fail2ban-client -d): the _daemon fix reached the filter."""
    cfg, secrets, files = rendered(tmp_path, "mail-each-systemd")
    etc = tmp_path / "f2b"
    subprocess.run(["cp", "-a", "/etc/fail2ban", str(etc)], check=True)
    for extra in (etc / "jail.d").glob("*"):
        extra.unlink()
    (etc / "jail.local").write_text(files[r.JAIL_LOCAL].text.replace("/var/log/fail2ban.log", str(tmp_path / "l")))
    (tmp_path / "l").touch()
    dump = subprocess.run(["fail2ban-client", "-c", str(etc), "-d"], capture_output=True, text=True).stdout
    assert "sshd(?:-session)?" in dump
    assert "_COMM=sshd-session" in dump


BROKEN = [
    ("knockd-iptables", r.KNOCKD_CONF, "UseSyslog", "UseSyslog = no", r"knockd refused .*syntax error"),
    ("knockd-iptables", r.KNOCKD_CONF, "-I guard-knock", "-I no-such-chain", r"knockd's start_command refused"),
    ("knockd-nftables", r.KNOCKD_CONF, "knock6 {", "knock7 {", r"knockd's start_command_6 refused"),
    ("knockd-iptables", r.RULES_V4, "-j guard-knock", "-j NOSUCHTARGET", r"iptables-restore refused"),
    ("knockd-iptables", r.RULES_V6, "packet-too-big", "packet-too-bigg", r"ip6tables-restore refused"),
    ("knockd-nftables", r.NFTABLES_CONF, "policy drop;", "policy dorp;", r"nft -c refused .*syntax error"),
    ("knockd-nftables", r.NFTABLES_CONF, "ct state invalid drop", "jump nosuchchain", r"nft -c refused"),
    ("fwknop", r.ACCESS_CONF, "KEY_BASE64          ", "KEY_BASE64          !!", r"fwknopd refused"),
    ("fwknop", r.FWKNOPD_CONF, "ENABLE_PCAP_PROMISC ", "ENABLE_PCAP_PROMISCUOUS ", r"fwknopd refused.*unknown"),
    ("knockd-iptables", r.JAIL_LOCAL, "%(action_)s", "%(action_nosuch)s", r"fail2ban-client -t refused"),
    ("knockd-iptables", r.JAIL_LOCAL, "filter   = sshd", "filter   = sshdd", r"fail2ban-client -t refused"),
    ("knockd-iptables", r.JAIL_LOCAL, "banaction = iptables-multiport", "banaction = iptables-nosuch",
     r"banaction iptables-nosuch has no action\.d"),
    ("knockd-iptables", r.JAIL_LOCAL, "[recidive]", "[recidive]\n[evil]", r"section we did not write"),
    ("knockd-iptables", r.KNOCKD_CONF, "[closeSSH]", "[closeSSH]\n[openSSH]", r"section we did not write"),
]


@pytest.mark.parametrize("variant, path, old, new, refusal", BROKEN, ids=[f"{b[1]}:{b[3]}" for b in BROKEN])
def test_a_broken_value_is_refused_by_the_real_validator(tmp_path, variant, path, old, new, refusal,
                                                        made_namespaces):
    cfg, secrets, files = rendered(tmp_path, variant)
    assert old in files[path].text
    files[path] = RenderedFile(files[path].text.replace(old, new, 1), files[path].mode)
    with pytest.raises(v.ValidationError) as caught:
        v.validate_image(cfg, secrets, files, key="guard.images[0]")
    message = str(caught.value)
    assert message.startswith("guard.images[0]") and "\n" not in message
    assert re.search(refusal, message), message
    assert not set(made_namespaces) & namespaces(), "the throwaway namespace is gone after a refusal too"


def test_a_refusal_quoting_a_secret_is_scrubbed(tmp_path):
    cfg, secrets, files = rendered(tmp_path, "knockd-iptables")
    seq = r.knock_text(secrets.open)
    text = files[r.KNOCKD_CONF].text.replace(f"sequence      = {seq}", f"sequence      {seq}")  # no "="
    files[r.KNOCKD_CONF] = RenderedFile(text, 0o600)
    with pytest.raises(v.ValidationError) as caught:
        v.validate_image(cfg, secrets, files, key="guard.images[0]")
    message = str(caught.value)
    assert "knockd refused /etc/knockd.conf: config: line 8: syntax error (line 8: 'sequence      <redacted>')" \
        == message.split(": ", 1)[1]
    assert seq not in message and not any(str(k.port) in message for k in secrets.open)


def test_given_sequences_touching_the_ssh_port_are_refused_by_our_own_check(tmp_path):
    cfg, secrets, files = rendered(tmp_path, "knockd-iptables")
    secrets.close[0] = secrets.close[0]._replace(port=22)
    with pytest.raises(ConfigError, match=r"^guard\.images\[0\]\.knock\.close\[0\]: the SSH port"):
        v.validate_image(cfg, secrets, files, key="guard.images[0]", daemons=False)


def test_the_namespace_is_deleted_on_every_path():
    with v.network_namespace() as ns:
        assert ns in namespaces() and ns.startswith("geo-")
    assert ns not in namespaces()
    with pytest.raises(RuntimeError):
        with v.network_namespace() as ns:
            raise RuntimeError("boom")
    assert ns not in namespaces()
    with pytest.raises(KeyboardInterrupt):
        with v.network_namespace() as ns:
            raise KeyboardInterrupt
    assert ns not in namespaces()


def test_validation_leaves_no_namespace_and_no_knockd(tmp_path, made_namespaces):
    cfg, secrets, files = rendered(tmp_path, "knockd-one-time")
    v.validate_image(cfg, secrets, files, key="guard.images[0]")
    children = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())], capture_output=True,
                              text=True).stdout
    assert "knockd" not in children and "ip" not in children.split()
    assert made_namespaces and not set(made_namespaces) & namespaces()


def test_write_tree_replaces_the_whole_tree(tmp_path):
    target = tmp_path / "out" / "web"
    write_tree(target, {"/etc/a.conf": RenderedFile("a\n", 0o600), "/etc/x/b": RenderedFile("b\n", 0o644)})
    assert (target / "etc/a.conf").stat().st_mode & 0o777 == 0o600 and (target / "etc/x/b").read_text() == "b\n"
    write_tree(target, {"/etc/c": RenderedFile("c\n", 0o755)})
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == ["c"]
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700 and sorted(os.listdir(tmp_path / "out")) == ["web"]


# --- the rule set's behaviour between two namespaces --------------------------------------------------------


@contextmanager
def two_hosts():
    """A client and a server namespace joined by a veth pair: 10.77.0.1/fd77::1 (client), .2/::2 (server)."""
    with v.network_namespace() as client, v.network_namespace() as server:
        a, b = f"gc{client[4:]}", f"gs{server[4:]}"
        subprocess.run(["ip", "-n", client, "link", "add", a, "type", "veth", "peer", "name", b, "netns", server],
                       check=True)
        for ns, dev, n in ((client, a, 1), (server, b, 2)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"10.77.0.{n}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", f"fd77::{n}/64", "dev", dev, "nodad"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        yield client, server


LISTENER = """
import socket, sys, threading
def echo(conn):
    while data := conn.recv(64):
        conn.sendall(data)
def serve(srv):
    while True:
        threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()
for port in map(int, sys.argv[1:]):
    srv = socket.socket(socket.AF_INET6); srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind(("::", port)); srv.listen(16)
    threading.Thread(target=serve, args=(srv,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = """
import socket, sys
for host in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET); s.settimeout(0.5)
    try:
        s.connect((host, int(sys.argv[1]))); print("open")
    except OSError:
        print("closed")
    finally:
        s.close()
"""


def probe(ns: str, port: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, str(port), "10.77.0.2", "fd77::2"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.split()


def until_reachable(ns: str, port: int) -> list[str]:
    """Probe until both families connect (a fresh veth's IPv6 needs neighbour discovery first), at most 10 s."""
    import time

    deadline = time.monotonic() + 10
    while (got := probe(ns, port)) != ["open", "open"] and time.monotonic() < deadline:
        pass
    return got


def sh_in(ns: str, command: str, ip: str) -> None:
    """A knockd command as knockd runs it, %IP% filled in (split into an argv: no shell)."""
    import shlex

    subprocess.run(["ip", "netns", "exec", ns, *shlex.split(command.replace("%IP%", ip))], check=True)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_the_rule_set_drops_ssh_over_v4_and_v6_until_knockd_lets_a_source_in(tmp_path, backend):
    cfg = image(tcp_ports=[80], firewall={"backend": backend})
    files = render_image(cfg, load_or_create(tmp_path / "s.json", cfg))
    commands = v.knockd_commands(files[r.KNOCKD_CONF].text)
    with two_hosts() as (client, server):
        listener = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", LISTENER, "22", "80"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "ready"
            assert until_reachable(client, 22) == ["open", "open"], "before the rules, both families get through"
            if backend == "nftables":
                subprocess.run(["ip", "netns", "exec", server, "nft", "-f", "-"], input=files[r.NFTABLES_CONF].text,
                               text=True, check=True)
            else:
                for tool, path in (("iptables-restore", r.RULES_V4), ("ip6tables-restore", r.RULES_V6)):
                    subprocess.run(["ip", "netns", "exec", server, tool], input=files[path].text, text=True,
                                   check=True)
            assert probe(client, 80) == ["open", "open"], "a served port is open over IPv4 and IPv6"
            assert probe(client, 22) == ["closed", "closed"], "SSH is dropped over IPv4 and IPv6"
            sh_in(server, commands["start_command"], "10.77.0.1")
            sh_in(server, commands["start_command_6"], "fd77::1")
            assert probe(client, 22) == ["open", "open"], "the knocked source gets through"
            with established(client) as conn:
                sh_in(server, commands["stop_command"], "10.77.0.1")
                sh_in(server, commands["stop_command_6"], "fd77::1")
                assert probe(client, 22) == ["closed", "closed"], "after stop_command a new connection is dropped"
                assert conn() == "alive", "the established SSH connection survives stop_command"
        finally:
            listener.stdin.close()
            listener.wait(timeout=10)


@contextmanager
def established(ns: str):
    """A TCP connection from ``ns`` to the server's port 22 held open; calling the yielded function sends
    bytes through it and says whether the echo came back (``alive``) or not (``dead``)."""
    code = """
import socket, sys
s = socket.create_connection(("10.77.0.2", 22), timeout=2)
print("up", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"ping"); print("alive" if s.recv(4) == b"ping" else "dead", flush=True)
except OSError as e:
    print("dead", e, flush=True)
"""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"

        def check() -> str:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            return proc.stdout.readline().split()[0]

        yield check
    finally:
        proc.kill()
        proc.wait()


# --- inv guard.render, and the secrets grep ------------------------------------------------------------------


def site(tmp_path: Path, **guard) -> Path:
    config = {
        "orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
        "fleet": {"hosts": [{"name": "web1", "host": "127.0.0.1", "groups": ["web"]}]},
        "guard": {"images": [
            {"name": "web", "hosts": ["@web"], "tcp_ports": [80, 443], "knock": {"one_time": True,
                                                                                 "one_time_count": 6}},
            {"name": "spa", "hosts": ["web1"], "guard": "fwknop"},
            {"name": "nft", "hosts": ["web1"], "firewall": {"backend": "nftables"}},
        ], **guard},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def inv(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), "-f", str(site(tmp_path)), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def every_secret(secrets_file: Path) -> list[str]:
    """Each key, and each sequence written the ways a leak would show it: 7001,7002,7003 and 7001:tcp,..."""
    words = []
    for entry in json.loads(secrets_file.read_text())["images"].values():
        words += [entry["spa_key"], entry["hmac_key"]]
        for seq in [entry["open"], entry["close"], *entry.get("one_time", [])]:
            words += [",".join(seq), ",".join(k.split(":")[0] for k in seq), " ".join(k.split(":")[0] for k in seq)]
    return words


def test_inv_guard_render_leaves_no_secret_outside_the_secrets_file_and_the_tree(tmp_path):
    done = inv(tmp_path, "guard.render")
    assert done.returncode == 0, done.stderr
    dry = inv(tmp_path, "guard.render", "--dry")
    assert dry.returncode == 0, dry.stderr
    state = tmp_path / "state"
    secrets_file = state / "guard" / "secrets.json"
    words = every_secret(secrets_file)
    stored = json.loads(secrets_file.read_text())["images"]
    tree = state / "guard" / "rendered"
    knockd = (tree / "nft" / "etc" / "knockd.conf").read_text()
    assert ",".join(stored["nft"]["open"]) in knockd and ",".join(stored["nft"]["open"]) in words, \
        "the grep would find a leak"
    assert stored["spa"]["spa_key"] in (tree / "spa" / "etc/fwknop/access.conf").read_text()
    left = {"stdout": done.stdout + dry.stdout, "stderr": done.stderr + dry.stderr}
    for path in state.rglob("*"):
        if path.is_file() and path != secrets_file and tree not in path.parents:
            left[str(path)] = path.read_text(errors="replace")
    assert any("reports" in name for name in left), "the run report was grepped"
    for name, text in left.items():
        for word in words:
            assert word not in text, f"a secret reached {name}"
    assert "web: 5 files, guard knockd" in done.stdout and "would write" in dry.stdout
    report = json.loads((state / "reports" / "guard-render-latest.json").read_text())
    assert report["status"] == "ok" and report["summary"]["files"]["spa"]["/etc/fwknop/access.conf"] == "0600"


def test_inv_guard_render_dry_writes_nothing(tmp_path):
    dry = inv(tmp_path, "guard.render", "--dry", "--image", "spa")
    assert dry.returncode == 0, dry.stderr
    assert "would write" in dry.stdout and "spa: 5 files" in dry.stdout and "web:" not in dry.stdout
    assert not (tmp_path / "state" / "guard").exists()


def test_inv_guard_render_bad_value_exits_2_naming_image_and_key(tmp_path):
    path = site(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["guard"]["images"][1]["knock"] = {"close": [7001, 22]}
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), "-f", str(path), "guard.render"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "guard.images[1].knock.close[1]: 22 is the SSH port; a knock must not touch it"
    assert not (tmp_path / "state").exists(), "nothing made before the config is good"


def test_inv_guard_render_unknown_image_exits_2(tmp_path):
    done = inv(tmp_path, "guard.render", "--image", "db")
    assert done.returncode == 2 and "--image: no image 'db' in guard.images (web, spa, nft)" in done.stderr


def test_a_knock_client_can_reach_knockd_in_its_namespace_after_a_render(tmp_path):
    """The rendered knockd.conf drives a real knockd: the open sequence adds the rule (the acceptance tests of
    inv knock are the guard-knock branch's; this proves the rendered file, not the client)."""
    cfg = image(tcp_ports=[80])
    secrets = load_or_create(tmp_path / "s.json", cfg)
    files = render_image(cfg, secrets)
    conf = tmp_path / "knockd.conf"
    conf.write_text(files[r.KNOCKD_CONF].text.replace("UseSyslog", f"LogFile = {tmp_path}/knockd.log"))
    with v.network_namespace() as ns:
        subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=files[r.RULES_V4].text, text=True,
                       check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "knockd", "-i", "lo", "-c", str(conf), "-D", "-v"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            for line in proc.stdout:
                if "listening on" in line:
                    break
            knock = ("import socket,sys\nfor p in map(int, sys.argv[1:]):\n s=socket.socket(); s.settimeout(0.2)\n"
                     " try: s.connect(('127.0.0.1', p))\n except OSError: pass\n s.close()\n")
            subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", knock,
                            *(str(k.port) for k in secrets.open)], check=True)
            for line in proc.stdout:
                if "running command" in line:
                    break
            want = "-A guard-knock -s 127.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT"
            assert want in wait_for_rule(ns, want), "the open sequence ran start_command"
        finally:
            os.killpg(proc.pid, 9)  # knockd and its child waiting out cmd_timeout (a TERM waits for it)
            proc.wait(timeout=10)


def wait_for_rule(ns: str, rule: str) -> str:
    """``iptables -S guard-knock`` once it shows ``rule`` (knockd logs "running command" before the command
    has run), or after 5 s of looking."""
    import time

    deadline = time.monotonic() + 5
    while True:
        rules = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-S", r.KNOCK_CHAIN], capture_output=True,
                               text=True, check=True).stdout
        if rule in rules or time.monotonic() > deadline:
            return rules
        time.sleep(0.05)


def test_a_missing_validator_is_this_machines_problem_said_in_one_line(tmp_path, monkeypatch):
    cfg, secrets, files = rendered(tmp_path, "knockd-iptables")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nothing found: as on a box without the daemons
    with pytest.raises(Exception) as caught:
        v.validate_image(cfg, secrets, files, key="guard.images[0]")
    assert not isinstance(caught.value, ConfigError), "not a bad setting: exit 1, not 2"
    assert str(caught.value).startswith("guard.images[0]: cannot validate here: ip, fail2ban-client, "
                                        "iptables-restore, ip6tables-restore, knockd not found")


def test_guard_render_writes_the_audit_rules_too(tmp_path):
    from orchestrator.job import execute
    from orchestrator.security import jobs

    config = {"orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
              "guard": {"images": [{"name": "web", "audit": {"enabled": True, "everything_auid": 7005}}]}}
    out = io.StringIO()
    assert execute(config, "guard-render", jobs.render_images, out=out) == 0, out.getvalue()
    rules = tmp_path / "state/guard/rendered/web/etc/audit/rules.d"
    assert sorted(p.name for p in rules.iterdir()) == ["10-base-config.rules", "30-main.rules", "31-privileged.rules",
                                                      "40-exec.rules", "70-everything.rules"]
    assert "-F auid=7005" in (rules / "70-everything.rules").read_text() and "audit" in out.getvalue()
