"""A throwaway OpenSSH server on a loopback port, for tests that need real SSH.

Pytest-independent: ``with running_sshd(tmp_dir) as server:`` gives an
``SshServer`` to connect to as root with ``server.key_filename``. Nothing here
reads or writes the host's ``/etc/ssh`` or touches its own sshd; the only
shared state is ``/run/sshd``, the privilege-separation directory every sshd
needs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # absolute: sshd re-executes itself and refuses a relative path
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key_filename: str  # client private key authorized for ``user``
    known_hosts: str  # known_hosts file that trusts exactly this server
    log_path: str  # sshd's own log (``-e``), for debugging a failed test


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (racy by nature, good enough for tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def sshd_config(tmp: Path, port: int) -> str:
    return "\n".join(
        [
            f"ListenAddress {LOOPBACK}",
            f"Port {port}",
            f"HostKey {tmp / 'host_ed25519'}",
            f"PidFile {tmp / 'sshd.pid'}",
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "GatewayPorts no",
            "X11Forwarding no",
            "UseDNS no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


@contextmanager
def running_sshd(tmp_dir: str | os.PathLike, *, start_timeout: float = 10.0) -> Iterator[SshServer]:
    """Run ``sshd -D`` on a free loopback port for the duration of the block."""
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    _keygen(tmp / "host_ed25519")
    _keygen(tmp / "client_ed25519")
    (tmp / "authorized_keys").write_text((tmp / "client_ed25519.pub").read_text())
    port = free_port()
    (tmp / "sshd_config").write_text(sshd_config(tmp, port))
    host_key = (tmp / "host_ed25519.pub").read_text().split()[:2]
    (tmp / "known_hosts").write_text(f"[{LOOPBACK}]:{port} {' '.join(host_key)}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log_path = tmp / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(proc, port, start_timeout, log_path)
        yield SshServer(
            host=LOOPBACK,
            port=port,
            user="root",
            key_filename=str(tmp / "client_ed25519"),
            known_hosts=str(tmp / "known_hosts"),
            log_path=str(log_path),
        )
    finally:
        _stop(proc)


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrator-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"sshd exited {proc.returncode}: {log}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    _stop(proc)
    raise RuntimeError(f"sshd did not listen on {LOOPBACK}:{port} within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop this sshd only (its own pid; session children die with their connections)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
