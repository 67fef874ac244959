"""pam_loginuid on a host: login services' PAM stacks checked and fixed, and the login uid read back over SSH.

``check_and_fix_loginuid`` is one step of ``inv harden`` per host. For each configured service it reads
``/etc/pam.d/NAME`` (under the host's ``root``), follows its includes on the host, and adds
``session required pam_loginuid.so`` when the session stack has no enforcing entry (``pam.ensure_loginuid``:
one line, validated, written atomically, the previous file kept as ``.NAME.previous``; under ``--dry`` the
diff is printed and nothing is written). A service whose file does not exist (atd not installed) is
reported, never created. Before a required line goes in, the module itself must be on the host: a required
entry naming a missing module fails every session, and for sshd that is the way in.

sshd reads its PAM stack at each new connection, so no restart is needed; the proof is
``loginuid_over_ssh`` on a NEW connection: ``/proc/self/loginuid`` there must be set (4294967295 is
"unset"). It stays unset when sshd runs with ``UsePAM no``, whatever the PAM files say.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config.guard import never_loginuid
from ..errors import OrchestratorError
from ..run import Target
from . import pam

PAM_DIRS = ("etc/pam.d", "usr/lib/pam.d")  # Linux-PAM looks in /etc/pam.d first, then the vendor directory
ESCALATION_SERVICES = ("su", "su-l", "sudo", "sudo-i", "runuser", "runuser-l")
UNSET = 4294967295  # (uid_t)-1: no login uid
MODULE_FOUND = r"""
for f in "$1"/lib*/security/pam_loginuid.so "$1"/usr/lib*/security/pam_loginuid.so \
         "$1"/lib/*/security/pam_loginuid.so "$1"/usr/lib/*/security/pam_loginuid.so; do
  [ -e "$f" ] && { printf '%s\n' "$f"; exit 0; }
done
exit 1
"""


@dataclass
class ServiceLoginuid:
    """One service: ``present`` (nothing to do), ``added``, ``would-add`` (dry), ``missing-file``,
    ``no-module`` (not added: the module is not on the host) or ``failed`` (the file was refused)."""

    service: str
    path: str
    status: str
    message: str = ""
    previous: str | None = field(default=None, repr=False)  # the text we replaced, for an undo

    @property
    def ok(self) -> bool:
        return self.status in ("present", "added", "would-add", "missing-file")


@dataclass
class LoginuidResult:
    """What harden prints and puts in the report for one host."""

    services: list[ServiceLoginuid] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.services)

    @property
    def changed(self) -> list[str]:
        return [s.path for s in self.services if s.status == "added"]

    def summary(self) -> str:
        """One line: ``loginuid: sshd added, crond present, atd missing-file``."""
        return "loginuid: " + ", ".join(f"{s.service} {s.status}" for s in self.services)

    def as_dict(self) -> dict[str, Any]:
        services = {s.service: {"status": s.status, **({"message": s.message} if s.message else {})}
                    for s in self.services}
        return {"services": services, **({"warnings": self.warnings} if self.warnings else {})}


def check_and_fix_loginuid(target: Target, services: Iterable[str], *, root: str = "/") -> LoginuidResult:
    """Each service's session stack made to set the login uid; su/sudo stacks that do are warned about.

    On a ``--dry`` target it reads and plans, prints the diff and writes nothing. ``root`` is the host's
    system root as seen over SSH (``fleet.hosts[].root``).
    """
    host = _HostPam(target, root)
    result = LoginuidResult()
    for name in services:
        result.services.append(host.fix(name))
    result.warnings = host.escalation_warnings()
    return result


class _HostPam:
    """The host's PAM files under ``root``, read once each."""

    def __init__(self, target: Target, root: str):
        self.target, self.root = target, root
        self._texts: dict[str, str | None] = {}
        self._module: bool | None = None

    def at(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.root, path.lstrip("/")))

    def service_path(self, name: str) -> str:
        return self.at(posixpath.join(PAM_DIRS[0], name))

    def read(self, path: str) -> str | None:
        if path not in self._texts:
            self._texts[path] = self.target.read_file(path)
        return self._texts[path]

    def resolve(self, name: str) -> str | None:
        """An included file as PAM finds it: an absolute path, else /etc/pam.d/NAME, else /usr/lib/pam.d/NAME."""
        if name.startswith("/"):
            return self.read(self.at(name))
        for directory in PAM_DIRS:
            text = self.read(self.at(posixpath.join(directory, name)))
            if text is not None:
                return text
        return None

    def module_on_host(self) -> bool:
        if self._module is None:
            argv = ["sh", "-c", MODULE_FOUND, "sh", self.root.rstrip("/")]
            self._module = self.target.run(argv, check=False, mutates=False).ok
        return self._module

    def fix(self, name: str) -> ServiceLoginuid:
        path = self.service_path(name)
        if never_loginuid(name):
            return ServiceLoginuid(name, path, "failed", "su/sudo: pam_loginuid must never be set there; refused")
        text = self.read(path)
        if text is None:
            return ServiceLoginuid(name, path, "missing-file", f"no {path}: not installed; nothing created")
        try:
            return self._fix(name, path, text)
        except OrchestratorError as exc:
            return ServiceLoginuid(name, path, "failed", str(exc))

    def _fix(self, name: str, path: str, text: str) -> ServiceLoginuid:
        found = pam.loginuid_entries(text, name, self.resolve)
        enforced = [f for f in found if f.enforcing]
        if enforced:
            return ServiceLoginuid(name, path, "present", enforced[0].describe())
        if not self.module_on_host():
            return ServiceLoginuid(name, path, "no-module", "pam_loginuid.so is not in any lib*/security "
                                   "directory of the host; a required line naming it would fail every session")
        new = pam.ensure_loginuid(text, name, self.resolve)
        self._write(name, path, new)
        why = _why_added(text, found)
        if self.target.dry:
            return ServiceLoginuid(name, path, "would-add", why)
        return ServiceLoginuid(name, path, "added", f"{why}; the previous file kept as .{name}.previous",
                               previous=text)

    def _write(self, name: str, path: str, new: str) -> None:
        """Validated, atomic, previous kept (``replace_file``; on a dry target it prints the diff only)."""
        self.target.replace_file(path, new, validate=pam.loginuid_validator(name, self.resolve))
        if not self.target.dry:
            self._texts[path] = new

    def escalation_warnings(self) -> list[str]:
        """su/sudo stacks that run pam_loginuid (directly or through an include): reported, never edited."""
        warnings = []
        for name in ESCALATION_SERVICES:
            text = self.read(self.service_path(name))
            if text is None:
                continue
            try:
                found = pam.loginuid_entries(text, name, self.resolve)
            except OrchestratorError as exc:
                warnings.append(f"{self.service_path(name)}: not read: {exc}")
                continue
            if found:
                warnings.append(f"{self.service_path(name)}: runs pam_loginuid ({found[0].describe()}): "
                                f"{name} would overwrite the login uid; remove it by hand (harden never edits it)")
        return warnings


def _why_added(text: str, found: list[pam.Found]) -> str:
    if found:
        return f"only {found[0].describe()} (a failure would pass unnoticed); a required line added"
    commented = pam.commented_out(text)
    if commented:
        return f"none in the stack (commented out on line {commented[0]}, left as it is); a required line added"
    return "none in the stack; a required line added"


def undo_loginuid(target: Target, result: LoginuidResult) -> list[str]:
    """Put back the files ``check_and_fix_loginuid`` changed (for a host where the new stack let no one in)."""
    restored = []
    for service in result.services:
        if service.status == "added" and service.previous is not None:
            target.replace_file(service.path, service.previous, keep_previous=False)
            restored.append(service.path)
    return restored


def parse_loginuid(text: str) -> int | None:
    """``/proc/self/loginuid`` as a uid; None when unset (4294967295, or -1 on old kernels)."""
    value = text.strip()
    if value in ("-1", str(UNSET)):
        return None
    if not value.isdigit() or int(value) > UNSET:
        raise OrchestratorError(f"/proc/self/loginuid: {value[:40]!r} is not a uid")
    return int(value)


def loginuid_over_ssh(target: Target) -> int | None:
    """The login uid of this SSH session (None: unset, or a kernel without audit support has no
    /proc/self/loginuid). Read on a NEW connection after the edit: a session keeps what PAM set when it
    opened."""
    result = target.run(["cat", "/proc/self/loginuid"], check=False, mutates=False)
    return parse_loginuid(result.stdout) if result.ok else None


__all__ = ["LoginuidResult", "ServiceLoginuid", "check_and_fix_loginuid", "loginuid_over_ssh", "parse_loginuid",
           "undo_loginuid"]
