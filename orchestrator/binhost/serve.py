"""Serve the binhost without a system web server: ``rsync --daemon`` for the
ebuild tree and a small read-only HTTP server for PKGDIR.

``serving`` is used by ``inv binhost.serve`` (via ``serve_forever``) and by the
tests; both servers stop when the block ends, also on an exception, Ctrl-C or
SIGTERM, and at any moment of start-up. The daemon runs in its own process
group (its per-connection children stop with it) and under ``setpriv
--pdeathsig KILL``, so even a ``kill -9`` of this process leaves no daemon.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..config import BinhostConfig
from ..errors import ConfigError, Interrupted, OrchestratorError
from ..run.files import atomic_write
from ..signals import held_signals
from .exposure import published_repos, render_exposure, url_path
from .facts import BinhostFacts

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


class RsyncDaemon:
    """A started ``rsync --daemon``: its process, port, and the part of its log this run wrote."""

    def __init__(self, proc: subprocess.Popen, port: int, log_file: Path, log_start: int):
        self.proc = proc
        self.port = port
        self.log_file = log_file
        self.log_start = log_start

    def check(self) -> None:
        """Raise if the daemon has died (it logs why)."""
        if self.proc.poll() is not None:
            raise OrchestratorError(f"rsync --daemon on port {self.port} exited {self.proc.returncode}: "
                                    f"{self.log_tail()}")

    def log_tail(self) -> str:
        return _log_tail(self.log_file, self.log_start)


class Serving:
    """What a running ``serving`` block offers: where clients connect, and how it is doing."""

    def __init__(self, host: str, url_path: str, repos: tuple[str, ...], http: "BinhostHTTPServer",
                 rsync: RsyncDaemon):
        self.host = host  # the name or address put into URLs
        self.url_path = url_path
        self.repos = repos
        self.rsync_port = rsync.port
        self.http_port = http.server_address[1]
        self.rsync_log = rsync.log_file
        self._http = http
        self._rsync = rsync

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.http_port}{self.url_path}"

    def rsync_url(self, repo_name: str) -> str:
        if repo_name not in self.repos:
            raise ConfigError(f"binhost.repos: {repo_name!r} is not published (published: {', '.join(self.repos)})")
        return f"rsync://{_url_host(self.host)}:{self.rsync_port}/{repo_name}"

    @property
    def http_requests(self) -> int:
        return self._http.requests

    def rsync_pid(self) -> int:
        return self._rsync.proc.pid

    def check_rsync(self) -> None:
        self._rsync.check()


@contextmanager
def serving(cfg: BinhostConfig, facts: BinhostFacts, work_dir: Path, *, address: str | None = None,
            rsync_port: int | None = None, http_port: int | None = None) -> Iterator[Serving]:
    """Run rsyncd and the PKGDIR web server until the block ends.

    ``address`` and the ports override ``binhost.serve`` (tests use free
    loopback ports); ``http_port=0`` lets the kernel pick one. Start-up is
    rsync first (until it greets), then HTTP (until it answers); it fails
    within ~10 s with one line (rsync's own reason included), and an error or
    a signal at any moment of it stops whatever had started: nothing is left
    running. Call it from the thread that stays in the block: the daemon's
    death signal follows the thread that started it.
    """
    serve = dataclasses.replace(
        cfg.serve,
        listen_address=cfg.serve.listen_address if address is None else address,
        rsync_port=cfg.serve.rsync_port if rsync_port is None else rsync_port,
        http_port=cfg.serve.http_port if http_port is None else http_port,
    )
    cfg = dataclasses.replace(cfg, serve=serve)
    work_dir.mkdir(parents=True, exist_ok=True)
    config_file, rsync_log, pid_file = work_dir / "rsyncd.conf", work_dir / "rsyncd.log", work_dir / "rsyncd.pid"
    rendered = render_exposure(cfg, facts, pid_file=pid_file, lock_file=work_dir / "rsyncd.lock")
    atomic_write(config_file, rendered["rsyncd.conf"])
    _drop_stale_pid_file(pid_file)
    repos = tuple(r.name for r in published_repos(cfg, facts))
    prefix = url_path(serve.url_path)
    host = _connect_address(serve.listen_address)
    deadline = time.monotonic() + START_TIMEOUT_S
    with ExitStack() as stack:
        rsync = _start_rsync(stack, config_file, serve.rsync_port, rsync_log)
        _reached("rsync-started")
        _wait_for(host, serve.rsync_port, b"@RSYNCD:", deadline, rsync)
        _reached("rsync-ready")
        http = _start_http(stack, facts.pkgdir_host, prefix, serve.listen_address, serve.http_port,
                           work_dir / "http.log")
        _reached("http-started")
        _wait_for(host, http.server_address[1], b"", deadline, rsync)
        _reached("ready")
        yield Serving(serve.host() if serve.listen_address in WILDCARD_ADDRESSES else serve.listen_address,
                      prefix, repos, http, rsync)


def _reached(point: str) -> None:
    """A named moment of start-up; tests replace this to interrupt exactly there."""


def rsync_argv(config_file: Path, log_file: Path) -> list[str]:
    """``rsync --daemon`` under ``setpriv --pdeathsig KILL``: it dies with the thread that started it."""
    return ["setpriv", "--pdeathsig", "KILL", "--",
            "rsync", "--daemon", "--no-detach", f"--config={config_file}", f"--log-file={log_file}"]


def _start_rsync(stack: ExitStack, config_file: Path, port: int, log_file: Path) -> RsyncDaemon:
    """Start the daemon in its own process group and register its stop, with no signal in between."""
    log_start = log_file.stat().st_size if log_file.exists() else 0
    with held_signals():
        try:
            with open(log_file, "ab") as log:
                proc = subprocess.Popen(rsync_argv(config_file, log_file), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as exc:
            raise OrchestratorError(f"cannot start rsync --daemon: {exc.filename} not found "
                                    "(it needs rsync and util-linux's setpriv)") from None
        _reached("rsync-spawned")  # a signal here is held until the stop below is registered
        stack.callback(_stop_group, proc)
    return RsyncDaemon(proc, port, log_file, log_start)


def _drop_stale_pid_file(pid_file: Path) -> None:
    """rsync refuses to start over an existing pid file; one left by a killed daemon is removed."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid_file.unlink(missing_ok=True)
        return
    if not _running(pid):
        pid_file.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop_group(proc: subprocess.Popen) -> None:
    """TERM the daemon's group, wait, KILL what is left (a child serving a slow client).

    Signals are held meanwhile, so a second Ctrl-C/SIGTERM cannot cut the stop short.
    """
    with held_signals():
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_for(host: str, port: int, greeting: bytes, deadline: float, rsync: RsyncDaemon) -> None:
    """Until ``port`` answers (with ``greeting``: rsync says ``@RSYNCD:``, so not another program on it)."""
    while not _answers(host, port, greeting):
        rsync.check()
        if time.monotonic() > deadline:
            raise OrchestratorError(f"port {port} on {host} does not answer after {START_TIMEOUT_S:.0f} s; "
                                    f"rsync log: {rsync.log_tail()}")
        time.sleep(0.05)


def _answers(host: str, port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return not greeting or sock.recv(len(greeting)) == greeting
    except OSError:
        return False


def _log_tail(log_file: Path, start: int, lines: int = 3) -> str:
    """The last lines this run added to rsync's log, joined into one line."""
    try:
        with open(log_file, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(no log output)"


def _connect_address(address: str) -> str:
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BinhostHTTPServer(http.server.ThreadingHTTPServer):
    """Serves one directory below one URL prefix, counts requests, logs to a file (never stderr)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, root: Path, prefix: str, log):
        self.root = Path(os.path.realpath(root))
        self.prefix = prefix
        self.log = log
        self.requests = 0
        self._lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, PkgdirHandler)

    def finish_request(self, request, client_address) -> None:
        PkgdirHandler(request, client_address, self, directory=str(self.root))

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def write_log(self, line: str) -> None:
        with self._lock:
            if not self.log.closed:  # a download still running after shutdown has nowhere to log
                self.log.write(line + "\n")
                self.log.flush()

    def handle_error(self, request, client_address) -> None:
        self.write_log(f"{client_address[0]} request failed (client went away?)")


class PkgdirHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files in PKGDIR, only below the URL prefix.

    The base class already drops ``..`` segments; here any dot-segment or
    hidden name is refused outright, and the resolved path (symlinks
    followed) must stay inside PKGDIR. Other methods get 501 from the base.
    """

    server: BinhostHTTPServer

    def translate_path(self, path: str) -> str:
        """``<prefix>/x`` -> ``PKGDIR/x``; anything else -> "" (the base class answers 404)."""
        quoted = path.split("?", 1)[0].split("#", 1)[0]
        unquoted = urllib.parse.unquote(quoted)
        prefix = self.server.prefix
        if unquoted != prefix and not unquoted.startswith(prefix + "/"):
            return ""
        relative = unquoted[len(prefix):]
        if any(part.startswith(".") for part in relative.split("/")):
            return ""
        local = Path(os.path.realpath(super().translate_path(urllib.parse.quote(relative or "/"))))
        if local != self.server.root and self.server.root not in local.parents:
            return ""
        return str(local) + ("/" if relative.endswith("/") else "")

    def log_request(self, code="-", size="-") -> None:
        self.server.count()
        super().log_request(code, size)

    def log_message(self, format: str, *args) -> None:
        self.server.write_log(f"{self.address_string()} [{self.log_date_time_string()}] {format % args}")


def _start_http(stack: ExitStack, root: Path, prefix: str, address: str, port: int,
                log_file: Path) -> BinhostHTTPServer:
    """Bind, start the serving thread and register its stop, with no signal in between."""
    log = stack.enter_context(open(log_file, "a"))
    with held_signals():
        try:
            server = BinhostHTTPServer((address, port), root=root, prefix=prefix, log=log)
        except OSError as exc:
            raise OrchestratorError(f"HTTP server on {address}:{port}: {exc.strerror or exc}") from None
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="binhost-http", daemon=True)
        thread.start()
        stack.callback(_stop_http, server, thread)
    return server


def _stop_http(server: BinhostHTTPServer, thread: threading.Thread) -> None:
    with held_signals():
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT_S)


def serve_forever(run, cfg: BinhostConfig, facts: BinhostFacts, work_dir: Path) -> None:
    """``inv binhost.serve``: serve until Ctrl-C or SIGTERM, which is the normal way to stop (exit 0).

    A signal before both servers answer is no normal stop: whatever had started
    is stopped, and the run fails as interrupted (exit 130) with one line.
    """
    if run.dry:
        run.echo(shlex.join(rsync_argv(work_dir / "rsyncd.conf", work_dir / "rsyncd.log")))
        run.echo(f"HTTP server for {facts.pkgdir_host} on {cfg.serve.listen_address}:{cfg.serve.http_port}")
        return
    server = None
    try:
        with serving(cfg, facts, work_dir) as server:
            with held_signals():  # all three lines or none
                for repo in server.repos:
                    run.echo(f"rsync: {server.rsync_url(repo)}")
                run.echo(f"http: {server.http_url}")
                run.echo("serving; stop with Ctrl-C or SIGTERM")
            while True:
                server.check_rsync()
                time.sleep(0.5)
    except (KeyboardInterrupt, Interrupted) as exc:
        if server is None:
            why = getattr(exc, "signal_name", None) or "Ctrl-C"
            raise Interrupted(f"stopped by {why} while starting; rsync and the HTTP server were stopped, "
                              "nothing is left running") from None
    finally:
        if server is not None:
            run.echo(f"served {server.http_requests} HTTP requests")
            run.report.summary["http_requests"] = server.http_requests
