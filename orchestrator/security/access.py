"""Getting in through the guard: ``inv knock HOST [--close]`` and ``inv ssh HOST [-- CMD...]``.

The host is a ``fleet.hosts`` entry; its image is the ``guard.images`` entry whose ``hosts`` name it
(by name or ``@group``). knockd images get the open (or close) sequence, or the next one-time
sequence; fwknop images get one SPA packet; ``guard: none`` needs nothing.

``inv ssh`` then waits for sshd's banner (the event that says the port is open for us), trying a fresh
connection every ``PROBE_S`` up to a deadline rather than sleeping a guessed time: a SYN sent before
knockd has added its rule is dropped, and the kernel would retry it only after a second. The probe
reads the banner and closes, which sshd logs as a connection closed before authentication: fail2ban's
``normal`` sshd mode does not count it (``aggressive``/``ddos`` would). Then it execs the system
``ssh`` with the fleet entry's user, port, key and known_hosts as ``-o`` options (so the admin's agent
and ``~/.ssh/config`` still work), agent forwarding off unless asked.

No sequence or key is ever printed: lines say how many knocks were sent, never which.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import HostConfig
from ..config.guard import GuardImage
from ..errors import ConfigError, OrchestratorError
from ..fleet import select_hosts
from ..job import JobRun
from . import knock as client
from .secrets import consume_one_time, load_or_create

PROBE_S = 0.2  # one banner probe's connect timeout, and the pause after a refused one
BANNER_TIMEOUT_S = 10.0
REKNOCK_S = 2.0  # no banner this long after a knock: knock again (open_way)
SSH = "ssh"


@dataclass(frozen=True)
class Way:
    """How to reach one host: its fleet entry and the guard image it belongs to (None: no guard image)."""

    host: HostConfig
    image: GuardImage | None


def find_way(run: JobRun, name: str) -> Way:
    """The fleet host ``name`` and its guard image; one line naming the setting when either is missing."""
    fleet = run.section("fleet")
    hosts = select_hosts(fleet, [name])
    if len(hosts) != 1 or name.startswith("@"):
        raise ConfigError(f"HOST: {name!r} is a group; name one host from fleet.hosts")
    return Way(hosts[0], image_of(run, hosts[0]))


def image_of(run: JobRun, host: HostConfig) -> GuardImage | None:
    """The ``guard.images`` entry whose ``hosts`` name ``host`` (by name or ``@group``); None when none does."""
    fleet = run.section("fleet")
    images = [image for image in run.section("guard").images if image.hosts and host.name in
              {h.name for h in select_hosts(fleet, image.hosts, option=f"guard.images[{image.name}].hosts")}]
    if len(images) > 1:
        raise ConfigError(f"guard.images: host {host.name!r} is in more than one image "
                          f"({', '.join(i.name for i in images)})")
    if images and images[0].knock.one_time:
        _one_host_only(run, images[0])
    return images[0] if images else None


def _one_host_only(run: JobRun, image: GuardImage) -> None:
    """knockd takes one-time sequences in file order, each host's knockd its own file: one list is one host."""
    members = select_hosts(run.section("fleet"), image.hosts)
    if len(members) > 1:
        index = [i.name for i in run.section("guard").images].index(image.name)
        raise ConfigError(f"guard.images[{index}].knock.one_time: image {image.name} has {len(members)} hosts; "
                          "each host's knockd uses up its own list, so a one-time image holds one host")


def knock(run: JobRun, way: Way, *, close: bool = False, allow_ip: str | None = None) -> str:
    """Open (or close) the guard for this box; returns what was done, as a line without secrets."""
    image, host = way.image, way.host
    if image is None or image.guard == "none":
        return f"{host.name}: no guard to knock on (no guard.images entry with guard knockd or fwknop)"
    if image.guard == "fwknop":
        if close:
            raise ConfigError(f"--close: image {image.name} uses fwknop, whose rules expire by themselves; "
                              "there is nothing to close")
        load_or_create(run, image)  # a bad secrets file is an error under --dry too
        if run.dry:
            return f"[dry-run] {host.name}: one SPA packet to {host.host}"
        _send_spa(run, way, allow_ip)
        return f"{host.name}: sent one SPA packet (image {image.name})"
    return _knock_sequence(run, way, close)


def open_way(run: JobRun, host: HostConfig, banner_timeout: float | None = None) -> None:
    """Before a new connection to ``host``: its guard's knock (or SPA packet), then sshd's banner. Nothing for
    a host in no image or with ``guard: none``. Read-only ``--dry`` probes need the way in too, so this
    knocks under ``--dry`` as well; except a one-time sequence, which would be used up: then it only tries.

    With no banner after ``REKNOCK_S`` it knocks again, until ``banner_timeout``: knockd's stop_command for
    an earlier knock from this box deletes "-s IP ... -j ACCEPT", which is also the rule a new knock just
    added (a rule set reloaded in between leaves such stops behind), and a packet can be lost."""
    image = image_of(run, host)
    if image is None or image.guard == "none" or (run.dry and image.guard == "knockd" and image.knock.one_time):
        return
    way = Way(host, image)
    total = BANNER_TIMEOUT_S if banner_timeout is None else banner_timeout
    deadline, knocks = time.monotonic() + total, 0
    while True:
        if image.guard == "fwknop":
            _send_spa(run, way)
        else:
            _send_sequence(run, way, close=False)
        knocks += 1
        left = deadline - time.monotonic()
        try:
            wait_for_banner(host.host, host.port, max(PROBE_S, min(REKNOCK_S, left)))
            return
        except OrchestratorError as exc:
            if left <= REKNOCK_S:
                why = str(exc).rsplit("(", 1)[-1].rstrip(")")
                raise OrchestratorError(f"ssh: {host.host} port {host.port} did not answer within {total:.0f} s "
                                        f"({knocks} knock(s); {why})") from None


def _knock_sequence(run: JobRun, way: Way, close: bool) -> str:
    image, host = way.image, way.host
    secrets = load_or_create(run, image)
    for warning in secrets.warnings:
        run.report.warnings.append(warning)
    which = "close" if close else ("one-time" if image.knock.one_time else "open")
    if run.dry:
        return f"[dry-run] {host.name}: the {which} sequence to {host.host}"
    sequence = _send_sequence(run, way, close)
    return f"{host.name}: sent the {which} sequence ({len(sequence)} knocks, image {image.name})"


def _send_sequence(run: JobRun, way: Way, close: bool) -> list:
    """The open (or close, or next one-time) sequence, sent; returns it (for its length only)."""
    image, host = way.image, way.host
    secrets = load_or_create(run, image)
    if not close and image.knock.one_time:
        sequence, left = consume_one_time(run, image)  # saved as used before a packet leaves
        if left < client.LOW_WATER:
            run.report.warnings.append(f"image {image.name}: {left} one-time knock sequence(s) left; "
                                       "run inv harden to refill")
    else:
        sequence = secrets.close if close else secrets.open
    client.send_sequence(host.host, [(k.port, k.proto) for k in sequence], seq_timeout=image.knock.seq_timeout)
    return sequence


def _send_spa(run: JobRun, way: Way, allow_ip: str | None = None) -> None:
    secrets = load_or_create(run, way.image)
    client.send_spa(way.host.host, secrets.spa_key.reveal(), secrets.hmac_key.reveal(), [(way.image.ssh_port, "tcp")],
                    allow_ip=allow_ip)


def wait_for_banner(address: str, port: int, timeout: float = BANNER_TIMEOUT_S) -> str:
    """Until ``address:port`` greets with ``SSH-``; the greeting line. A fresh connection per attempt."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        started = time.monotonic()
        try:
            return _banner(address, port)
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise OrchestratorError(f"ssh: {address} port {port} did not answer within {timeout:.0f} s "
                                    f"after the knock ({last})")
        time.sleep(max(0.0, PROBE_S - (time.monotonic() - started)))


def _banner(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=PROBE_S) as sock:
        sock.settimeout(2.0)  # connected: sshd greets at once
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    if not line.startswith("SSH-"):
        raise OSError(0, "no SSH banner")
    return line


def ssh_argv(host: HostConfig, command: Sequence[str] = (), *, forward_agent: bool = False) -> list[str]:
    """The system ``ssh`` command line for a fleet host (options from the inventory only, as argv)."""
    argv = [SSH, "-p", str(host.port), "-l", host.user, "-o", f"ConnectTimeout={host.connect_timeout}",
            "-o", f"ForwardAgent={'yes' if forward_agent else 'no'}"]
    if host.key_filename:
        argv += ["-i", str(host.key_filename)]
    if host.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    argv += ["--", host.host]
    return argv + list(command)


def remote_command(argv: Sequence[str]) -> list[str]:
    """What follows the first ``--`` of the command line, word for word (invoke joins it into one string)."""
    argv = list(argv)
    return argv[argv.index("--") + 1:] if "--" in argv else []


def knock_job(name: str, close: bool, allow_ip: str | None = None) -> Callable[[JobRun], None]:
    def body(run: JobRun) -> None:
        line = knock(run, find_way(run, name), close=close, allow_ip=allow_ip)
        run.echo(line)
        run.report.summary["host"] = name
    return body


def prepare_ssh(run: JobRun, name: str, command: Sequence[str], forward_agent: bool, box: dict,
                allow_ip: str | None = None) -> None:
    """Knock, then wait for the banner; leaves the ``ssh`` argv in ``box`` for the caller to exec."""
    way = find_way(run, name)
    run.echo(knock(run, way, allow_ip=allow_ip))
    argv = ssh_argv(way.host, command, forward_agent=forward_agent)
    if run.dry:
        run.echo("[dry-run] " + " ".join(argv))
        return
    started = time.monotonic()
    wait_for_banner(way.host.host, way.host.port)
    run.report.summary["banner_s"] = round(time.monotonic() - started, 3)
    box["argv"] = argv


def exec_ssh(argv: list[str]) -> None:
    """Become ``ssh`` (its exit code is the task's): flush our lines first, they would be lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise OrchestratorError(f"ssh: cannot run {argv[0]}: {exc.strerror}") from None
