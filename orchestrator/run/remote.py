"""Run steps on another host over SSH: one fabric Connection per target."""

from __future__ import annotations

import io
import logging
import math
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut, ThreadException

from ..errors import CommandError, ConfigError, OrchestratorError
from ..faults import crash_point
from .base import Result, Target
from .files import WRITE_CHUNK, FileMeta
from .local import STREAM_TAIL_LINES

STDIN_CHUNK = 256 * 1024
FORWARD_CHUNK = 64 * 1024
FORWARD_POLL = 0.2  # how soon a pump thread notices the forward is being torn down
FORWARD_JOIN = 5.0

_SSH_FAILURES = (paramiko.SSHException, OSError, EOFError)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# paramiko logs transport failures with tracebacks; with no handler configured
# Python's last-resort handler would print them. We report one line instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def remote_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str:
    """Turn an argv into the string sshd hands to the login shell, every word quoted.

    Environment goes through ``env K=V ...`` rather than fabric's inline
    ``export K=V &&``, which does not quote values.
    """
    if not argv:
        raise ValueError("empty argv")
    words = list(argv)
    if env:
        bad = [name for name in env if not _ENV_NAME.match(name)]
        if bad:
            raise OrchestratorError(f"invalid environment variable name {bad[0]!r}")
        words = ["env", *(f"{name}={value}" for name, value in env.items()), *words]
    command = shlex.join(words)
    return command if cwd is None else f"cd {shlex.quote(cwd)} && {command}"


class RemoteTarget(Target):
    """A host reached over SSH. Use as a context manager: the connection opens on
    first use and closes on exit.

    ``known_hosts=None`` accepts any host key (fabric's default, fit for fresh EC2
    instances); a path makes the check strict: the host must be listed there.
    """

    def __init__(
        self,
        host: str,
        *,
        user: str = "root",
        port: int = 22,
        key_filename: str | os.PathLike | None = None,
        connect_timeout: float = 10,
        known_hosts: str | os.PathLike | None = None,
        dry: bool = False,
        echo: Callable[[str], None] | None = None,
    ):
        super().__init__(dry=dry, echo=echo)
        self.host = host
        self.user = user
        self.port = int(port)
        self.key_filename = os.fspath(key_filename) if key_filename is not None else None
        self.connect_timeout = connect_timeout
        self.known_hosts = os.fspath(known_hosts) if known_hosts is not None else None
        self._conn: Connection | None = None
        self._forwarding = False

    def describe(self) -> str:
        where = f"ssh:{self.user}@{self.host}"
        return where if self.port == 22 else f"{where}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def __enter__(self) -> RemoteTarget:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def connection(self) -> Connection:
        """The fabric Connection, opened on first use."""
        if self._conn is None:
            conn = self._new_connection()
            try:
                with self._ssh_errors("connect"):
                    conn.open()
            except BaseException:
                # fabric closes only a connection that opened: after a refused host key or login the
                # handshake's socket and transport thread would stay until sshd's LoginGraceTime.
                conn.client.close()
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _new_connection(self) -> Connection:
        timeout = self.connect_timeout
        connect_kwargs = {"banner_timeout": timeout, "auth_timeout": timeout, "channel_timeout": timeout}
        if self.key_filename:
            # An explicit key is the only credential: no agent, no ~/.ssh/id_* guessing.
            connect_kwargs.update(key_filename=[self.key_filename], look_for_keys=False, allow_agent=False)
        conn = Connection(
            self.host,
            user=self.user,
            port=self.port,
            connect_timeout=max(1, math.ceil(timeout)),  # fabric truncates it to int
            connect_kwargs=connect_kwargs,
            config=Config(overrides={"runners": {"remote": _ExactRemote}}),
        )
        if self.known_hosts is not None:
            try:
                conn.client.load_host_keys(self.known_hosts)
            except OSError as exc:
                raise ConfigError(f"known_hosts {self.known_hosts}: {exc.strerror or exc}") from None
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    @contextmanager
    def _ssh_errors(self, action: str) -> Iterator[None]:
        """Turn SSH and socket failures into one line naming user@host:port."""
        try:
            yield
        except (*_SSH_FAILURES, ThreadException) as exc:
            raise OrchestratorError(f"ssh {self.address}: {action} failed: {self._why(exc)}") from None

    def _why(self, exc: BaseException) -> str:
        """A reason without paramiko's wording that may quote key material."""
        if isinstance(exc, paramiko.BadHostKeyException):
            return f"host key does not match {self.known_hosts}"
        if isinstance(exc, paramiko.PasswordRequiredException):
            return f"key {self.key_filename} is encrypted and no passphrase was given"
        if isinstance(exc, paramiko.AuthenticationException):
            return "authentication failed" + (f" with key {self.key_filename}" if self.key_filename else "")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return next(iter(exc.errors.values())).strerror or "connection failed"
        if isinstance(exc, TimeoutError):
            return f"timed out after {self.connect_timeout} s"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host: {exc.strerror}"
        if isinstance(exc, ThreadException):
            inner = exc.exceptions[0].value if exc.exceptions else None
            return self._why(inner) if isinstance(inner, _SSH_FAILURES) else "connection closed"
        if isinstance(exc, EOFError):
            return "connection closed"
        if isinstance(exc, paramiko.SSHException):
            return _ssh_reason(exc, self.known_hosts, self.connect_timeout)
        return " ".join(str(part) for part in (exc.strerror or exc, exc.filename or "") if part)

    def _execute(self, argv, *, input, env, cwd, timeout, stream) -> Result:
        command = remote_command(argv, env=env, cwd=cwd)
        sink = _StreamEcho(self.echo) if stream else None
        conn = self.connection
        try:
            with self._ssh_errors(f"running {argv[0]}"):
                done = conn.run(
                    command,
                    hide=not stream,
                    warn=True,
                    pty=False,
                    encoding="utf-8",
                    in_stream=io.BytesIO(_as_bytes(input)),  # empty: the command sees EOF at once
                    echo_stdin=False,
                    out_stream=sink.out if sink else None,
                    err_stream=sink.err if sink else None,
                    timeout=timeout,
                )
        except CommandTimedOut:
            raise CommandError(argv, 124, f"timed out after {timeout} s", self.describe()) from None
        if sink:
            return Result(argv, done.exited, sink.finish(), "")
        return Result(argv, done.exited, _rejoin(done.stdout), _rejoin(done.stderr))

    def put(
        self, local_path: str | os.PathLike, remote_path: str | os.PathLike, *, mutates: bool = True
    ) -> None:
        """Upload a file; ``remote_path`` (a file path) is replaced whole or not at all."""
        local, remote = os.fspath(local_path), os.fspath(remote_path)
        if self._dry_skip(mutates, f"put {local} -> {remote}"):
            return
        conn = self.connection
        partial = posixpath.join(
            posixpath.dirname(remote), f".{posixpath.basename(remote)}.{uuid.uuid4().hex[:8]}.part"
        )
        with self._ssh_errors(f"put {local} -> {remote}"):
            sftp = conn.sftp()
            try:
                conn.put(local, partial)
                sftp.posix_rename(partial, remote)
            except BaseException:
                _quietly(sftp.remove, partial)
                raise

    def get(
        self, remote_path: str | os.PathLike, local_path: str | os.PathLike, *, mutates: bool = True
    ) -> None:
        """Download a file; ``local_path`` is replaced whole or not at all.

        Pass ``mutates=False`` for a read that must happen under ``--dry`` too.
        """
        remote, local = os.fspath(remote_path), os.path.abspath(os.fspath(local_path))
        if self._dry_skip(mutates, f"get {remote} -> {local}"):
            return
        conn = self.connection
        with self._ssh_errors(f"get {remote} -> {local}"):
            fd, partial = tempfile.mkstemp(
                dir=os.path.dirname(local), prefix=f".{os.path.basename(local)}.", suffix=".part"
            )
            os.close(fd)
            try:
                conn.get(remote, partial)
                os.replace(partial, local)
            except BaseException:
                _quietly(os.unlink, partial)
                raise

    # --- files: SFTP for the bytes, coreutils' sync for durability (paramiko has no fsync) ---

    def _resolve(self, path: str) -> str:
        with self._ssh_errors(f"look up {path}"):
            sftp = self.connection.sftp()
            try:
                linked = stat.S_ISLNK(sftp.lstat(path).st_mode)
            except FileNotFoundError:
                return path
            return sftp.normalize(path) if linked else path

    def _read_bytes(self, path: str) -> bytes | None:
        with self._ssh_errors(f"read {path}"):
            try:
                with self.connection.sftp().open(path, "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None

    def _meta(self, path: str) -> FileMeta:
        with self._ssh_errors(f"stat {path}"):
            st = self.connection.sftp().stat(path)
        return FileMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def _make_parents(self, path: str) -> None:
        self.run(["mkdir", "-p", "--", posixpath.dirname(path)])

    def _put_atomically(self, path: str, data: bytes, meta: FileMeta) -> None:
        directory, name = posixpath.split(path)
        partial = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self._ssh_errors(f"write {path}"):
            sftp = self.connection.sftp()
            try:
                self._upload(sftp, partial, data, meta)
                self.run(["sync", "--", partial])
                crash_point("file-written")
                sftp.posix_rename(partial, path)
            except BaseException:
                _quietly(sftp.remove, partial)
                raise
        crash_point("file-replaced")
        self.run(["sync", "--", directory])

    @staticmethod
    def _upload(sftp, path: str, data: bytes, meta: FileMeta) -> None:
        with sftp.open(path, "wx") as handle:
            for start in range(0, len(data), WRITE_CHUNK):
                handle.write(data[start:start + WRITE_CHUNK])
                crash_point("file-writing")
            handle.chmod(meta.mode)
            if meta.uid != -1:
                handle.chown(meta.uid, meta.gid)

    @contextmanager
    def _scratch_copy(self, path: str, data: bytes) -> Iterator[str]:
        scratch = self.run(["mktemp", "-d"], mutates=False).stdout.strip()
        try:
            copy = posixpath.join(scratch, posixpath.basename(path))
            with self._ssh_errors(f"write {copy}"):
                self._upload(self.connection.sftp(), copy, data, FileMeta(0o600, -1, -1))
            yield copy
        finally:
            self.run(["rm", "-rf", "--", scratch], check=False, mutates=False)

    @contextmanager
    def forward_remote(
        self, remote_port: int, local_port: int | None = None, *, remote_host: str = "127.0.0.1"
    ) -> Iterator[int]:
        """Like ``ssh -R``: connections to the server's port reach our local port.

        Yields the server port (useful when ``remote_port`` is 0).
        """
        pair = [(remote_port, local_port or remote_port)]
        with self.forward_remote_many(pair, remote_host=remote_host) as ports:
            yield ports[0]

    @contextmanager
    def forward_remote_many(
        self, pairs: Iterable[tuple[int, int]], *, remote_host: str = "127.0.0.1"
    ) -> Iterator[list[int]]:
        """Forward several server ports to local ports through this one SSH session.

        paramiko keeps one forwarded-tcpip handler per transport, so two
        ``Connection.forward_remote`` calls misroute: the second handler takes
        the first port's connections too. Here one dispatcher routes every
        incoming channel by the server port it arrived on. Yields the server
        ports in order (a 0 asks the server to pick one).
        """
        pairs = [(int(remote), int(local)) for remote, local in pairs]
        fixed = [remote for remote, _ in pairs if remote]
        if len(set(fixed)) != len(fixed):
            raise ValueError(f"remote port listed twice: {pairs}")
        plan = ", ".join(f"remote {remote_host}:{remote} -> local {local}" for remote, local in pairs)
        if self._dry_skip(True, f"forward {plan}"):
            yield [remote for remote, _ in pairs]
            return
        if self._forwarding:
            raise OrchestratorError(
                f"{self.describe()}: a remote forward is already active;"
                " pass every port to one forward_remote_many"
            )
        transport = self.connection.transport
        dispatcher = _PortDispatcher()
        bound: list[int] = []
        self._forwarding = True
        try:
            for remote, local in pairs:
                bound.append(self._request_forward(transport, dispatcher, remote_host, remote, local))
            yield list(bound)
        finally:
            for port in bound:
                _quietly(transport.cancel_port_forward, remote_host, port)
            dispatcher.close()
            self._forwarding = False

    def _request_forward(self, transport, dispatcher, remote_host: str, remote: int, local: int) -> int:
        """Ask sshd to listen on ``remote_host:remote``; route it to ``local``."""
        if remote:
            dispatcher.routes[remote] = local  # before asking: a connection may arrive at once
        with self._ssh_errors(f"forward remote {remote_host}:{remote} -> local {local}"):
            port = transport.request_port_forward(remote_host, remote, handler=dispatcher)
        dispatcher.routes[port] = local
        return port

    def _dry_skip(self, mutates: bool, what: str) -> bool:
        if self.dry and mutates:
            self.echo(f"[dry-run] {self.describe()}: {what}")
            return True
        return False


class _ExactRemote(Remote):
    """fabric's runner with stdin and output kept byte-exact.

    invoke reads a non-terminal ``in_stream`` one byte per 10 ms tick and
    round-trips it through str, and decodes output chunk by chunk with
    ``replace``. Here stdin goes through in large raw chunks, and output is
    decoded with ``surrogateescape`` so ``_rejoin`` can restore characters split
    across chunk boundaries.
    """

    def read_our_stdin(self, input_):
        return input_.read(STDIN_CHUNK)

    def write_proc_stdin(self, data: bytes) -> None:
        self._write_proc_stdin(data)

    def decode(self, data: bytes) -> str:
        return data.decode(self.encoding, "surrogateescape")


class _StreamEcho:
    """Echo remote stdout and stderr line by line and keep the last lines."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.tail: deque[str] = deque(maxlen=STREAM_TAIL_LINES)
        self.lock = threading.Lock()
        self.out = _LineWriter(self._line)
        self.err = _LineWriter(self._line)

    def _line(self, text: str) -> None:
        line = _rejoin(text)
        with self.lock:
            self.echo(line)
            self.tail.append(line)

    def finish(self) -> str:
        self.out.close()
        self.err.close()
        return "".join(line + "\n" for line in self.tail)


class _LineWriter:
    """A write-only text stream (what invoke writes output to) that emits whole lines."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        self.partial = ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.on_line(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.partial:
            self.on_line(self.partial)
            self.partial = ""


class _PortDispatcher:
    """The one forwarded-tcpip handler of a transport: routes channels by server port.

    paramiko calls it on the transport's own thread, which must not block, so
    each channel gets a pump thread that connects to 127.0.0.1:local_port.
    """

    def __init__(self, local_host: str = "127.0.0.1"):
        self.local_host = local_host
        self.routes: dict[int, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: set[threading.Thread] = set()
        self.ends: set = set()  # channels and sockets of connections still open

    def __call__(self, channel, origin, server) -> None:
        local_port = self.routes.get(server[1])
        with self.lock:
            if local_port is None or self.stop.is_set():
                channel.close()
                return
            thread = threading.Thread(
                target=self._pump, args=(channel, local_port), name=f"forward-{server[1]}", daemon=True
            )
            self.threads.add(thread)
            self.ends.add(channel)
        thread.start()

    def _pump(self, channel, local_port: int) -> None:
        sock = None
        try:
            sock = socket.create_connection((self.local_host, local_port), timeout=FORWARD_JOIN)
            sock.settimeout(None)
            with self.lock:
                self.ends.add(sock)
            _splice(channel, sock, self.stop)
        except OSError:
            pass  # either side went away (or we are closing): the other side sees EOF
        finally:
            channel.close()
            if sock is not None:
                sock.close()
            with self.lock:
                self.ends.difference_update({channel, sock})
                self.threads.discard(threading.current_thread())

    def close(self) -> None:
        """Stop routing, cut open connections (unblocking any pending send), join pumps."""
        with self.lock:
            self.stop.set()
            threads, ends = list(self.threads), list(self.ends)
        for end in ends:
            if isinstance(end, socket.socket):
                _quietly(end.shutdown, socket.SHUT_RDWR)
            else:
                _quietly(end.close)
        for thread in threads:
            thread.join(FORWARD_JOIN)


def _splice(channel, sock: socket.socket, stop: threading.Event) -> None:
    """Copy both ways until both sides are done, passing each half-close on."""
    peer = {channel: sock, sock: channel}
    while peer and not stop.is_set():
        readable, _, _ = select.select(list(peer), [], [], FORWARD_POLL)
        for reader in readable:
            data = reader.recv(FORWARD_CHUNK)
            if data:
                peer[reader].sendall(data)
            else:
                peer.pop(reader).shutdown(socket.SHUT_WR)


def _ssh_reason(exc: paramiko.SSHException, known_hosts: str | None, timeout: float) -> str:
    message = str(exc).strip()
    if "not found in known_hosts" in message:
        return f"host key not in {known_hosts}"
    if "protocol banner" in message and isinstance(exc.__context__, EOFError):
        return "closed before the SSH greeting (not an SSH server?)"
    if "protocol banner" in message or "No existing session" in message:
        # the second is what paramiko says when the handshake outlives the connect timeout
        return f"no SSH handshake within {timeout} s (not an SSH server?)"
    return message.splitlines()[0] if message else "SSH error"


def _as_bytes(data: str | bytes | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else bytes(data)


def _rejoin(text: str) -> str:
    """Re-decode text whose UTF-8 sequences were split across read chunks."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def _quietly(func, *args) -> None:
    """Best-effort cleanup: the original error matters more than this one."""
    try:
        func(*args)
    except Exception:
        pass


__all__ = ["RemoteTarget", "remote_command"]
