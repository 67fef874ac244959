"""Run steps inside a chroot whose mounts live in a private namespace.

The Handbook mounts (proc, sys, dev, run) are made inside a mount namespace of
their own, held open by a small holder process, the way Catalyst does it. The
host's mount table never sees them, and they vanish with the namespace: on a
normal exit, on an exception, on Ctrl-C or SIGTERM, and even after ``kill -9``
of this Python process.

The holder is also the init of a private PID namespace that every command
joins. When the holder dies the kernel kills every process in that namespace,
so a build still running when we are killed cannot keep the namespace (and the
chroot) busy, nor run on unattended next to the following session.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Collection, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CommandError, ConfigError, OrchestratorError
from ..lock import held_lock
from .base import Result
from .local import LocalTarget

HOLDER_ARGV = [
    "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
    "--", "sleep", "infinity",
]
HOLDER_COMM = "sleep"
HOLDER_START_TIMEOUT_S = 5.0
HOLDER_STOP_TIMEOUT_S = 5.0
LEFTOVER_GRACE_S = 2.0
MOUNTPOINTS = ("proc", "sys", "dev", "run")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SAVED_RESOLV_CONF = ".resolv.conf.orchestrator-saved"
MAX_SYMLINKS = 40  # as the kernel's ELOOP limit
_CD_THEN_EXEC = 'cd -- "$1" || exit; shift; exec "$@"'
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: no dlopen between fork and exec


@dataclass(frozen=True)
class ChrootProcess:
    """A process whose root directory is inside the chroot.

    ``in_session`` is true when it belongs to our session's PID namespace (we
    started it); other ones were started by someone else, e.g. a manual chroot.
    """

    pid: int
    command: str
    in_session: bool

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


class ChrootTarget(LocalTarget):
    """``with ChrootTarget(root, lock_dir=...) as t: t.run([...])`` runs argv in ``chroot root``.

    ``extra_binds`` is a sequence of ``(host_path, path_inside_chroot)`` pairs,
    bind-mounted after the Handbook mounts (distfiles, binpkgs).

    Enter and leave the session from one thread that outlives it: the holder is
    told to die with the thread that started it (PR_SET_PDEATHSIG).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        lock_dir: str | os.PathLike,
        dry: bool = False,
        echo=None,
        resolv_conf: bool = True,
        extra_binds: Iterable[tuple[str | os.PathLike, str | os.PathLike]] = (),
    ):
        super().__init__(dry=dry, echo=echo)
        self.root = checked_root(root, need_etc=resolv_conf)
        self.lock_path = Path(lock_dir) / f"chroot-{_slug(self.root)}.lock"
        self.resolv_conf = resolv_conf
        self.extra_binds = _checked_binds(self.root, extra_binds)
        self.leftover_processes: list[ChrootProcess] = []
        self._holder: _Holder | None = None
        self._stack: ExitStack | None = None

    def describe(self) -> str:
        return f"chroot:{self.root}"

    def __enter__(self) -> ChrootTarget:
        if self._stack is not None:
            raise OrchestratorError(f"{self.describe()}: session already open")
        with ExitStack() as stack:
            if self.dry:
                self._print_plan()
            else:
                self._open(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> bool:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc_info)
        return False

    def _open(self, stack: ExitStack) -> None:
        """Lock, namespace, mounts, resolv.conf; each undone by ``stack`` in reverse."""
        self.leftover_processes = []
        stack.enter_context(held_lock(self.lock_path, f"chroot {self.root}"))
        self._holder = stack.enter_context(_namespace_holder(self.describe()))
        stack.callback(setattr, self, "_holder", None)
        stack.callback(self._stop_leftovers)
        _make_mountpoints(self.root, self.extra_binds)
        for argv in self._mount_plan():
            self._in_namespace(argv)
        if self.resolv_conf:
            stack.enter_context(_host_resolv_conf(self.root))

    def _mount_plan(self) -> list[list[str]]:
        """The Handbook mounts, then the extra binds, each run inside the namespace."""
        r = self.root
        plan = [
            ["mount", "--types", "proc", "/proc", f"{r}/proc"],
            ["mount", "--rbind", "/sys", f"{r}/sys"],
            ["mount", "--make-rslave", f"{r}/sys"],
            ["mount", "--rbind", "/dev", f"{r}/dev"],
            ["mount", "--make-rslave", f"{r}/dev"],
            ["mount", "--bind", "/run", f"{r}/run"],
            ["mount", "--make-slave", f"{r}/run"],
        ]
        return plan + [["mount", "--bind", str(src), str(dest)] for src, dest in self.extra_binds]

    def _print_plan(self) -> None:
        self._say_dry(HOLDER_ARGV)
        for argv in self._mount_plan():
            self._say_dry(["nsenter", "--target", "HOLDER_PID", "--mount", "--pid", "--", *argv])
        if self.resolv_conf:
            self._say_dry(["cp", "--dereference", str(HOST_RESOLV_CONF), f"{self.root}/etc/resolv.conf"])

    def _say_dry(self, argv: list[str]) -> None:
        self.echo(f"[dry-run] {self.describe()}: {shlex.join(argv)}")

    def _in_namespace(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self._holder.nsenter_argv(), *argv],
            capture_output=True, stdin=subprocess.DEVNULL, text=True, errors="replace",
        )
        if done.returncode != 0:
            raise CommandError(argv, done.returncode, done.stderr or done.stdout, self.describe())

    def wrap(self, argv: list[str]) -> list[str]:
        """nsenter into the session's namespaces, then chroot.

        Under ``--dry`` nothing is mounted, so read-only probes (the only
        commands that run then) use a plain ``chroot``.
        """
        if self._holder is not None:
            return [*self._holder.nsenter_argv(), "chroot", str(self.root), *argv]
        if self.dry:
            return ["chroot", str(self.root), *argv]
        raise OrchestratorError(f"{self.describe()}: run() outside its `with` block; nothing is mounted")

    def _execute(self, argv, *, input, env, cwd, timeout, stream) -> Result:
        """``cwd`` is a path inside the chroot: chroot(1) itself always starts in /."""
        inner = argv if cwd is None else ["/bin/sh", "-c", _CD_THEN_EXEC, "sh", cwd, *argv]
        result = super()._execute(inner, input=input, env=env, cwd=None, timeout=timeout, stream=stream)
        result.argv = argv
        return result

    # --- files: paths inside the chroot, read and written from the build box ---

    def host_path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _resolve(self, path: str) -> str:
        """Symlinks resolved as the chroot sees them: an absolute link points into the chroot, not the host."""
        return self._as_seen(str(resolve_in_root(self.root, path)))

    def _as_seen(self, host_path: str) -> str:
        relative = os.path.relpath(host_path, self.root)
        return "/" if relative == "." else "/" + relative

    def _scratch_parent(self) -> str:
        tmp = self.host_path(self._resolve("/tmp"))
        if not os.path.isdir(tmp):
            raise OrchestratorError(f"{self.describe()}: no /tmp directory inside the chroot for a validation copy")
        return tmp

    def _stop_leftovers(self) -> None:
        """Name what still runs inside the chroot; end ours (TERM, grace, KILL)."""
        holder = self._holder
        found = processes_inside(self.root, session_pid_ns=holder.pid_ns, exclude=holder.pids)
        self.leftover_processes = found
        if not found:
            return
        ours = [p for p in found if p.in_session]
        others = [p for p in found if not p.in_session]
        message = f"WARNING: {self.describe()}: still running at the end of the session: "
        message += ", ".join(map(str, found))
        if ours:
            message += "; terminating " + ", ".join(str(p.pid) for p in ours)
        if others:
            message += "; not started by this session, left running: " + ", ".join(str(p.pid) for p in others)
        self.echo(message)
        terminate([p.pid for p in ours], grace=LEFTOVER_GRACE_S)


def checked_root(root: str | os.PathLike, *, need_etc: bool = False) -> Path:
    """The resolved chroot root, or a one-line ConfigError saying why it cannot be one."""
    path = Path(root)
    if not path.exists():
        raise ConfigError(f"chroot root {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"chroot root {path} is not a directory")
    resolved = path.resolve()
    if resolved == Path("/"):
        raise ConfigError(f"chroot root {path} is the host's /; refusing")
    if not os.path.lexists(resolved / "bin" / "sh"):
        raise ConfigError(f"chroot root {path} has no bin/sh: not an unpacked root filesystem (stage3)")
    for name in MOUNTPOINTS:
        if (resolved / name).is_symlink():
            raise ConfigError(f"chroot root {path}: {name} is a symlink; a mountpoint must be a directory")
    if need_etc and ((resolved / "etc").is_symlink() or not (resolved / "etc").is_dir()):
        raise ConfigError(f"chroot root {path}: etc is missing or a symlink; cannot place resolv.conf")
    return resolved


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of ``path`` as a process chrooted into ``root`` would open it.

    Each symlink on the way is read and followed relative to ``root`` (an
    absolute target starts again at ``root``), and ``..`` never climbs above
    it, so no link inside the chroot can lead a write to a host file.
    Components that do not exist yet are kept as they are.
    """
    parts = list(reversed(PurePosixPath(path).parts[1:]))
    current, links = root, 0
    while parts:
        part = parts.pop()
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OrchestratorError(f"chroot {root}: too many levels of symbolic links in {path}")
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            current, target = root, target.relative_to("/")
        parts.extend(reversed(target.parts))
    return current


def _checked_binds(root: Path, binds) -> list[tuple[Path, Path]]:
    checked = []
    for source, inside in binds:
        source = Path(source)
        if not source.exists():
            raise ConfigError(f"chroot {root}: extra bind source {source} does not exist")
        relative = PurePosixPath("/", inside).relative_to("/")
        target = root / relative
        if ".." in relative.parts or not relative.parts or not _is_within(os.path.realpath(target), root):
            raise ConfigError(f"chroot {root}: extra bind target {inside} is not a path inside the chroot")
        checked.append((source, target))
    return checked


def _make_mountpoints(root: Path, binds: list[tuple[Path, Path]]) -> None:
    for name in MOUNTPOINTS:
        (root / name).mkdir(mode=0o755, exist_ok=True)
    for source, target in binds:
        if source.is_dir():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        else:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.touch(exist_ok=True)


def _slug(root: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", root.name) or "root"
    return f"{name}-{hashlib.sha256(os.fsencode(root)).hexdigest()[:12]}"


def _is_within(path: str, root: Path) -> bool:
    top = str(root)
    return path == top or path.startswith(top.rstrip("/") + "/")


# --- the namespace holder -------------------------------------------------


@dataclass
class _Holder:
    """``unshare`` (our child) and its forked child, the init of the new namespaces."""

    proc: subprocess.Popen
    init_pid: int
    init_fd: int
    pid_ns: str

    @property
    def pids(self) -> set[int]:
        return {self.proc.pid, self.init_pid}

    def nsenter_argv(self) -> list[str]:
        return ["nsenter", "--target", str(self.init_pid), "--mount", "--pid", "--"]


@contextmanager
def _namespace_holder(where: str):
    """Start the holder, yield it, and kill it: the kernel then ends its namespaces."""
    parent = os.getpid()
    try:
        proc = subprocess.Popen(
            HOLDER_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=lambda: _die_with_parent(parent),
        )
    except FileNotFoundError as exc:
        raise OrchestratorError(f"{where}: {exc.filename} not found; install util-linux") from None
    with proc:
        init_fd = -1
        try:
            init_pid, init_fd = _await_init(proc, where)
            holder = _Holder(proc, init_pid, init_fd, os.readlink(f"/proc/{init_pid}/ns/pid"))
            _check_private(holder, where)
            yield holder
        finally:
            _stop_holder(proc, init_fd)


def _die_with_parent(parent: int) -> None:
    """In the forked child: get SIGKILL when the parent dies, even by ``kill -9``."""
    if _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _await_init(proc: subprocess.Popen, where: str) -> tuple[int, int]:
    """Wait until unshare's child has exec'd the waiter: namespaces are set up by then."""
    deadline = time.monotonic() + HOLDER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = proc.stderr.read().decode(errors="replace").strip().replace("\n", " | ")
            raise OrchestratorError(f"{where}: cannot create private namespaces: {reason or proc.returncode}")
        pid = _child_named(proc.pid, HOLDER_COMM)
        if pid is not None:
            fd = os.pidfd_open(pid)
            if _parent_of(pid) == proc.pid:
                return pid, fd
            os.close(fd)
        time.sleep(0.01)
    raise OrchestratorError(f"{where}: namespace holder did not start within {HOLDER_START_TIMEOUT_S} s")


def _check_private(holder: _Holder, where: str) -> None:
    """Refuse to mount anything unless the namespace is private: mounts must not reach the host."""
    own = f"/proc/{os.getpid()}"
    init = f"/proc/{holder.init_pid}"
    if os.readlink(f"{init}/ns/mnt") == os.readlink(f"{own}/ns/mnt") or holder.pid_ns == os.readlink(f"{own}/ns/pid"):
        raise OrchestratorError(f"{where}: namespace holder shares our namespaces; refusing to mount")
    with open(f"{init}/mountinfo") as mountinfo:
        if any(" shared:" in line for line in mountinfo):
            raise OrchestratorError(f"{where}: namespace mounts still propagate to the host; refusing to mount")


def _stop_holder(proc: subprocess.Popen, init_fd: int) -> None:
    """Kill the namespace init (the kernel then kills everything in it), reap unshare."""
    if init_fd >= 0:
        _pidfd_signal(init_fd, signal.SIGKILL)
        os.close(init_fd)
    else:
        proc.kill()
    try:
        proc.wait(timeout=HOLDER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _child_named(parent: int, comm: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent_of(int(entry)) == parent and _read(f"/proc/{entry}/comm") == comm:
            return int(entry)
    return None


def _parent_of(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""


# --- processes inside the chroot ------------------------------------------


def processes_inside(
    root: Path, *, session_pid_ns: str | None = None, exclude: Collection[int] = ()
) -> list[ChrootProcess]:
    """Processes whose root directory (``/proc/PID/root``) is ``root`` or below it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            where = os.readlink(f"/proc/{entry}/root")
            pid_ns = os.readlink(f"/proc/{entry}/ns/pid")
        except OSError:
            continue  # exited, or a zombie: it has no root any more
        if _is_within(where, root):
            found.append(ChrootProcess(int(entry), _command(int(entry)), pid_ns == session_pid_ns))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [os.fsdecode(a) for a in handle.read().split(b"\0") if a]
    except OSError:
        args = []
    return shlex.join(args) if args else f"[{_read(f'/proc/{pid}/comm') or '?'}]"


def terminate(pids: Iterable[int], *, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left.

    Processes are held by pidfd, so a PID reused meanwhile is never signalled.
    """
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
    try:
        for fd in fds:
            _pidfd_signal(fd, signal.SIGTERM)
        for fd in _still_running(fds, grace):
            _pidfd_signal(fd, signal.SIGKILL)
    finally:
        for fd in fds:
            os.close(fd)


def _still_running(fds: list[int], grace: float) -> list[int]:
    """The pidfds whose process has not exited after ``grace`` seconds."""
    running = set(fds)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + grace
    while running and (left := deadline - time.monotonic()) > 0:
        for fd, _event in poller.poll(left * 1000):
            running.discard(fd)
            poller.unregister(fd)
    return [fd for fd in fds if fd in running]


def _pidfd_signal(fd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass


# --- resolv.conf ----------------------------------------------------------


@contextmanager
def _host_resolv_conf(root: Path):
    """Copy the host's resolv.conf (dereferenced) into the chroot; put the chroot's own back.

    The chroot's file is renamed aside, never written through: it may be a
    symlink, which from the host would point at a host file. A saved file left
    by a killed session is the chroot's original, so it is kept, not replaced.
    """
    if not HOST_RESOLV_CONF.exists():
        yield
        return
    etc = os.open(root / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _put_host_copy(etc, HOST_RESOLV_CONF.read_bytes())
        try:
            yield
        finally:
            _restore_own(etc)
    finally:
        os.close(etc)


def _put_host_copy(etc: int, data: bytes) -> None:
    if not _lexists(SAVED_RESOLV_CONF, etc):
        if _lexists("resolv.conf", etc):
            os.rename("resolv.conf", SAVED_RESOLV_CONF, src_dir_fd=etc, dst_dir_fd=etc)
    elif _lexists("resolv.conf", etc):
        os.unlink("resolv.conf", dir_fd=etc)
    fd = os.open("resolv.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=etc)
    with open(fd, "wb") as handle:
        handle.write(data)


def _restore_own(etc: int) -> None:
    if _lexists(SAVED_RESOLV_CONF, etc):
        os.rename(SAVED_RESOLV_CONF, "resolv.conf", src_dir_fd=etc, dst_dir_fd=etc)
    elif _lexists("resolv.conf", etc):
        os.unlink("resolv.conf", dir_fd=etc)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


__all__ = ["ChrootProcess", "ChrootTarget", "checked_root", "processes_inside", "resolve_in_root", "terminate"]
