"""Audit rules parsed by the real auditctl on the build box, never loaded into its kernel.

The kernel's audit is not namespaced and auditctl has no dry run: ``auditctl -R FILE`` parses a
line and sends it to the kernel at once (in a user namespace it cannot open the socket, and exits 0
without parsing anything: a false pass). So each rule line runs under strace, which lets the first
netlink send through (``AUDIT_GET``, a read: ``-R`` asks whether the rules are immutable first) and
fails every later one with EPERM before it leaves the process (``inject=sendto:error=EPERM:when=2+``).
A line that parsed makes one more send, which strace marks INJECTED; a line auditctl refused makes
none. The verdict is read from the trace, never from auditctl's exit code, and:

* a known-good line must show its injected send first (else this machine cannot check: one line saying
  so, not a pass);
* every send after the first must be INJECTED and the first must be ``AUDIT_GET``, or we stop with an
  error that says the kernel's audit state may have changed.

For a refused line, auditctl's reason is what it prints when given the same words on its command line
(``-R`` sends its errors to syslog only), run with every send failed (``inject=sendto:error=EPERM``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from ..config.guard import GuardImage
from ..errors import OrchestratorError
from .audit_rules import RULES_D
from .render import RenderedFile
from .validate import ValidationError

CANARY = "-w /etc/passwd -p wa -k orchestrator-canary"
AUDIT_GET = re.compile(r"nlmsg_type=(?:AUDIT_GET|0x3e8)\b")
TIMEOUT_S = 30
WORKERS = 4


class RuleLine(NamedTuple):
    path: str  # on the host
    number: int  # 1-based line number in that file
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


class Trace(NamedTuple):
    sends: int
    injected: int
    output: str


def validate_audit(image: GuardImage, files: Mapping[str, RenderedFile], key: str) -> list[str]:
    """Every rule line of ``files`` parsed by auditctl (none loaded); returns the checks passed, raises a
    one-line ``ValidationError`` naming ``key``, the file:line and auditctl's reason on the first refusal."""
    lines = rule_lines(files)
    if not lines:
        return []
    check_duplicates(lines, key)
    check_tools(key)
    with tempfile.TemporaryDirectory(prefix="audit-validate-") as scratch:
        if not parses(CANARY, Path(scratch) / "canary"):
            raise OrchestratorError(f"{key}.audit: cannot validate audit rules here: auditctl made no netlink send "
                                    "for a known-good rule (not root, or in a user namespace?)")
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            verdicts = list(pool.map(lambda item: parses(item[1].text, Path(scratch) / str(item[0])),
                                     enumerate(lines)))
    for line, ok in zip(lines, verdicts):
        if not ok:
            raise ValidationError(f"{_name(image, line, key)}: {line.where}: auditctl refused {line.text!r}: "
                                  f"{refusal_reason(line.text)}")
    return ["audit-parse"]


def rule_lines(files: Mapping[str, RenderedFile]) -> list[RuleLine]:
    """The lines auditctl would act on (comments and blank lines skipped), file by file in name order."""
    found = []
    for path in sorted(files):
        for number, text in enumerate(files[path].text.splitlines(), 1):
            if text.strip() and not text.lstrip().startswith("#"):
                found.append(RuleLine(path, number, text.strip()))
    return found


def check_duplicates(lines: list[RuleLine], key: str) -> None:
    """The kernel refuses a rule it already holds ("Rule exists"), and the load stops there."""
    seen: dict[str, RuleLine] = {}
    for line in lines:
        words = " ".join(line.text.split())
        if words.split()[0] in ("-a", "-A", "-w") and words in seen:
            raise ValidationError(f"{key}.audit: {line.where}: {line.text!r} repeats {seen[words].where}; the "
                                  "kernel refuses a rule it already holds and the load would stop there")
        seen.setdefault(words, line)


def check_tools(key: str) -> None:
    missing = [tool for tool in ("strace", "auditctl") if shutil.which(tool) is None]
    if missing:
        raise OrchestratorError(f"{key}.audit: cannot validate here: {', '.join(missing)} not found "
                                "(install strace and auditd: sh scripts/install-deps --test)")


def parses(text: str, scratch: Path) -> bool:
    """Whether auditctl -R parses the one rule line ``text``; nothing reaches the kernel but ``AUDIT_GET``."""
    scratch.mkdir(parents=True, exist_ok=True)
    rules = scratch / "one.rules"
    rules.write_text(text + "\n")
    os.chmod(rules, 0o600)  # -R refuses a world-writable file, silently
    trace = traced(["auditctl", "-R", str(rules)], scratch / "trace", when="2+")
    return trace.injected > 0


def refusal_reason(text: str) -> str:
    """auditctl's own words for a line it refused: the same words on its command line, every send failed."""
    with tempfile.TemporaryDirectory(prefix="audit-reason-") as scratch:
        trace = traced(["auditctl", *text.split()], Path(scratch) / "trace", when="1+")
    reasons = [line.strip() for line in trace.output.splitlines() if line.strip()]
    return reasons[0] if reasons else "no reason given (auditctl prints it to syslog only)"


def traced(argv: list[str], trace_file: Path, *, when: str) -> Trace:
    """``argv`` under strace with sends from the ``when``-th on failed with EPERM; the sends it tried.

    Raises if a send other than the first was let through, or if the first was not ``AUDIT_GET``: the one
    case in which the kernel could have been told something."""
    strace = ["strace", "-f", "-qq", "-o", str(trace_file), "-e", "trace=sendto",
              "-e", f"inject=sendto:error=EPERM:when={when}"]
    try:
        done = subprocess.run([*strace, *argv], capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OrchestratorError(f"auditctl under strace did not finish within {TIMEOUT_S} s") from None
    sends = [line for line in trace_file.read_text().splitlines() if "sendto(" in line]
    passed = [line for line in sends if "INJECTED" not in line]
    if len(passed) > (1 if when == "2+" else 0) or any(not AUDIT_GET.search(line) for line in passed):
        raise OrchestratorError(f"audit validation: a netlink send other than AUDIT_GET reached the kernel "
                                f"({' '.join(argv)}); check auditctl -l and auditctl -s on this machine")
    return Trace(len(sends), len(sends) - len(passed), done.stdout + done.stderr)


def _name(image: GuardImage, line: RuleLine, key: str) -> str:
    """The setting a refused line came from: a local rule by its index, else the audit section."""
    if line.path == f"{RULES_D}/90-local.rules":
        for i, rule in enumerate(image.audit.local_rules):
            if rule == line.text:
                return f"{key}.audit.local_rules[{i}]"
    return f"{key}.audit"


__all__ = ["parses", "refusal_reason", "rule_lines", "traced", "validate_audit"]
