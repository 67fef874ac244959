"""A throwaway OpenSSH server on a loopback port, for tests that need real SSH.

Pytest-independent: ``with running_sshd(tmp_dir) as server:`` gives an
``SshServer`` to connect to as root with ``server.key_filename``. Nothing here
reads or writes the host's ``/etc/ssh`` or touches its own sshd; the only
shared state is ``/run/sshd``, the privilege-separation directory every sshd
needs.

The server runs in a private mount namespace where the connecting user's
``~/.bashrc`` is an empty file: sshd runs every command through the user's
shell, and bash sources ``~/.bashrc`` when sshd starts it. A fresh instance's
root has a trivial one; this build box's own (``pyenv init``: about a hundred
processes, 0.2 s a command) would be measured as the "instance's" cost.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemons import free_port, port_answers, running

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


def sshd_config(tmp: Path, port: int, listen: str = LOOPBACK) -> str:
    return "\n".join(
        [
            f"ListenAddress {listen}",
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
def running_sshd(tmp_dir: str | os.PathLike, *, start_timeout: float = 10.0, listen: str = LOOPBACK,
                 port: int | None = None, prefix: Sequence[str] = ()) -> Iterator[SshServer]:
    """Run ``sshd -D`` on a free loopback port for the duration of the block.

    ``listen``, ``port`` and ``prefix`` (e.g. ``ip netns exec NS``) run it elsewhere: inside a network
    namespace on an address the build box reaches over a veth pair."""
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    _keygen(tmp / "host_ed25519")
    _keygen(tmp / "client_ed25519")
    (tmp / "authorized_keys").write_text((tmp / "client_ed25519.pub").read_text())
    port = port or free_port()
    (tmp / "sshd_config").write_text(sshd_config(tmp, port, listen))
    host_key = (tmp / "host_ed25519.pub").read_text().split()[:2]
    (tmp / "known_hosts").write_text(f"[{listen}]:{port} {' '.join(host_key)}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log_path = tmp / "sshd.log"
    argv = [*prefix, *_without_own_bashrc(tmp), SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")]
    with running(argv, what=f"sshd on {listen}:{port}", ready=port_answers(listen, port), log=log_path,
                 timeout=start_timeout):
        yield SshServer(
            host=listen,
            port=port,
            user="root",
            key_filename=str(tmp / "client_ed25519"),
            known_hosts=str(tmp / "known_hosts"),
            log_path=str(log_path),
        )


def _without_own_bashrc(tmp: Path) -> list[str]:
    """A prefix that starts sshd in its own mount namespace with an empty file over ``~/.bashrc``
    (the ``exec`` keeps sshd's pid, which ``running`` stops)."""
    bashrc = Path.home() / ".bashrc"
    if not bashrc.is_file():
        return []
    empty = tmp / "empty.bashrc"
    empty.write_text("")
    script = 'mount --bind -- "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(empty),
            str(bashrc)]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrator-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
