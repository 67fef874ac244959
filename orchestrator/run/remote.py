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

from ..errors import CommandError, ConfigError, Interrupted, OrchestratorError
from ..faults import crash_point
from .base import Result, Target
from .files import WRITE_CHUNK, FileMeta
from .local import STREAM_TAIL_LINES

STDIN_CHUNK = 256 * 1024
FORWARD_CHUNK = 64 * 1024
FORWARD_POLL = 0.2  # how soon a pump thread notices the forward is being torn down
FORWARD_JOIN = 5.0
KILL_GRACE = 5.0  # seconds a remote command gets between SIGTERM and SIGKILL
KILL_TIMEOUT = 20.0  # the most the kill of remote commands may take, connecting included
MARKER_WAIT = 2.0  # how long an abort waits for a just-started command to say its process group
LINE_CHUNK = 256 * 1024  # stream_lines: bytes read from the channel at once
LINE_POLL = 0.5  # stream_lines: how often a reader waiting for stdout drains stderr

# Stops remote process groups: SIGTERM to each, SIGKILL to those still there after $1 tenths of a second.
# Its arguments are numbers we parsed ourselves. No "--" before "-PGID": busybox ash and dash refuse it.
KILL_GROUPS = """\
grace=$1; shift
for g in "$@"; do kill -TERM "-$g" 2>/dev/null; done
n=0
while [ "$n" -lt "$grace" ]; do
    alive=
    for g in "$@"; do kill -0 "-$g" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || exit 0
    sleep 0.1
    n=$((n + 1))
done
for g in "$@"; do kill -KILL "-$g" 2>/dev/null; done
exit 0
"""

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


def _marker(token: str) -> bytes:
    return f"geo-pgid-{token} ".encode()


def killable_command(command: str, token: str) -> str:
    """``command`` preceded by a line on stderr that names its process group (stripped again on our side).

    sshd starts a command without a pty in a session of its own (OpenSSH's
    ``do_exec_no_pty`` calls ``setsid``): the login shell's ``$$`` is the process
    group of everything the command starts, which ``KILL_GROUPS`` ends. Same
    line, so an error of the command's shell still says ``line 1``.
    """
    return f"printf '{_marker(token).decode()}%s\\n' \"$$\" >&2; {command}"


class RemoteTarget(Target):
    """A host reached over SSH. Use as a context manager: the connection opens on
    first use and closes on exit.

    ``known_hosts=None`` accepts any host key (fabric's default, fit for fresh EC2
    instances); a path makes the check strict: the host must be listed there.
    ``command_timeout`` is the timeout of a ``run`` that gives none (None: no limit).

    Every command can be killed on the host (see ``killable_command``): after a
    timeout, on Ctrl-C or SIGTERM, and on ``abort()`` from another thread.
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
        command_timeout: float | None = None,
        before_connect: Callable[[], None] | None = None,
    ):
        super().__init__(dry=dry, echo=echo)
        self.command_timeout = command_timeout
        self.before_connect = before_connect  # run before each new TCP connection (a knock through a guard)
        self.host = host
        self.user = user
        self.port = int(port)
        self.key_filename = os.fspath(key_filename) if key_filename is not None else None
        self.connect_timeout = connect_timeout
        self.known_hosts = os.fspath(known_hosts) if known_hosts is not None else None
        self._conn: Connection | None = None
        self._opening: Connection | None = None  # a connection being opened (an abort closes it too)
        self._forwarding = False
        self._lock = threading.Condition()
        self._running: dict[str, int | None] = {}  # token -> process group on the host (None: not known yet)
        self._aborted = False

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
        with self._lock:
            conn, self._conn = self._conn, None
            opening = self._opening
        if opening is not None:
            opening.client.close()  # unblocks a handshake in another thread
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """End everything of ours on the host, from any thread: every command still running is killed
        (its process group: SIGTERM, SIGKILL after ``KILL_GRACE``), then the connection is closed, which
        unblocks the thread waiting for that command. Whatever runs on this target afterwards fails at once.

        Closing the channel is not enough: without a pty the command never hears of it, and sshd does
        not pass on signal requests.
        """
        with self._lock:
            self._aborted = True
            self._lock.wait_for(lambda: None not in self._running.values(), MARKER_WAIT)
            groups = [group for group in self._running.values() if group]
            self._running.clear()
        try:
            if groups:
                self._kill_groups(groups)
        finally:
            self.close()

    @property
    def connection(self) -> Connection:
        """The fabric Connection, opened on first use."""
        with self._lock:
            self._check_aborted()
            if self._conn is not None:
                return self._conn
            conn = self._opening = self._new_connection()
        try:
            if self.before_connect is not None:
                self.before_connect()
            with self._ssh_errors("connect"):
                conn.open()
            with self._lock:
                self._check_aborted()
                self._conn = conn
        except BaseException:
            # fabric closes only a connection that opened: after a refused host key or login the
            # handshake's socket and transport thread would stay until sshd's LoginGraceTime.
            conn.client.close()
            conn.close()
            raise
        finally:
            with self._lock:
                self._opening = None
        return conn

    def _check_aborted(self) -> None:
        if self._aborted:
            raise Interrupted(f"{self.describe()}: aborted")

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
        timeout = self.command_timeout if timeout is None else timeout
        token = uuid.uuid4().hex[:16]
        command = killable_command(remote_command(argv, env=env, cwd=cwd), token)
        sink = _StreamEcho(self.echo) if stream else None
        conn = self.connection
        runner = _ExactRemote(context=conn, inline_env=conn.config.inline_ssh_env)
        runner.watch_group(_marker(token), lambda group: self._started(token, group))
        with self._lock:
            self._check_aborted()
            self._running[token] = None
        try:
            with self._ssh_errors(f"running {argv[0]}"), self._killed_unless_finished(token):
                done = runner.run(
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
        except OrchestratorError:
            if self._aborted:
                raise Interrupted(f"{self.describe()}: aborted while running {argv[0]}") from None
            raise
        if self._aborted and done.exited < 0:  # the channel closed under it: no exit status
            raise Interrupted(f"{self.describe()}: aborted while running {argv[0]}")
        if sink:
            return Result(argv, done.exited, sink.finish(), "")
        return Result(argv, done.exited, _rejoin(done.stdout), _rejoin(done.stderr))

    def _started(self, token: str, group: int) -> None:
        with self._lock:
            if token in self._running:
                self._running[token] = group
                self._lock.notify_all()

    @contextmanager
    def _killed_unless_finished(self, token: str) -> Iterator[None]:
        """A command that did not end by itself (timeout, Ctrl-C, SIGTERM, lost connection) is killed on the
        host, and whatever made it stop is raised as it was."""
        finished = False
        try:
            yield
            finished = True
        finally:
            with self._lock:
                group = self._running.pop(token, None)
            if group and not finished:
                _quietly(self._kill_groups, [group])

    def _kill_groups(self, groups: list[int]) -> None:
        """Run ``KILL_GROUPS`` on the host over a new channel: of this connection when it still works,
        else of a new one. Bounded by ``KILL_TIMEOUT``; a failure is one line."""
        argv = ["sh", "-c", KILL_GROUPS, "sh", str(round(KILL_GRACE * 10)), *(str(int(g)) for g in groups)]
        conn = self._conn
        if conn is not None and conn.transport is not None and conn.transport.is_active():
            self._run_bare(conn.transport, remote_command(argv))
            return
        fresh = self._new_connection()
        try:
            if self.before_connect is not None:
                self.before_connect()
            with self._ssh_errors("connect to kill remote commands"):
                fresh.open()
            self._run_bare(fresh.transport, remote_command(argv))
        finally:
            fresh.client.close()
            fresh.close()

    def _run_bare(self, transport: paramiko.Transport, command: str) -> None:
        """One command on a raw paramiko channel, waited for at most ``KILL_TIMEOUT`` seconds (no invoke
        runner: this runs while another thread may be inside one)."""
        with self._ssh_errors("kill remote commands"):
            channel = transport.open_session(timeout=KILL_TIMEOUT)
            try:
                channel.settimeout(KILL_TIMEOUT)
                channel.exec_command(command)
                channel.shutdown_write()
                while channel.recv(4096) or channel.recv_stderr(4096):
                    pass
            finally:
                channel.close()

    @contextmanager
    def stream_lines(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                     ok: Sequence[int] = (0,)) -> Iterator[Iterator[bytes]]:
        """Run ``argv`` on the host and yield an iterator over its stdout, one line (bytes, with its newline)
        at a time, as it arrives: memory holds one read chunk, however much the command prints.

        For output too large for ``run`` (invoke's runner keeps all of it). On a raw paramiko channel;
        stderr is read alongside (so it cannot stall stdout) and only its tail kept. After the block, an exit
        status not in ``ok`` raises ``CommandError`` with that tail; leaving the block early (an error, a
        consumer that stops, Ctrl-C) or ``abort()`` kills the command on the host like ``run`` does.
        Under ``--dry`` it runs too: it is for read-only commands.
        """
        token = uuid.uuid4().hex[:16]
        command = killable_command(remote_command(list(argv), env=env), token)
        with self._lock:
            self._check_aborted()
            self._running[token] = None
        reader = None
        try:
            with self._ssh_errors(f"running {argv[0]}"), self._killed_unless_finished(token):
                channel = self.connection.transport.open_session(timeout=self.connect_timeout)
                reader = _ChannelLines(channel, _marker(token), lambda group: self._started(token, group))
                channel.exec_command(command)
                channel.shutdown_write()
                yield reader.lines()
                status = reader.finish()
        finally:
            if reader is not None:
                reader.channel.close()
        if self._aborted and status < 0:
            raise Interrupted(f"{self.describe()}: aborted while running {argv[0]}")
        if status not in ok:
            raise CommandError(list(argv), status, reader.stderr_tail(), self.describe())

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

    _group_marker: bytes | None = None
    _on_group: Callable[[int], None] | None = None

    def watch_group(self, marker: bytes, on_group: Callable[[int], None]) -> None:
        """Strip the first stderr line when it starts with ``marker`` and pass its number to ``on_group``."""
        self._group_marker, self._on_group = marker, on_group

    def read_proc_stderr(self, num_bytes: int) -> bytes:
        data = super().read_proc_stderr(num_bytes)
        marker, self._group_marker = self._group_marker, None
        if marker is None:
            return data
        head = data
        while data and b"\n" not in head:
            data = super().read_proc_stderr(num_bytes)
            head += data
        line, newline, rest = head.partition(b"\n")
        if not (newline and line.startswith(marker) and line[len(marker):].isdigit()):
            return head  # not our wrapper's line (a login shell that is not POSIX): pass it on as it is
        self._on_group(int(line[len(marker):]))
        # b"" would tell invoke that stderr ended: while the command runs, wait for its first bytes instead
        return rest if rest or not data else super().read_proc_stderr(num_bytes)

    def wait(self) -> None:
        """On Ctrl-C or SIGTERM (``Interrupted``) close the channel first: invoke would otherwise join its
        reader threads, which wait for output from a command that keeps running. The command itself is
        killed by ``RemoteTarget`` once this returns."""
        try:
            super().wait()
        except BaseException:
            self.channel.close()
            raise

    def read_our_stdin(self, input_):
        return input_.read(STDIN_CHUNK)

    def write_proc_stdin(self, data: bytes) -> None:
        self._write_proc_stdin(data)

    def decode(self, data: bytes) -> str:
        return data.decode(self.encoding, "surrogateescape")


class _ChannelLines:
    """Lines of a paramiko channel's stdout, stderr drained alongside into a short tail.

    The channel's window is shared by both streams: a reader blocked on stdout while the command fills
    stderr would wait forever, so reads time out every ``LINE_POLL`` seconds to drain stderr. The first
    stderr line is ``killable_command``'s process group marker, passed to ``on_group``.
    """

    def __init__(self, channel, marker: bytes, on_group: Callable[[int], None]):
        self.channel = channel
        self.marker = marker
        self.on_group = on_group
        self.err = b""
        self.tail: deque[bytes] = deque(maxlen=STREAM_TAIL_LINES)
        channel.settimeout(LINE_POLL)

    def lines(self) -> Iterator[bytes]:
        partial = b""
        while True:
            try:
                data = self.channel.recv(LINE_CHUNK)
            except socket.timeout:
                self._drain_stderr()
                continue
            if not data:
                break
            self._drain_stderr()
            *complete, partial = (partial + data).split(b"\n")
            for line in complete:
                yield line + b"\n"
        if partial:
            yield partial

    def finish(self) -> int:
        """Wait for the command's end (what is left of stdout discarded, stderr read to its end); its exit
        status, -1 when the channel closed under it."""
        for _ in self.lines():
            pass
        self.channel.settimeout(None)
        while True:
            data = self.channel.recv_stderr(LINE_CHUNK)
            if not data:
                break
            self._keep(data)
        self._keep(b"\n")
        return self.channel.recv_exit_status()

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self._keep(self.channel.recv_stderr(LINE_CHUNK))

    def _keep(self, data: bytes) -> None:
        *complete, self.err = (self.err + data).split(b"\n")
        for line in complete:
            if self.marker is not None and line.startswith(self.marker) and line[len(self.marker):].isdigit():
                self.on_group(int(line[len(self.marker):]))
            elif line:
                self.tail.append(line)
            self.marker = None
        self.err = self.err[-LINE_CHUNK:]

    def stderr_tail(self) -> str:
        return b"\n".join(self.tail).decode("utf-8", "surrogateescape")


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
