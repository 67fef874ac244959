"""Serve the binhost without a system web server: ``rsync --daemon`` for the
ebuild tree and a small read-only HTTP server for PKGDIR.

``serving`` is used by ``inv binhost.serve`` (via ``serve_forever``), by the
tunnel mode of client updates and by the tests; both servers stop when the
block ends, also on an exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
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
from .exposure import published_repos, render_exposure, url_path
from .facts import BinhostFacts

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


class Serving:
    """What a running ``serving`` block offers: where clients connect, and how it is doing."""

    def __init__(self, host: str, url_path: str, repos: tuple[str, ...], http: "BinhostHTTPServer",
                 rsync: subprocess.Popen, rsync_port: int, rsync_log: Path, rsync_log_start: int):
        self.host = host  # the name or address put into URLs
        self.url_path = url_path
        self.repos = repos
        self.rsync_port = rsync_port
        self.http_port = http.server_address[1]
        self.rsync_log = rsync_log
        self._http = http
        self._rsync = rsync
        self._rsync_log_start = rsync_log_start

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
        return self._rsync.pid

    def check_rsync(self) -> None:
        """Raise if the daemon has died (it logs why)."""
        if self._rsync.poll() is not None:
            raise _rsync_died(self._rsync, self.rsync_port, self.rsync_log, self._rsync_log_start)


@contextmanager
def serving(cfg: BinhostConfig, facts: BinhostFacts, work_dir: Path, *, address: str | None = None,
            rsync_port: int | None = None, http_port: int | None = None) -> Iterator[Serving]:
    """Run rsyncd and the PKGDIR web server until the block ends.

    ``address`` and the ports override ``binhost.serve`` (tests use free
    loopback ports); ``http_port=0`` lets the kernel pick one. Startup fails
    within ~10 s with one line (rsync's own reason included) and leaves
    nothing running.
    """
    serve = dataclasses.replace(
        cfg.serve,
        listen_address=cfg.serve.listen_address if address is None else address,
        rsync_port=cfg.serve.rsync_port if rsync_port is None else rsync_port,
        http_port=cfg.serve.http_port if http_port is None else http_port,
    )
    cfg = dataclasses.replace(cfg, serve=serve)
    work_dir.mkdir(parents=True, exist_ok=True)
    config_file, rsync_log = work_dir / "rsyncd.conf", work_dir / "rsyncd.log"
    rendered = render_exposure(cfg, facts, pid_file=work_dir / "rsyncd.pid", lock_file=work_dir / "rsyncd.lock")
    config_file.write_text(rendered["rsyncd.conf"])
    repos = tuple(r.name for r in published_repos(cfg, facts))
    prefix = url_path(serve.url_path)
    log_start = rsync_log.stat().st_size if rsync_log.exists() else 0
    with ExitStack() as stack:
        http = stack.enter_context(_http_server(facts.pkgdir_host, prefix, serve.listen_address,
                                                serve.http_port, work_dir / "http.log"))
        rsync = stack.enter_context(_rsync_daemon(config_file, rsync_log))
        server = Serving(serve.host() if serve.listen_address in WILDCARD_ADDRESSES else serve.listen_address,
                         prefix, repos, http, rsync, serve.rsync_port, rsync_log, log_start)
        _wait_ready(server, _connect_address(serve.listen_address))
        yield server


def rsync_argv(config_file: Path, log_file: Path) -> list[str]:
    return ["rsync", "--daemon", "--no-detach", f"--config={config_file}", f"--log-file={log_file}"]


@contextmanager
def _rsync_daemon(config_file: Path, log_file: Path) -> Iterator[subprocess.Popen]:
    """``rsync --daemon`` in its own process group, so its per-connection children stop with it."""
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(rsync_argv(config_file, log_file), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """TERM the daemon's group, wait, KILL what is left (a child serving a slow client).

    The KILL runs even when a second Ctrl-C/SIGTERM interrupts the wait.
    """
    try:
        _signal_group(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_ready(server: Serving, host: str) -> None:
    """Until rsync greets (``@RSYNCD:``, so not another program on that port) and HTTP accepts."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for port, greeting in ((server.rsync_port, b"@RSYNCD:"), (server.http_port, b"")):
        while not _answers(host, port, greeting):
            server.check_rsync()
            if time.monotonic() > deadline:
                raise OrchestratorError(
                    f"port {port} on {host} does not answer after {START_TIMEOUT_S:.0f} s; "
                    f"rsync log: {_log_tail(server.rsync_log, server._rsync_log_start)}")
            time.sleep(0.05)


def _answers(host: str, port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return not greeting or sock.recv(len(greeting)) == greeting
    except OSError:
        return False


def _rsync_died(proc: subprocess.Popen, port: int, log_file: Path, start: int) -> OrchestratorError:
    return OrchestratorError(f"rsync --daemon on port {port} exited {proc.returncode}: {_log_tail(log_file, start)}")


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


@contextmanager
def _http_server(root: Path, prefix: str, address: str, port: int, log_file: Path) -> Iterator[BinhostHTTPServer]:
    with open(log_file, "a") as log:
        try:
            server = BinhostHTTPServer((address, port), root=root, prefix=prefix, log=log)
        except OSError as exc:
            raise OrchestratorError(f"HTTP server on {address}:{port}: {exc.strerror or exc}") from None
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="binhost-http", daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=STOP_TIMEOUT_S)


def serve_forever(run, cfg: BinhostConfig, facts: BinhostFacts, work_dir: Path) -> None:
    """``inv binhost.serve``: serve until Ctrl-C or SIGTERM, which is the normal way to stop (exit 0)."""
    if run.dry:
        run.echo(" ".join(rsync_argv(work_dir / "rsyncd.conf", work_dir / "rsyncd.log")))
        run.echo(f"HTTP server for {facts.pkgdir_host} on {cfg.serve.listen_address}:{cfg.serve.http_port}")
        return
    server = None
    try:
        with serving(cfg, facts, work_dir) as server:
            for repo in server.repos:
                run.echo(f"rsync: {server.rsync_url(repo)}")
            run.echo(f"http: {server.http_url}")
            run.echo("serving; stop with Ctrl-C or SIGTERM")
            while True:
                server.check_rsync()
                time.sleep(0.5)
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        if server is not None:
            run.echo(f"served {server.http_requests} HTTP requests")
            run.report.summary["http_requests"] = server.http_requests
