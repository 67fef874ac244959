"""The knock client: a port-knock sequence (knockd) or one SPA packet (fwknop) sent to a host.

knockd watches packets, not connections: a TCP knock only needs its SYN to leave, so a non-blocking
``connect`` that is closed at once is a whole knock (nothing waits for an answer the firewall will never
send); a UDP knock is one datagram. The knocks go out in order with a short gap (so a reordering network
path cannot swap two of them), all inside ``seq_timeout``.

One-time sequences are taken by the caller with ``secrets.consume_one_time`` (saved as used before a
packet leaves, so a crash wastes one but never sends a used one twice; never the last line, after which
knockd 0.8 aborts) and sent here like any other sequence.

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
from collections.abc import Sequence
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


def source_address(host: str) -> str:
    """The address this box sends from towards ``host`` (a UDP ``connect`` sends nothing; the kernel picks
    the route's source). Behind NAT it is the private one: give the public one (``--allow-ip``) then."""
    family, address = _address(host)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, SPA_PORT))
        return sock.getsockname()[0]


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
             spa_port: int = SPA_PORT, allow_ip: str | None = None, timeout: float = 30.0) -> None:
    """Send one SPA packet with the system ``fwknop``; the keys go through a 0600 rc file only.

    ``allow_ip``: the address the packet asks fwknopd to let in; default this box's source address towards
    the host (our access.conf sets ``REQUIRE_SOURCE_ADDRESS Y``, so fwknop's ``source`` (0.0.0.0) is refused).

    fwknop's own output is not passed on: with ``--verbose`` it prints the keys, and its errors may
    quote the rc file. A failure is one line with its exit code."""
    with tempfile.TemporaryDirectory(prefix="geo-spa-") as tmp:  # 0700
        rc = Path(tmp) / "fwknoprc"
        fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(fwknop_rc(host, key_b64, hmac_b64, ports, spa_port, allow_ip or source_address(host)))
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
