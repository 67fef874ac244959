"""RemoteTarget against a real sshd on a loopback port (no mocks).

The "remote" host is this machine, reached as root through a throwaway sshd,
so remote paths below are simply paths under ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from children import HANG_S, no_sshd_session_left, wait_gone, wait_until
from orchestrator.errors import CommandError, ConfigError, Interrupted, OrchestratorError
from orchestrator.run import RemoteTarget
from orchestrator.run.remote import remote_command
from orchestrator.signals import terminate_unwinds
from sshd import SshServer, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("every_session_ends")]  # above children.HANG_S: a hang fails in a wait that names it

PY_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"






def connect(server: SshServer, **kwargs) -> RemoteTarget:
    """A RemoteTarget for ``server``; strict host key checking unless overridden."""
    options = dict(
        user=server.user,
        port=server.port,
        key_filename=server.key_filename,
        known_hosts=server.known_hosts,
    )
    return RemoteTarget(server.host, **{**options, **kwargs})


@pytest.fixture
def target(sshd):
    with connect(sshd) as remote:
        yield remote


def test_run_returns_stdout_stderr_and_rc(target):
    result = target.run(["sh", "-c", "echo out; echo err >&2"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_multibyte_output_split_across_reads_is_intact(sshd):
    text = "x" + "é€" * 3000  # odd offsets: read chunks end inside characters
    lines: list[str] = []
    with connect(sshd, echo=lines.append) as remote:
        plain = remote.run(["printf", "%s\n", text])
        streamed = remote.run(["printf", "%s\n", text], stream=True)
    assert plain.stdout == streamed.stdout == text + "\n"
    assert lines == [text]


def test_documented_injection_example_prints_verbatim(target):
    result = target.run(["printf", "%s\n", "a b; rm -rf /tmp/x $(id)"])
    assert result.stdout == "a b; rm -rf /tmp/x $(id)\n"


def test_hostile_arguments_arrive_verbatim_and_run_nothing(target, tmp_path):
    canary = tmp_path / "canary"
    args = [
        "two words",
        "it's \"quoted\"",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        f"x && touch {canary} || true",
        "line one\nline two",
        "*",
        "-n",
        "",
        "tab\there ${HOME} 'unterminated",
    ]
    result = target.run(["python3", "-c", PY_ARGV, *args])
    assert json.loads(result.stdout) == args
    assert not canary.exists()


def test_nonzero_exit_raises_command_error_with_check(target, sshd):
    with pytest.raises(CommandError) as caught:
        target.run(["sh", "-c", "echo boom >&2; exit 7"])
    assert caught.value.returncode == 7
    assert str(caught.value) == f"ssh:root@127.0.0.1:{sshd.port}: sh exited 7: boom"


def test_nonzero_exit_returns_result_without_check(target):
    result = target.run(["sh", "-c", "echo partial; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.ok) == (3, "partial\n", False)


def test_input_str_reaches_stdin(target):
    assert target.run(["cat"], input="héllo\nwörld\n").stdout == "héllo\nwörld\n"


def test_input_bytes_arrive_byte_exact(target):
    payload = bytes(range(256)) * 4096 + os.urandom(100_000)
    digest = "import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    result = target.run(["python3", "-c", digest], input=payload)
    assert result.stdout.strip() == hashlib.sha256(payload).hexdigest()


def test_without_input_stdin_is_at_eof(target):
    result = target.run(["cat"], timeout=10)
    assert (result.returncode, result.stdout) == (0, "")


def test_env_and_cwd(target, tmp_path):
    workdir = tmp_path / "dir with space; $(id)"
    workdir.mkdir()
    value = "a b; $(id) 'q' \"dq\" `x`\nnext"
    show = "import os, json; print(json.dumps([os.getcwd(), os.environ['GREETING'], os.environ['PLAIN']]))"
    result = target.run(["python3", "-c", show], env={"GREETING": value, "PLAIN": "1"}, cwd=workdir)
    assert json.loads(result.stdout) == [str(workdir), value, "1"]


def test_missing_cwd_fails_before_running(target, tmp_path):
    result = target.run(["touch", "made"], cwd=tmp_path / "absent", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"bash: line 1: cd: {tmp_path / 'absent'}: No such file or directory\n"
    assert not (tmp_path / "absent").exists()


def test_bad_env_name_is_refused_before_sending():
    with pytest.raises(OrchestratorError, match="invalid environment variable name"):
        remote_command(["true"], env={"A=B; id": "x"})


def test_remote_command_quotes_every_word():
    command = remote_command(["ls", "-l", "a b"], env={"K": "v w"}, cwd="/srv/x y")
    assert command == "cd '/srv/x y' && env 'K=v w' ls -l 'a b'"


def test_stream_echoes_each_line_and_keeps_tail(sshd):
    lines: list[str] = []
    with connect(sshd, echo=lines.append) as remote:
        script = "for i in 1 2 3; do echo line$i; done; printf 'no newline'"
        result = remote.run(["sh", "-c", script], stream=True)
    assert lines == ["line1", "line2", "line3", "no newline"]
    assert result.stdout == "line1\nline2\nline3\nno newline\n"


# Runs on the "host": its pid (the process group sshd gave it), then a child's, in files; then it waits.
HOLD = 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; sleep 600 & echo $! > "$2.tmp" && mv "$2.tmp" "$2"; wait'


def hold_argv(tmp_path: Path) -> list[str]:
    return ["sh", "-c", HOLD, "sh", str(tmp_path / "leader.pid"), str(tmp_path / "child.pid")]


def held_pids(tmp_path: Path) -> list[int]:
    """The held command's pids, once it has written both (an event: the files appear, renamed whole)."""
    files = [tmp_path / "leader.pid", tmp_path / "child.pid"]
    wait_until(lambda: all(f.exists() for f in files), "the remote command never wrote its pid files")
    return [int(f.read_text()) for f in files]


def all_gone(pids: list[int], what: str) -> None:
    for pid in pids:
        wait_gone(pid, what)


def test_command_timeout_raises_command_error_and_kills_the_remote_command(target, sshd, tmp_path):
    with pytest.raises(CommandError) as caught:
        target.run(hold_argv(tmp_path), timeout=2)
    assert caught.value.returncode == 124
    assert str(caught.value) == f"ssh:root@127.0.0.1:{sshd.port}: sh exited 124: timed out after 2 s"
    all_gone(held_pids(tmp_path), "the timed-out remote command and its child")
    assert target.run(["echo", "still usable"]).stdout == "still usable\n"


def test_abort_from_another_thread_kills_the_remote_command_and_unblocks_the_caller(sshd, tmp_path):
    outcome: list[BaseException] = []
    remote = connect(sshd)

    def hold():
        try:
            remote.run(hold_argv(tmp_path))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=hold)
    worker.start()
    pids = held_pids(tmp_path)
    remote.abort()
    worker.join(HANG_S)
    assert not worker.is_alive(), "the thread running the command is still blocked"
    assert [type(exc) for exc in outcome] == [Interrupted], outcome
    all_gone(pids, "the aborted remote command and its child")
    with pytest.raises(Interrupted, match="aborted"):
        remote.run(["true"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_in_the_main_thread_kills_the_remote_command(target, tmp_path, signum):
    def signal_once_started():
        held_pids(tmp_path)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=signal_once_started)
    sender.start()
    try:
        with pytest.raises((KeyboardInterrupt, Interrupted)), terminate_unwinds():
            target.run(hold_argv(tmp_path))
    finally:
        sender.join(HANG_S)
    all_gone(held_pids(tmp_path), "the interrupted remote command and its child")


def test_a_command_that_ends_by_itself_is_not_killed_later(target, tmp_path):
    """The process group of a finished command is not signalled: its number may already be someone else's."""
    result = target.run(["sh", "-c", "echo $$"])
    assert result.stderr == "" and result.stdout.strip().isdigit()
    assert target._running == {}


def test_put_get_round_trip_binary_byte_identical(target, tmp_path):
    original = tmp_path / "original.bin"
    original.write_bytes(bytes(range(256)) * 1000 + os.urandom(500_000))
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    remote_file = remote_dir / "copy.bin"
    remote_file.write_bytes(b"old content to be replaced")
    back = tmp_path / "back.bin"

    target.put(original, str(remote_file))
    target.get(str(remote_file), back)

    assert remote_file.read_bytes() == original.read_bytes()
    assert back.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in remote_dir.iterdir()) == ["copy.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "original.bin", "remote"]


def test_failed_get_leaves_local_file_untouched(target, tmp_path, sshd):
    local = tmp_path / "keep.txt"
    local.write_text("precious")
    with pytest.raises(OrchestratorError) as caught:
        target.get(str(tmp_path / "no-such-remote-file"), local)
    assert str(caught.value) == (f"ssh root@127.0.0.1:{sshd.port}: get {tmp_path / 'no-such-remote-file'} -> "
                                 f"{local} failed: No such file")
    assert local.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


class _NamedEchoServer(socketserver.ThreadingTCPServer):
    """Answers each line with ``<name>:<line>``: which server answered is visible."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str):
        self.name = name
        super().__init__(("127.0.0.1", 0), _NamedEchoHandler)


class _NamedEchoHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode().strip()
        self.wfile.write(f"{self.server.name}:{line}\n".encode())


@contextmanager
def named_echo_server(name: str):
    server = _NamedEchoServer(name)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# Runs on the remote side: connect to each port in argv, send a line, print the reply.
PROBE = """
import socket, sys
for port in sys.argv[1:]:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(f"ping-{port}\\n".encode())
        s.shutdown(socket.SHUT_WR)
        print(port, s.makefile().readline().strip())
"""


def probe_lines(ports: list[int]) -> list[str]:
    return [f"{port} {name}:ping-{port}" for port, name in ports]


def test_forward_remote_many_routes_each_port_to_its_own_server(target):
    with named_echo_server("rsync") as rsync_port, named_echo_server("http") as http_port:
        remote_rsync, remote_http = free_port(), free_port()
        pairs = [(remote_rsync, rsync_port), (remote_http, http_port)]
        with target.forward_remote_many(pairs) as bound:
            assert bound == [remote_rsync, remote_http]
            order = [remote_http, remote_rsync, remote_rsync, remote_http]
            result = target.run(["python3", "-c", PROBE, *map(str, order)])
        names = {remote_rsync: "rsync", remote_http: "http"}
        assert result.stdout.splitlines() == probe_lines([(port, names[port]) for port in order])
        after = target.run(["python3", "-c", PROBE, str(remote_rsync)], check=False)
        assert after.returncode == 1
        assert after.stderr.endswith("ConnectionRefusedError: [Errno 111] Connection refused\n"), after.stderr


def test_forward_remote_single_port_chosen_by_server(target):
    with named_echo_server("solo") as local_port:
        with target.forward_remote(0, local_port) as remote_port:
            result = target.run(["python3", "-c", PROBE, str(remote_port)])
    assert remote_port not in (0, local_port)
    assert result.stdout.splitlines() == probe_lines([(remote_port, "solo")])


def test_second_forward_on_one_connection_is_refused(target):
    with named_echo_server("one") as local_port:
        with target.forward_remote(free_port(), local_port):
            with pytest.raises(OrchestratorError) as caught:
                with target.forward_remote(free_port(), local_port):
                    pass
    assert str(caught.value) == (f"{target.describe()}: a remote forward is already active; "
                                 "pass every port to one forward_remote_many")


class _HoldingServer(socketserver.ThreadingTCPServer):
    """Accepts one connection and holds it open, noting when the far end goes away."""

    daemon_threads = True

    def __init__(self):
        self.connected, self.closed = threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", 0), _HoldingHandler)


class _HoldingHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.server.connected.set()
        self.request.settimeout(20)
        while self.request.recv(1024):
            pass
        self.server.closed.set()


def test_leaving_forward_cuts_connections_still_open(target):
    server = _HoldingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hold = (
        "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
        " s.settimeout(20); s.recv(1)"
    )
    holder = None
    try:
        with target.forward_remote(0, server.server_address[1]) as remote_port:
            started = target.run(["sh", "-c", 'python3 -c "$0" "$1" >/dev/null 2>&1 & echo $!', hold, str(remote_port)])
            holder = int(started.stdout)
            assert server.connected.wait(HANG_S), "the remote client never came through the forward"
            assert not server.closed.is_set()
        assert server.closed.wait(HANG_S), "the forwarded connection is still open after the block"
        wait_gone(holder, "the remote client, once its connection was cut")
    finally:
        if holder is not None and Path(f"/proc/{holder}").exists():
            os.kill(holder, signal.SIGKILL)
        server.shutdown()
        server.server_close()
        thread.join(HANG_S)


def test_closed_port_gives_one_line_error(sshd, capsys):
    port = free_port()
    with connect(sshd, port=port) as remote:
        with pytest.raises(OrchestratorError) as caught:
            remote.run(["true"])
    assert type(caught.value) is OrchestratorError
    assert str(caught.value) == f"ssh root@127.0.0.1:{port}: connect failed: Connection refused"
    assert "Traceback" not in capsys.readouterr().err


def test_wrong_key_gives_one_line_error_without_key_material(sshd, tmp_path):
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with connect(sshd, key_filename=stranger) as remote:
        with pytest.raises(OrchestratorError) as caught:
            remote.run(["true"])
        no_sshd_session_left(sshd)  # the refused connection is closed at once, not at LoginGraceTime
    assert str(caught.value) == (f"ssh root@127.0.0.1:{sshd.port}: connect failed: "
                                 f"authentication failed with key {stranger}")
    private_body = stranger.read_text().splitlines()[1]
    public_body = stranger.with_suffix(".pub").read_text().split()[1]
    assert private_body not in str(caught.value) and public_body not in str(caught.value)


def test_host_key_mismatch_is_refused(sshd, tmp_path):
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor.with_suffix('.pub').read_text()}")
    with connect(sshd, known_hosts=known_hosts) as remote:
        with pytest.raises(OrchestratorError) as caught:
            remote.run(["true"])
        no_sshd_session_left(sshd)  # the refused connection is closed at once, not at LoginGraceTime
    assert str(caught.value) == f"ssh root@127.0.0.1:{sshd.port}: connect failed: host key does not match {known_hosts}"


def test_silent_server_times_out_with_one_line_error(sshd, capsys):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with connect(sshd, port=port, connect_timeout=1) as remote:
            with pytest.raises(OrchestratorError) as caught:
                remote.run(["true"])
    assert str(caught.value) == (f"ssh root@127.0.0.1:{port}: connect failed: "
                                 "no SSH handshake within 1 s (not an SSH server?)")
    assert "Traceback" not in capsys.readouterr().err


def test_dry_run_prints_and_does_not_connect(sshd, tmp_path):
    port = free_port()  # nothing listens: any connection attempt would fail
    lines: list[str] = []
    with connect(sshd, port=port, dry=True, echo=lines.append) as remote:
        result = remote.run(["touch", str(tmp_path / "a b")])
        remote.put(tmp_path / "x", "/srv/x")
        remote.get("/srv/y", tmp_path / "y")
        with remote.forward_remote_many([(873, 10873), (80, 10080)]) as bound:
            assert bound == [873, 80]
        with pytest.raises(OrchestratorError) as probed:
            remote.run(["true"], mutates=False)  # probes do run under --dry
    where = f"ssh:root@127.0.0.1:{port}"
    assert str(probed.value) == f"ssh root@127.0.0.1:{port}: connect failed: Connection refused"
    assert result.ok
    assert lines == [
        f"[dry-run] {where}: touch '{tmp_path / 'a b'}'",
        f"[dry-run] {where}: put {tmp_path / 'x'} -> /srv/x",
        f"[dry-run] {where}: get /srv/y -> {tmp_path / 'y'}",
        f"[dry-run] {where}: forward remote 127.0.0.1:873 -> local 10873, remote 127.0.0.1:80 -> local 10080",
    ]
    assert list(tmp_path.iterdir()) == []


def test_describe_omits_default_port():
    assert RemoteTarget("binhost.example").describe() == "ssh:root@binhost.example"
    assert RemoteTarget("h", user="admin", port=2222).describe() == "ssh:admin@h:2222"


def test_missing_known_hosts_file_is_a_config_error(sshd, tmp_path):
    with connect(sshd, known_hosts=tmp_path / "absent") as remote:
        with pytest.raises(ConfigError) as caught:
            remote.run(["true"])
    assert str(caught.value) == f"known_hosts {tmp_path / 'absent'}: No such file or directory"
