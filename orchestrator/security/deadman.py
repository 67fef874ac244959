"""Apply a firewall rule set with a dead-man switch: a mistake can never lock the admin out.

Steps on the host, each durable before the next (a ``kill -9`` of our process at any instant is safe):

1. **save**: ``iptables-save``/``ip6tables-save`` or ``nft list ruleset`` into a new job dir under
   ``state_dir`` (``saved.<tool>``, byte-exact), with ``restore.<tool>``: what brings exactly those
   rules back (see ``restore_text``), and ``deadman.sh``, the fixed host-side script;
2. **arm**: ``deadman.sh arm`` starts ``deadman.sh revert`` under ``setsid`` in the background with
   its output on a file: a session and process group of its own, reparented to init, so neither the
   end of our SSH session nor our own death reaches it. After ``window_s`` seconds it restores the
   saved rules unless the job was decided; it writes ``pid`` first and ``outcome`` last.
   Why not ``systemd-run --on-active=N``: Gentoo instances often run OpenRC, and one mechanism that
   works everywhere is one mechanism to test. (On systemd, logind kills a session's processes at
   logout only with ``KillUserProcesses=yes``, which exempts root by default.)
3. **prepare** (optional, ``inv harden``): the caller's own changes while the revert is armed (new daemon
   configs, restarted daemons); what undoes them (``Undo``: the old files, commands to run after) was saved
   in step 1, and every way the old rules come back runs it too (``undo.sh`` after the restore);
4. **apply** the new rules (``new.<tool>`` in the job dir, loaded by ``iptables-restore``/``ip6tables-restore``
   or ``nft -f`` in ONE command that refuses unless the revert is armed and undecided);
5. **confirm** over a NEW connection (``reconnect()``: in ``inv harden`` it knocks first), and only
   over it: ``deadman.sh cancel`` decides "confirmed", ends the revert's process group (by its pid
   file, checking the pid's command line carries the job token) and says whether it is gone.

Exactly one party decides: the revert and the cancel both ``ln -sn <decision> DIR/decision``, which
is atomic and refuses an existing name. If the new connection cannot be made in time we do nothing:
the host restores by itself; we reconnect through the OLD path after the window, wait for the
outcome and compare the rules with the saved ones (``normalised``: counters and comments aside),
and the host's result is "reverted" (old rules proven back) or "failed" (not proven). Only "kept"
is success.

A rerun first settles every job a killed run left (``settle_leftovers``): it waits for a live revert
to end, and finishes the work of one that died undecided (restores the saved rules). The new rules
are never persisted here (the seed's advice: don't save rules until you know they work, so that a
reboot gets you back in); that is for the caller, after "kept".
"""

from __future__ import annotations

import posixpath
import re
import shlex
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources

import paramiko

from ..errors import CommandError, OrchestratorError
from ..faults import crash_point
from ..run.base import Target

SCRIPT = resources.files(__package__).joinpath("deadman.sh").read_text()
BACKENDS = {"iptables": ("iptables", "ip6tables"), "nftables": ("nft",)}
SAVE = {"iptables": ["iptables-save"], "ip6tables": ["ip6tables-save"], "nft": ["nft", "list", "ruleset"]}
LOAD = {"iptables": ["iptables-restore"], "ip6tables": ["ip6tables-restore"], "nft": ["nft", "-f"]}  # as deadman.sh
SETTLE_S = 30  # after the window: how long the host may take to restore and the old path to come back
RETRY_S = 1.0  # between attempts to reach the host (a new connection, or the old path after the window)
KEEP_JOBS = 5  # finished job dirs kept on the host (the newest)
_JOB_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}\Z")
_FAILURES = (OrchestratorError, OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class DeadmanOutcome:
    """``kept``: confirmed over a new connection, revert gone. ``reverted``: the old rules are proven back.
    ``failed``: neither proven. ``planned``: ``--dry``, nothing changed."""

    status: str
    message: str
    saved_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "kept"


@dataclass(frozen=True)
class Undo:
    """What puts a caller's ``prepare`` back: ``files`` maps a host path to its old text (None: it did not
    exist, remove it); ``commands`` run after the files (each argv; a failure is logged, the next runs)."""

    files: Mapping[str, str | None]
    commands: Sequence[Sequence[str]] = ()

    def script(self) -> str:
        """``undo.sh``: ``sh undo.sh DIR`` with the old texts in ``DIR/undo/<n>``. A file is put back in place
        (a copy keeping the new one's mode and owner, which were the old one's, then a rename)."""
        lines = ["# inv harden's undo: deadman.sh runs it after restoring the old rules.", "set -u", 'dir=$1',
                 "umask 077",
                 'put() { cp -p -- "$2" "$2.undo" 2>/dev/null; cat -- "$1" > "$2.undo" && mv -f -- "$2.undo" "$2"; }']
        for n, (path, old) in enumerate(self.files.items()):
            quoted = shlex.quote(path)
            lines.append(f'rm -f -- {quoted}' if old is None else f'put "$dir/undo/{n}" {quoted}')
        for argv in self.commands:
            command = shlex.join(argv)
            lines.append(f"{command} || echo {shlex.quote('undo: ' + command)} exited $?")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Job:
    dir: str
    token: str
    window_s: int
    tools: tuple[str, ...] = ()

    @classmethod
    def new(cls, state_dir: str, window_s: int, tools: list[str]) -> _Job:
        token = uuid.uuid4().hex[:12]
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{token}"
        return cls(posixpath.join(state_dir, name), token, window_s, tuple(tools))

    @property
    def script(self) -> str:
        return posixpath.join(self.dir, "deadman.sh")

    @property
    def saved_path(self) -> str:
        """The first saved file (``saved.iptables`` or ``saved.nft``; ``saved.ip6tables`` beside it)."""
        return f"{self.dir}/saved.{self.tools[0]}"

    def argv(self, mode: str, *args: object) -> list[str]:
        return ["sh", self.script, mode, self.dir, *(str(arg) for arg in args)]


def apply_with_deadman(run, target: Target, *, new_rules: Mapping[str, str], backend: str, window_s: int,
                       reconnect: Callable[[], AbstractContextManager[Target]], state_dir: str,
                       prepare: Callable[[Target], None] | None = None, undo: Undo | None = None) -> DeadmanOutcome:
    """Apply ``new_rules`` on ``target`` so that only a new connection (``reconnect()``) can keep them.

    ``new_rules`` maps a tool to a whole rule file: ``iptables`` and/or ``ip6tables`` (restore format)
    for the iptables backend, ``nft`` (a whole file for ``nft -f``) for nftables. ``prepare(target)`` runs
    once the revert is armed, before the rules are applied; ``undo`` is what the revert also puts back.
    """
    tools = _checked_rules(new_rules, backend, window_s)
    job = _Job.new(state_dir, window_s, tools)
    if run.dry or target.dry:
        return _plan(target, job, tools)
    settle_leftovers(target, state_dir)
    saved = _save(target, job, new_rules, tools)
    if undo is not None:
        _save_undo(target, job, undo)
    crash_point("deadman-saved")
    pid, armed_at = _arm(target, job), time.monotonic()
    crash_point("deadman-armed")
    failure = _prepare(target, prepare) if prepare is not None else None
    if prepare is not None:
        crash_point("deadman-prepared")
    failure = failure or _apply(target, job)
    crash_point("deadman-applied")
    if failure is not None:
        return _abandon(target, job, saved, failure)
    outcome = _confirm(target, job, reconnect, pid, armed_at)
    if outcome is not None:
        crash_point("deadman-confirmed")
        _prune(target, state_dir)
        return outcome
    return _after_revert(target, job, saved, "no new connection could cancel the revert")


def _checked_rules(new_rules: Mapping[str, str], backend: str, window_s: int) -> list[str]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, not {backend!r}")
    unknown = sorted(set(new_rules) - set(BACKENDS[backend]))
    if unknown or not new_rules:
        raise ValueError(f"{backend} rule files are {', '.join(BACKENDS[backend])}; got {sorted(new_rules)}")
    if int(window_s) != window_s or window_s < 1:
        raise ValueError(f"window_s must be a whole number of seconds >= 1, not {window_s!r}")
    return [tool for tool in BACKENDS[backend] if tool in new_rules]


def _plan(target: Target, job: _Job, tools: list[str]) -> DeadmanOutcome:
    """Under ``--dry``: the commands of every step, nothing run (leftovers are not settled either)."""
    say = lambda line: target.echo(f"[dry-run] {target.describe()}: {line}")  # noqa: E731
    for tool in tools:
        say(f"save: {' '.join(SAVE[tool])} > {job.dir}/saved.{tool} (new rules to {job.dir}/new.{tool})")
    say(f"arm: {' '.join(job.argv('arm', job.window_s, job.token))}"
        f" (restores the saved rules after {job.window_s} s unless confirmed)")
    loads = ", ".join(f"{' '.join(LOAD[tool])} < new.{tool}" for tool in tools)
    say(f"apply: {' '.join(job.argv('apply', job.token))} ({loads})")
    say(f"confirm over a new connection: {' '.join(job.argv('cancel', job.token))}")
    return DeadmanOutcome("planned", "dry run: nothing changed", None)


def _save(target: Target, job: _Job, new_rules: Mapping[str, str], tools: list[str]) -> dict[str, str]:
    """The job dir with the script and, per tool, the current rules (``saved.*``) and how to restore them."""
    target.run(["mkdir", "-p", "-m", "0700", "--", posixpath.dirname(job.dir)])
    target.run(["mkdir", "-m", "0700", "--", job.dir])
    target.replace_file(job.script, SCRIPT, keep_previous=False, mode=0o600)
    saved = {}
    for tool in tools:
        saved[tool] = target.run(SAVE[tool], mutates=False).stdout
        target.replace_file(f"{job.dir}/saved.{tool}", saved[tool], keep_previous=False, mode=0o600)
        target.replace_file(f"{job.dir}/restore.{tool}", restore_text(tool, saved[tool], new_rules[tool]),
                            keep_previous=False, mode=0o600)
        target.replace_file(f"{job.dir}/new.{tool}", new_rules[tool], keep_previous=False, mode=0o600)
    return saved


def _save_undo(target: Target, job: _Job, undo: Undo) -> None:
    for n, old in enumerate(undo.files.values()):
        if old is not None:
            target.replace_file(f"{job.dir}/undo/{n}", old, keep_previous=False, mode=0o600)
    target.replace_file(f"{job.dir}/undo.sh", undo.script(), keep_previous=False, mode=0o600)


def _prepare(target: Target, prepare: Callable[[Target], None]) -> str | None:
    """None when the caller's changes went in; else why not (the switch then restores and undoes at once)."""
    try:
        prepare(target)
    except _FAILURES as exc:
        return "prepare: " + " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return None


def restore_text(tool: str, saved: str, new: str) -> str:
    """What loads ``saved`` back over ``new``: for nft the listing after ``flush ruleset`` (one transaction);
    for iptables the saved tables plus an empty table (built-in chains, ACCEPT) for each table ``new``
    fills and ``saved`` lacks, since ``*-restore`` replaces only the tables its input names."""
    if tool == "nft":
        return "flush ruleset\n" + saved
    missing = [name for name in _tables(new) if name not in _tables(saved)]
    return saved + "".join(_empty_table(new, name) for name in missing)


def _tables(text: str) -> list[str]:
    return [line[1:].strip() for line in text.splitlines() if line.startswith("*")]


def _empty_table(new: str, name: str) -> str:
    """``*name`` with the built-in chains ``new`` declares for it, each ACCEPT, and no rules."""
    chains, inside = [], False
    for line in new.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == name
        elif inside and line.startswith(":") and line.split()[1:2] != ["-"]:
            chains.append(f":{line[1:].split()[0]} ACCEPT [0:0]")
    return "\n".join([f"*{name}", *chains, "COMMIT", ""])


def _arm(target: Target, job: _Job) -> int:
    out = target.run(job.argv("arm", job.window_s, job.token), timeout=30).stdout
    return int(_fields(out)["pid"])


def _apply(target: Target, job: _Job) -> str | None:
    """None unless the host refused the new rules (then why): the script loads every ``new.*`` file in one
    command, and only while the revert is armed. No answer (our session cut by the new rules) is not a
    refusal: the confirmation decides, and the cancel confirms only an apply that recorded success."""
    try:
        target.run(job.argv("apply", job.token), timeout=max(job.window_s, 5))
    except CommandError as exc:
        return None if exc.returncode == 124 else f"apply: {exc}"
    except _FAILURES as exc:
        target.echo(f"{target.describe()}: no answer from the apply: {exc}")
    return None


def _confirm(target: Target, job: _Job, reconnect, pid: int, armed_at: float) -> DeadmanOutcome | None:
    """Cancel the revert over a new connection, tried again until the window ends (a knock or a restarting
    sshd may need a moment); None when none could be made, or it came after the revert decided."""
    while True:
        try:
            fields = _cancel_over_new_connection(target, job, reconnect)
            break
        except _FAILURES as exc:
            if time.monotonic() + RETRY_S >= armed_at + job.window_s:
                target.echo(f"{target.describe()}: no new connection within the window: {exc}")
                return None
            time.sleep(RETRY_S)
    if fields.get("decision") != "confirmed":
        return None
    if fields.get("gone") != "yes":
        return DeadmanOutcome("failed", f"confirmed over a new connection, but revert pid {pid} did not end",
                              job.saved_path)
    return DeadmanOutcome("kept", f"confirmed over a new connection; revert (pid {pid}) ended", job.saved_path)


def _cancel_over_new_connection(target: Target, job: _Job, reconnect) -> dict[str, str]:
    with reconnect() as fresh:
        if fresh is target:
            raise ValueError("reconnect() must open a new connection, not return the old target")
        return _fields(fresh.run(job.argv("cancel", job.token), timeout=30).stdout)


def _abandon(target: Target, job: _Job, saved: dict[str, str], failure: str) -> DeadmanOutcome:
    """The apply failed: restore now over the old path; if that path is gone, the host reverts by itself."""
    try:
        target.run(job.argv("abandon", job.token), timeout=30)
    except _FAILURES:
        return _after_revert(target, job, saved, failure)
    return _verified(target, job, saved, failure)


def _after_revert(target: Target, job: _Job, saved: dict[str, str], why: str) -> DeadmanOutcome:
    """Reach the host through the OLD path again once the window is over, let the revert finish, compare."""
    _close(target)
    deadline = time.monotonic() + job.window_s + SETTLE_S
    while True:
        try:
            outcome = _settle(target, job, max(1, round(deadline - time.monotonic())))
            break
        except _FAILURES as exc:
            _close(target)
            if time.monotonic() > deadline:
                return DeadmanOutcome("failed", f"{why}; the old path did not come back: {exc}", job.saved_path)
            time.sleep(RETRY_S)
    if outcome == "pending":
        return DeadmanOutcome("failed", f"{why}; the revert had not ended {SETTLE_S} s after the window",
                              job.saved_path)
    return _verified(target, job, saved, why)


def _verified(target: Target, job: _Job, saved: dict[str, str], why: str) -> DeadmanOutcome:
    """"reverted" only when every family's current rules equal the saved ones (normalised)."""
    outcome = (target.read_file(f"{job.dir}/outcome") or "").strip()
    differ = [tool for tool, text in saved.items()
              if normalised(tool, target.run(SAVE[tool], mutates=False).stdout) != normalised(tool, text)]
    if outcome.startswith("reverted") and not differ:
        return DeadmanOutcome("reverted", f"{why}; the host restored the old rules ({outcome})", job.saved_path)
    state = f"rules differ from the saved ones: {', '.join(differ)}" if differ else f"outcome {outcome!r}"
    return DeadmanOutcome("failed", f"{why}; {state}", job.saved_path)


def settle_leftovers(target: Target, state_dir: str) -> list[str]:
    """Every job a killed run left without an outcome: wait for its revert, or finish what it would have
    done. Returns the outcome lines. A revert still pending after its window and ``SETTLE_S`` is an error."""
    outcomes = []
    for name in _job_names(target, state_dir):
        path = posixpath.join(state_dir, name)
        if target.read_file(f"{path}/outcome") is not None or target.read_file(f"{path}/deadman.sh") is None:
            continue
        job = _Job(path, name.rsplit("-", 1)[1], 0)
        outcome = _settle(target, job, _leftover_window(target, job) + SETTLE_S)
        if outcome == "pending":
            raise OrchestratorError(f"{target.describe()}: an earlier revert ({path}) has not ended")
        outcomes.append(outcome)
    return outcomes


def _leftover_window(target: Target, job: _Job) -> int:
    """The window the leftover's revert was armed with (the number after the job dir on its command line)."""
    pid = (target.read_file(f"{job.dir}/pid") or "").strip()
    cmdline = target.read_file(f"/proc/{pid}/cmdline") if pid.isdigit() else None
    words = (cmdline or "").split("\0")
    return int(words[4]) if len(words) > 4 and words[4].isdigit() else 0


def _settle(target: Target, job: _Job, seconds: int) -> str:
    out = target.run(job.argv("settle", job.token, seconds), timeout=seconds + 30).stdout
    return _fields(out).get("outcome", "").split(" ")[0] or "unknown"


def _job_names(target: Target, state_dir: str) -> list[str]:
    listing = target.run(["ls", "-1", "--", state_dir], check=False, mutates=False)
    return sorted(name for name in listing.stdout.split() if _JOB_NAME.match(name)) if listing.ok else []


def _prune(target: Target, state_dir: str) -> None:
    """Keep the newest ``KEEP_JOBS`` finished job dirs; an unfinished one is never removed."""
    finished = [name for name in _job_names(target, state_dir)
                if target.read_file(posixpath.join(state_dir, name, "outcome")) is not None]
    for name in finished[:-KEEP_JOBS]:
        target.run(["rm", "-rf", "--", posixpath.join(state_dir, name)])


# Chains whose rules daemons add and take away by themselves: knockd's per-knocker ACCEPTs (its stop_command
# may run while a revert is compared), fwknopd's, and fail2ban's bans (``f2b-<jail>``).
DYNAMIC_CHAIN = re.compile(r"-A (?:guard-knock|FWKNOP_INPUT|f2b-\S+) ")


def normalised(tool: str, text: str) -> str:
    """A save listing without what changes by itself: comments, packet/byte counters, the rules and set
    elements daemons add and remove on their own (``DYNAMIC_CHAIN``, nft ``elements``), and for iptables
    tables that hold nothing (built-in chains with ACCEPT only: the same as no table)."""
    if tool == "nft":
        text = re.sub(r"counter packets \d+ bytes \d+", "counter packets 0 bytes 0", text)
        text = re.sub(r"\n\s*elements = \{[^}]*\}", "", text)
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
             if not line.startswith("#") and not DYNAMIC_CHAIN.match(line)]
    return "\n".join(line for block in _table_blocks(lines) if not _empty_block(block) for line in block)


def _table_blocks(lines: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith("*") or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def _empty_block(block: list[str]) -> bool:
    body = [line for line in block[1:] if line != "COMMIT"]
    return all(line.startswith(":") and line.split()[1:2] == ["ACCEPT"] for line in body)


def _fields(out: str) -> dict[str, str]:
    """``k=v`` words of the script's last line (``outcome=`` takes the rest of the line)."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    if line.startswith("outcome="):
        return {"outcome": line[len("outcome="):]}
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def _close(target: Target) -> None:
    close = getattr(target, "close", None)
    if close is not None:
        try:
            close()
        except _FAILURES:
            pass


__all__ = ["DeadmanOutcome", "Undo", "apply_with_deadman", "normalised", "restore_text", "settle_leftovers"]
