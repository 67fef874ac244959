"""Key ``guard.images[].audit``: the image's audit rules (``/etc/audit/rules.d/``, loaded by ``augenrules``).

auditctl reads a rules file word by word, split on whitespace, one rule a line: a value with a space,
a newline or a control character would change or add a rule, so it is refused here with one line
naming the key. Whether a rule parses is auditctl's call, made on the build box before upload
(``orchestrator.security.audit_validate``); here only what no rule line may hold, and the rules we
write ourselves (``-D``, ``-b``, ``-f``, ``-e``), are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..errors import ConfigError
from .validator import Between

UNSET_AUID = 4294967295  # (uid_t)-1: "no login uid" (daemons, boot); auditctl calls it "unset"
AUDIT_PATH = re.compile(r"/[A-Za-z0-9._+@:/-]*")  # one word of a rules file: no spaces, quotes or control chars
RULE_WORD = re.compile(r"[\x21-\x7e]+")
LOCAL_RULE_START = ("-a", "-A", "-w")  # a syscall rule (appended or prepended) or a file watch
CONTROL_WORDS = {"-D", "-b", "-f", "-e", "-r", "--backlog_wait_time", "-d", "-W", "--loginuid-immutable"}
# setuid programs (and mount) on a Gentoo host, merged /usr or not: a rule on a missing file only watches
# its directory, so a path a host lacks is harmless.
PRIVILEGED = ["/usr/bin/sudo", "/bin/su", "/usr/bin/passwd", "/usr/bin/chsh", "/usr/bin/chfn",
              "/usr/bin/newgrp", "/usr/bin/gpasswd", "/bin/mount", "/bin/umount", "/usr/bin/crontab"]

EVERYTHING_WARNING = ("WARNING (seed 002): DO NOT ENABLE THIS ON PRODUCTION SYSTEMS WITHOUT PROPER TESTING: "
                      "every system call of this login uid is logged")


@dataclass(frozen=True)
class AuditConfig:
    """``enabled``: the image gets audit rules (auditd must be installed on its hosts). ``buffer`` (``-b``),
    ``failure`` (``-f``: 0 silent, 1 printk, 2 panic) and ``backlog_wait_time`` go to 10-base-config;
    ``watches`` are paths watched for writes and attribute changes beside the built-in list;
    ``privileged`` the programs whose runs by a logged-in user are logged; ``exec_logging`` logs every
    execve of a login uid >= ``exec_min_auid``; ``everything_auid`` logs EVERY system call of that one
    login uid (the seed's rule, with its warning); ``immutable`` adds ``-e 2`` for the next boot only;
    ``local_rules`` are rule lines of your own (``-a``/``-A``/``-w``), each parsed by auditctl before upload.
    """

    enabled: bool = False
    buffer: Annotated[int, Between(64, 1048576)] = 8192
    failure: Literal[0, 1, 2] = 1
    backlog_wait_time: Annotated[int, Between(0, 600000)] = 60000
    watches: list[str] = field(default_factory=list)
    privileged: list[str] = field(default_factory=lambda: list(PRIVILEGED))
    exec_logging: bool = True
    exec_min_auid: Annotated[int, Between(0, UNSET_AUID - 1)] = 1000
    abi32: bool = True  # also rules for the 32-bit ABI (arch=b32): x86_64 and arm64 kernels run 32-bit programs
    everything_auid: Annotated[int, Between(0, UNSET_AUID - 1)] | None = None
    immutable: bool = False
    local_rules: list[str] = field(default_factory=list)

    def check(self, key: str) -> None:
        for name in ("watches", "privileged"):
            for i, path in enumerate(getattr(self, name)):
                check_path(path, f"{key}.{name}[{i}]")
        for i, rule in enumerate(self.local_rules):
            check_local_rule(rule, f"{key}.local_rules[{i}]")


def check_path(path: str, key: str) -> None:
    if not AUDIT_PATH.fullmatch(path) or "/../" in path + "/" or "//" in path:
        raise ConfigError(f"{key}: {_shown(path)} is not an absolute path of letters, digits and . _ + @ : - / "
                          "(a space would split the audit rule)")


def check_local_rule(rule: str, key: str) -> None:
    """One rule line: printable words only, a rule (not a control line: those are settings of their own)."""
    words = rule.split(" ")
    if not rule or not all(RULE_WORD.fullmatch(word) for word in words):
        raise ConfigError(f"{key}: {_shown(rule)} is not one rule line of printable words separated by single "
                          "spaces (no tabs, newlines or control characters)")
    if words[0] not in LOCAL_RULE_START:
        raise ConfigError(f"{key}: {_shown(rule)} must start with -a, -A or -w (a syscall rule or a watch)")
    control = sorted(CONTROL_WORDS.intersection(words))
    if control:
        raise ConfigError(f"{key}: {_shown(rule)} holds the control option {control[0]}; use the audit settings "
                          "(buffer, failure, backlog_wait_time, immutable) instead")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["EVERYTHING_WARNING", "PRIVILEGED", "UNSET_AUID", "AuditConfig"]
