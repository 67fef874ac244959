"""The knock client: a port-knock sequence (knockd) or one SPA packet (fwknop) sent to a host.

knockd watches packets, not connections: a TCP knock only needs its SYN to leave, so a non-blocking
``connect`` that is closed at once is a whole knock (nothing waits for an answer the firewall will never
send); a UDP knock is one datagram. The knocks go out in order with a short gap (so a reordering network
path cannot swap two of them), all inside ``seq_timeout``.

One-time sequences (knockd's ``one_time_sequences``) are used in file order, each once: the next unused
one is claimed in a ledger beside the secrets (written atomically, 0600) *before* it is sent, so a crash
after the claim wastes one sequence but never sends a used one twice (knockd would not open for it,
and the admin would be locked out by the wait). The last line is never used: knockd 0.8 aborts
(double free) after the last one-time sequence of its file.

fwknop: the system ``fwknop`` client, with the keys in a 0600 rc file in a private temp directory
(``--rc-file``, ``-n <stanza>``), so they are on no command line (``ps``) and in no log line.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError, OrchestratorError

KNOCK_GAP_S = 0.05  # between two knocks: order survives a reordering path; far inside any seq_timeout
LOW_WATER = 5  # warn when this few one-time sequences are left
FWKNOP = "fwknop"
SPA_PORT = 62201


def knock_gap(count: int, seq_timeout: float) -> float:
    """The gap between knocks: ``KNOCK_GAP_S`` unless the whole sequence would not fit in half of
    ``seq_timeout`` (a margin for a slow first packet)."""
    if count < 2:
        return 0.0
    return min(KNOCK_GAP_S, seq_timeout / 2 / (count - 1))


def send_sequence(host: str, knocks: Sequence[tuple[int, str]], *, seq_timeout: float,
                  gap: float | None = None) -> None:
    """Send ``knocks`` ((port, "tcp"|"udp"), ...) to ``host`` in order, inside ``seq_timeout``."""
    if not knocks:
        raise ConfigError("knock: the sequence is empty")
    family, address = _address(host)
    gap = knock_gap(len(knocks), seq_timeout) if gap is None else gap
    for i, (port, proto) in enumerate(knocks):
        if i:
            time.sleep(gap)
        _knock(family, address, int(port), proto)


def _address(host: str) -> tuple[int, str]:
    """The first address of ``host`` (numeric, or resolved once so every knock goes to the same one)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OrchestratorError(f"knock: cannot resolve {host!r}: {exc.strerror}") from None
    return family, sockaddr[0]


def _knock(family: int, address: str, port: int, proto: str) -> None:
    if proto == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\0", (address, port))
        return
    if proto != "tcp":
        raise ConfigError(f"knock: protocol {proto!r} is not tcp or udp")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        code = sock.connect_ex((address, port))  # the SYN leaves here; no answer is awaited
        if code not in (0, errno.EINPROGRESS, errno.ECONNREFUSED, errno.EAGAIN):
            raise OrchestratorError(f"knock: cannot send to {address}: {os.strerror(code)}")  # no port: it is secret


class OneTimeLedger:
    """How many one-time sequences of an image are used: one integer in a 0600 file, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def used(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise OrchestratorError(f"{self.path}: not a count of used one-time sequences") from None

    def claim(self, total: int, what: str, warn: Callable[[str], None] | None = None) -> int:
        """Mark the next sequence used (durably) and return its index; never the last one of ``total``."""
        index = self.used()
        if index >= total - 1:
            raise OrchestratorError(f"{what}: no unused one-time knock sequence left (the last one is kept: "
                                    "knockd 0.8 aborts after using it); run inv harden to refill")
        _write_atomic(self.path, f"{index + 1}\n")
        left = total - 1 - (index + 1)
        if warn and left < LOW_WATER:
            warn(f"{what}: {left} one-time knock sequence(s) left; run inv harden to refill")
        return index

    def reset(self) -> None:
        """A fresh list was deployed (``inv harden``): start again at its first line."""
        _write_atomic(self.path, "0\n")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fwknop_rc(host: str, key_b64: str, hmac_b64: str, ports: Sequence[tuple[int, str]],
              spa_port: int = SPA_PORT, allow_ip: str = "source") -> str:
    """One fwknop client rc stanza (``[spa]``): server, access, keys (base64), HMAC."""
    access = ",".join(f"{proto}/{port}" for port, proto in ports)
    return "\n".join([
        "[spa]",
        f"SPA_SERVER          {host}",
        f"SPA_SERVER_PORT     {spa_port}",
        "SPA_SERVER_PROTO    udp",
        f"ACCESS              {access}",
        f"ALLOW_IP            {allow_ip}",
        f"KEY_BASE64          {key_b64}",
        "USE_HMAC            Y",
        f"HMAC_KEY_BASE64     {hmac_b64}",
        "HMAC_DIGEST_TYPE    sha256",
        "",
    ])


def send_spa(host: str, key_b64: str, hmac_b64: str, ports: Sequence[tuple[int, str]], *,
             spa_port: int = SPA_PORT, allow_ip: str = "source", timeout: float = 30.0) -> None:
    """Send one SPA packet with the system ``fwknop``; the keys go through a 0600 rc file only.

    fwknop's own output is not passed on: with ``--verbose`` it prints the keys, and its errors may
    quote the rc file. A failure is one line with its exit code."""
    with tempfile.TemporaryDirectory(prefix="geo-spa-") as tmp:  # 0700
        rc = Path(tmp) / "fwknoprc"
        fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(fwknop_rc(host, key_b64, hmac_b64, ports, spa_port, allow_ip))
        argv = [FWKNOP, "--rc-file", str(rc), "-n", "spa"]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  env={**os.environ, "HOME": tmp})
        except FileNotFoundError:
            raise OrchestratorError("fwknop: the fwknop client is not installed (apt-get install fwknop-client)") \
                from None
        except subprocess.TimeoutExpired:
            raise OrchestratorError(f"fwknop: no answer in {timeout:.0f} s sending to {host}") from None
    if done.returncode != 0:
        raise OrchestratorError(f"fwknop: sending the SPA packet to {host} failed (exit {done.returncode})")
