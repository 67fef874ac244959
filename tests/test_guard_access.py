"""``inv knock`` / ``inv ssh`` plumbing: which image a host is in, the ssh command line, the banner wait,
and what reaches the output (never a sequence)."""

from __future__ import annotations

import io
import socket
import threading

import pytest

from netns import checked_namespaces
from orchestrator.config import HostConfig, load_section
from orchestrator.errors import OrchestratorError
from orchestrator.job import execute
from orchestrator.security import access
from orchestrator.security.secrets import load_or_create


def config(tmp_path, images, hosts=("web1", "web2")) -> dict:
    return {
        "orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
        "fleet": {"hosts": [{"name": name, "host": "127.0.0.1", "groups": ["web"]} for name in hosts]},
        "guard": {"secrets_file": str(tmp_path / "secrets.json"), "images": images},
    }


def run_knock(cfg: dict, host: str, *, dry: bool = False, close: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = execute({**cfg, "run": {"dry": dry}}, "knock", access.knock_job(host, close), locked=False, out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("host, images, message", [
    ("nosuch", [], "HOST: no host 'nosuch' in fleet.hosts (known: web1, web2)"),
    ("@web", [], "HOST: '@web' is a group; name one host from fleet.hosts"),
    ("web1", [{"name": "a", "hosts": ["web1"]}, {"name": "b", "hosts": ["@web"]}],
     "guard.images: host 'web1' is in more than one image (a, b)"),
])
def test_a_host_that_names_no_single_image_is_one_line(tmp_path, host, images, message):
    code, output = run_knock(config(tmp_path, images), host)
    assert code == 2 and output.strip().splitlines()[-1] == f"error: {message}"


def test_a_host_in_no_guard_image_has_nothing_to_knock(tmp_path):
    code, output = run_knock(config(tmp_path, [{"name": "a", "hosts": ["web2"]}]), "web1")
    assert code == 0 and "web1: no guard to knock on" in output


def test_dry_run_says_what_it_would_send_and_never_the_sequence(tmp_path):
    cfg = config(tmp_path, [{"name": "a", "hosts": ["@web"]}])
    code, output = run_knock(cfg, "web1", dry=True)
    assert code == 0 and "[dry-run] web1: the open sequence to 127.0.0.1" in output
    with checked_namespaces() as new:  # for real, to closed ports on a namespace's loopback: just packets
        code, output = new().call(run_knock, cfg, "web1")
    assert code == 0
    secrets = load_or_create(tmp_path / "secrets.json", load_section("guard", cfg["guard"]).images[0])
    ports = [str(k.port) for k in secrets.open + secrets.close]
    reports = "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json"))
    assert "sent the open sequence (3 knocks, image a)" in output
    assert not [port for port in ports if port in output + reports]


def test_close_on_an_fwknop_image_is_refused_in_one_line(tmp_path):
    code, output = run_knock(config(tmp_path, [{"name": "a", "hosts": ["web1"], "guard": "fwknop"}]), "web1",
                             close=True)
    assert code == 2 and "--close: image a uses fwknop, whose rules expire by themselves" in output


def test_the_ssh_command_line_comes_from_the_inventory_with_agent_forwarding_off():
    host = HostConfig("web1", "192.0.2.10", user="admin", port=2222, key_filename="/k/id", known_hosts="/k/kh",
                      connect_timeout=7)
    argv = access.ssh_argv(host, ["uptime", "-p"])
    assert argv == ["ssh", "-p", "2222", "-l", "admin", "-o", "ConnectTimeout=7", "-o", "ForwardAgent=no",
                    "-i", "/k/id", "-o", "UserKnownHostsFile=/k/kh", "-o", "StrictHostKeyChecking=yes",
                    "--", "192.0.2.10", "uptime", "-p"]
    assert "ForwardAgent=yes" in access.ssh_argv(host, forward_agent=True)
    bare = access.ssh_argv(HostConfig("web2", "web2.example"))
    assert "-i" not in bare and not any(a.startswith("UserKnownHostsFile") for a in bare)  # the admin's own config


def test_the_remote_command_is_what_follows_the_first_double_dash_word_for_word():
    assert access.remote_command(["inv", "ssh", "web1", "--", "sh", "-c", "echo a  b", "--"]) == \
        ["sh", "-c", "echo a  b", "--"]
    assert access.remote_command(["inv", "ssh", "web1"]) == []


def test_the_banner_wait_gives_up_in_one_line_naming_the_port():
    def closed_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    with checked_namespaces() as new:
        ns = new()
        port = ns.call(closed_port)
        with pytest.raises(OrchestratorError, match=rf"ssh: 127.0.0.1 port {port} did not answer within 1 s"):
            ns.call(access.wait_for_banner, "127.0.0.1", port, timeout=1)


def test_the_banner_wait_refuses_a_port_that_is_not_ssh():
    with checked_namespaces() as new:
        ns = new()
        server = ns.call(_greeter, b"HTTP/1.0 400 nope\r\n")
        try:
            with pytest.raises(OrchestratorError, match="did not answer"):
                ns.call(access.wait_for_banner, "127.0.0.1", server.getsockname()[1], timeout=0.5)
        finally:
            server.close()
        server = ns.call(_greeter, b"SSH-2.0-Test\r\n")
        try:
            assert ns.call(access.wait_for_banner, "127.0.0.1", server.getsockname()[1]) == "SSH-2.0-Test"
        finally:
            server.close()


def _greeter(line: bytes) -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(line)

    threading.Thread(target=serve, daemon=True).start()
    return server
