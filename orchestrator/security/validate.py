"""Validation of one image's rendered files before anything leaves the build box.

Two layers:

* our own checks (``check_rendered``): what the daemons let through, such as a
  sequence touching the SSH port, a section header that should not be there, or a jail
  with no log or an action that does not exist;
* the daemons themselves, on scratch copies: knockd parses its file (started in a
  throwaway network namespace until it says it listens, or exits with its reason),
  ``fwknopd --exit-parse-config`` (its "Ignoring unknown" warnings count as a refusal),
  ``fail2ban-client -c COPY -t`` on a copy of /etc/fail2ban with our jail.local, and the
  firewall applied for real in a throwaway namespace, knockd's own start and stop
  commands run there against it.

Never the host's own firewall or daemons: every command that touches netfilter runs
under ``ip netns exec geo-<random>``, and the namespace is deleted on every path
(created and registered for deletion with signals held). Daemon output is scrubbed of
every secret before it can reach an error line.
"""

from __future__ import annotations

import base64
import os
import re
import secrets as csprng
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..config.guard import GuardImage, Knock
from ..errors import ConfigError, OrchestratorError
from ..signals import held_signals
from . import render as r
from .secrets import HMAC_KEY_BYTES, SPA_KEY_BYTES, ImageSecrets

COMMAND_TIMEOUT_S = 30
KNOCKD_READY_S = 10  # knockd says "listening on" within milliseconds; this only bounds a hang
FAIL2BAN_ETC = Path("/etc/fail2ban")
PROBE_IP = {4: "192.0.2.1", 6: "2001:db8::1"}  # documentation addresses stand in for %IP%
SECTIONS = {r.KNOCKD_CONF: ["options", "openSSH", "closeSSH"]}


class ValidationError(ConfigError):
    """A rendered file a daemon (or our own check) refused: one line, no secret in it; exit 2 like a bad
    setting, since the settings made it."""


def validate_image(image: GuardImage, secrets: ImageSecrets, files: Mapping[str, r.RenderedFile], *,
                   key: str = "guard image", daemons: bool = True) -> list[str]:
    """Every check on one image's files; returns the names of the checks passed, raises on the first refusal."""
    passed = check_rendered(image, secrets, files, key=key)
    if daemons:
        scrub = Scrubber(secrets)
        with tempfile.TemporaryDirectory(prefix="guard-validate-") as scratch:
            passed += daemon_checks(image, files, Path(scratch), scrub, key)
    return passed


# --- our own checks -----------------------------------------------------------------------------------------


def check_rendered(image: GuardImage, secrets: ImageSecrets, files: Mapping[str, r.RenderedFile], *,
                   key: str) -> list[str]:
    passed = ["structure"]
    check_sections(files, key)
    if image.guard == "knockd":
        check_sequences(image, secrets, key)
        passed.append("sequences")
    if image.guard == "fwknop":
        check_keys(secrets, key)
        passed.append("keys")
    check_jail(image, files[r.JAIL_LOCAL].text, key)
    passed.append("jail")
    return passed


def check_sections(files: Mapping[str, r.RenderedFile], key: str) -> None:
    """Only the section headers we write: a value that smuggled in ``[...]`` shows up here."""
    expected = {**SECTIONS, r.JAIL_LOCAL: ["DEFAULT", "sshd", "recidive"]}
    for path, want in expected.items():
        if path not in files:
            continue
        found = re.findall(r"^\s*\[([^\]\n]*)\]", files[path].text, re.M)
        extra = [name for name in found if name not in want]
        if extra or len(found) != len(set(found)):
            raise ValidationError(f"{key}: {path} has a section we did not write ({extra[:1] or 'a repeat'}); "
                                  "a value injected a section")


def check_sequences(image: GuardImage, secrets: ImageSecrets, key: str) -> None:
    """Knock rules again on what will be rendered (config-given or stored sequences alike)."""
    forbidden = image.forbidden_ports
    named = [("knock.open", secrets.open), ("knock.close", secrets.close)]
    named += [(f"knock.one_time[{i}]", seq) for i, seq in enumerate(secrets.one_time)]
    for name, seq in named:
        _check_sequence(seq, forbidden, f"{key}.{name}")
    if secrets.open == secrets.close:
        raise ConfigError(f"{key}.knock.close: the same sequence as knock.open; the close sequence must differ")
    if image.knock.one_time and len(secrets.one_time) < 2:
        raise ConfigError(f"{key}.knock.one_time: fewer than 2 one-time sequences left (knockd 0.8 aborts after "
                          "its last one)")


def _check_sequence(seq: list[Knock], forbidden: set[int], key: str) -> None:
    ports = [k.port for k in seq]
    if len(seq) < 2 or len(set(ports)) != len(ports):
        raise ConfigError(f"{key}: a sequence needs at least 2 distinct ports")
    for i, knock in enumerate(seq):
        if not 0 < knock.port < 65536 or knock.proto not in ("tcp", "udp"):
            raise ConfigError(f"{key}[{i}]: not a port 1-65535 with tcp or udp")
        if knock.port in forbidden:
            raise ConfigError(f"{key}[{i}]: the SSH port or a served port; a knock must not touch it")


def check_keys(secrets: ImageSecrets, key: str) -> None:
    for name, size in (("spa_key", SPA_KEY_BYTES), ("hmac_key", HMAC_KEY_BYTES)):
        try:
            ok = len(base64.b64decode(getattr(secrets, name).reveal(), validate=True)) == size
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{key}: the stored fwknop {name} is not {size} bytes of base64; delete it from "
                              "the secrets file to have a new one generated")


def check_jail(image: GuardImage, text: str, key: str) -> None:
    """A jail that reads no log, or bans with an action this fail2ban does not have, is refused."""
    f2b = image.fail2ban
    if f2b.backend != "systemd" and f"logpath  = {f2b.logpath}\n" not in text:
        raise ValidationError(f"{key}.fail2ban.logpath: the sshd jail reads no log file")
    for action in re.findall(r"^banaction(?:_allports)?\s*=\s*([A-Za-z0-9_.-]+)$", text, re.M):
        if not (FAIL2BAN_ETC / "action.d" / f"{action}.conf").exists():
            raise ValidationError(f"{key}.fail2ban: banaction {action} has no action.d/{action}.conf")


# --- the daemons' own checks --------------------------------------------------------------------------------


class Scrubber:
    """Replaces every secret (keys, sequence texts, knock ports) in daemon output before it reaches an error."""

    def __init__(self, secrets: ImageSecrets):
        self.words = [secrets.spa_key.reveal(), secrets.hmac_key.reveal()]
        seqs = [secrets.open, secrets.close, *secrets.one_time]
        self.words += [r.knock_text(seq) for seq in seqs]
        self.ports = sorted({str(k.port) for seq in seqs for k in seq}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for word in self.words:
            text = text.replace(word, "<redacted>")
        if self.ports:
            text = re.sub(r"(?<![0-9])(?:" + "|".join(self.ports) + r")(?![0-9])", "<port>", text)
        return text


def daemon_checks(image: GuardImage, files: Mapping[str, r.RenderedFile], scratch: Path, scrub: Scrubber,
                  key: str) -> list[str]:
    passed = []
    with network_namespace() as ns:
        passed += check_firewall(image, files, ns, scrub, key)
        if image.guard == "knockd":
            check_knockd(files, scratch, ns, scrub, key)
            passed.append("knockd")
    if image.guard == "fwknop":
        check_fwknopd(files, scratch, scrub, key)
        passed.append("fwknopd")
    check_fail2ban(files, scratch, scrub, key)
    passed.append("fail2ban")
    return passed


@contextmanager
def network_namespace() -> Iterator[str]:
    """A throwaway ``geo-<random>`` network namespace with lo up; deleted on every path out."""
    name = f"geo-{csprng.token_hex(4)}"
    with ExitStack() as stack:
        with held_signals():  # created and its deletion registered, with no signal in between
            _run(["ip", "netns", "add", name], "ip netns add")
            stack.callback(_delete_namespace, name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"], "ip link set lo up")
        yield name


def _delete_namespace(name: str) -> None:
    with held_signals():
        subprocess.run(["ip", "netns", "delete", name], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=COMMAND_TIMEOUT_S)


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def check_firewall(image: GuardImage, files: Mapping[str, r.RenderedFile], ns: str, scrub: Scrubber,
                   key: str) -> list[str]:
    """Apply the rule set in the namespace, then prove knockd's start and stop commands work against it."""
    if image.firewall.backend == "nftables":
        text = files[r.NFTABLES_CONF].text
        _run(in_ns(ns, ["nft", "-c", "-f", "-"]), "nft -c", stdin=text, scrub=scrub, key=key, what=r.NFTABLES_CONF)
        for _ in range(2):  # twice: a reload over the loaded table must work too (the delete-table idiom)
            _run(in_ns(ns, ["nft", "-f", "-"]), "nft -f", stdin=text, scrub=scrub, key=key, what=r.NFTABLES_CONF)
        listed = _run(in_ns(ns, ["nft", "list", "chain", "inet", r.NFT_TABLE, "input"]), "nft list")
        if "policy drop" not in listed:
            raise ValidationError(f"{key}: {r.NFTABLES_CONF} applied but its input chain does not drop by default")
    else:
        for tool, path in (("iptables", r.RULES_V4), ("ip6tables", r.RULES_V6)):
            _run(in_ns(ns, [f"{tool}-restore"]), f"{tool}-restore", stdin=files[path].text, scrub=scrub, key=key,
                 what=path)
            if "-P INPUT DROP" not in _run(in_ns(ns, [tool, "-S", "INPUT"]), f"{tool} -S"):
                raise ValidationError(f"{key}: {path} applied but INPUT does not drop by default")
    passed = ["firewall"]
    if image.guard == "knockd":
        check_knock_commands(image, files[r.KNOCKD_CONF].text, ns, scrub, key)
        passed.append("knock-commands")
    return passed


def check_knock_commands(image: GuardImage, text: str, ns: str, scrub: Scrubber, key: str) -> None:
    """Run the rendered knockd.conf's start then stop command (as knockd would, %IP% filled in, but as an
    argv, not through a shell) and see the rule come and go."""
    commands = knockd_commands(text)
    for version in (4, 6) if image.firewall.ipv6 else (4,):
        ip = PROBE_IP[version]
        for step in ("start", "stop"):
            name = f"{step}_command" + ("_6" if version == 6 else "")
            if name not in commands:
                raise ValidationError(f"{key}: {r.KNOCKD_CONF} has no {name} in [openSSH]")
            argv = shlex.split(commands[name].replace("%IP%", ip))
            _run(in_ns(ns, argv), f"knockd's {name}", scrub=scrub, key=key, what=r.KNOCKD_CONF)
            present = ip in _list_rules(image, ns, version)
            if present != (step == "start"):
                raise ValidationError(f"{key}: knockd's {name} ran but the rule for {ip} is "
                                      f"{'missing' if step == 'start' else 'still there'}")


def knockd_commands(text: str) -> dict[str, str]:
    """The [openSSH] door's commands, by directive name (lower case; ``command`` is ``start_command``)."""
    door = text.split("[openSSH]", 1)[-1].split("\n[", 1)[0]
    found = re.findall(r"^\s*((?:start_|stop_)?command(?:_6)?)\s*=\s*(.*?)\s*$", door, re.M | re.I)
    return {(name.lower() if name.lower().startswith("st") else "start_" + name.lower()): value
            for name, value in found}


def _list_rules(image: GuardImage, ns: str, version: int) -> str:
    if image.firewall.backend == "nftables":
        return _run(in_ns(ns, ["nft", "list", "set", "inet", r.NFT_TABLE, f"knock{version}"]), "nft list set")
    tool = "iptables" if version == 4 else "ip6tables"
    return _run(in_ns(ns, [tool, "-S", r.KNOCK_CHAIN]), f"{tool} -S")


def check_knockd(files: Mapping[str, r.RenderedFile], scratch: Path, ns: str, scrub: Scrubber, key: str) -> None:
    """knockd has no test mode: start it on lo in the namespace; "listening on" is a pass, an exit a refusal."""
    conf = scratch / "knockd.conf"
    text = files[r.KNOCKD_CONF].text
    for path, rendered in files.items():
        if path.startswith("/etc/knockd/") or "one_time" in path:
            copy = scratch / Path(path).name
            _write(copy, rendered.text)
            text = text.replace(f"one_time_sequences = {path}\n", f"one_time_sequences = {copy}\n")
    _write(conf, text)
    argv = in_ns(ns, ["knockd", "-i", "lo", "-c", str(conf), "-D", "-v"])
    with held_signals():
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        output = _until_listening(proc)
    finally:
        _stop(proc)
    if output is not None:
        reason = _reason(scrub(output), text, scrub) or "it exited without a reason"
        raise ValidationError(f"{key}: knockd refused {r.KNOCKD_CONF}: {reason}")


def _until_listening(proc: subprocess.Popen) -> str | None:
    """None once knockd prints "listening on"; its output if it exits first."""
    lines = []
    timer = _Deadline(proc, KNOCKD_READY_S)
    try:
        for line in proc.stdout:
            if "listening on" in line:
                return None
            lines.append(line)
    finally:
        timer.cancel()
    proc.wait()
    return "".join(lines) + (" (no answer within the time limit)" if timer.fired else "")


class _Deadline:
    """Kills ``proc``'s group after ``seconds`` unless cancelled: bounds a read that would otherwise hang."""

    def __init__(self, proc: subprocess.Popen, seconds: float):
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire, (proc,))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, proc: subprocess.Popen) -> None:
        self.fired = True
        _kill_group(proc, 9)

    def cancel(self) -> None:
        self._timer.cancel()


def _stop(proc: subprocess.Popen) -> None:
    with held_signals():
        _kill_group(proc, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(proc, 9)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def check_fwknopd(files: Mapping[str, r.RenderedFile], scratch: Path, scrub: Scrubber, key: str) -> None:
    """``--exit-parse-config`` catches bad keys; an unknown setting is only a warning there, so we refuse it."""
    conf, access = scratch / "fwknopd.conf", scratch / "access.conf"
    _write(conf, files[r.FWKNOPD_CONF].text)
    _write(access, files[r.ACCESS_CONF].text)
    output = _run(["fwknopd", "-c", str(conf), "-a", str(access), "--exit-parse-config"], "fwknopd",
                  scrub=scrub, key=key, what=f"{r.FWKNOPD_CONF} or {r.ACCESS_CONF}")
    bad = [line for line in output.splitlines() if "Ignoring unknown" in line or "[*]" in line]
    if bad:
        raise ValidationError(f"{key}: fwknopd refused {r.FWKNOPD_CONF} or {r.ACCESS_CONF}: {scrub(bad[0].strip())}")


def check_fail2ban(files: Mapping[str, r.RenderedFile], scratch: Path, scrub: Scrubber, key: str) -> None:
    """``fail2ban-client -t`` on a copy of /etc/fail2ban with our jail.local (the build box's jail.d left out,
    log paths pointed at empty scratch files: the host's logs are not here)."""
    etc = scratch / "fail2ban"
    shutil.copytree(FAIL2BAN_ETC, etc, symlinks=True)
    for extra in (etc / "jail.d").glob("*"):
        extra.unlink()
    text = files[r.JAIL_LOCAL].text
    for i, logpath in enumerate(dict.fromkeys(re.findall(r"^logpath\s*=\s*(\S+)$", text, re.M))):
        log = scratch / f"log{i}"
        log.touch()
        text = re.sub(rf"^(logpath\s*=\s*){re.escape(logpath)}$", rf"\g<1>{log}", text, flags=re.M)
    _write(etc / "jail.local", text)
    output = _run(["fail2ban-client", "-c", str(etc), "-t"], "fail2ban-client -t", scrub=scrub, key=key,
                  what=r.JAIL_LOCAL)
    if "configuration test is successful" not in output:
        raise ValidationError(f"{key}: fail2ban-client refused {r.JAIL_LOCAL}: {_reason(scrub(output), None, scrub)}")


# --- helpers ------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _run(argv: list[str], name: str, *, stdin: str | None = None, scrub=None, key: str = "guard",
         what: str = "") -> str:
    """Run ``argv`` (never through a shell); its stdout+stderr, or one scrubbed line naming what it refused."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise OrchestratorError(f"{key}: cannot validate: {exc.filename} not found "
                                "(scripts/install-deps --test installs the daemons)") from None
    except subprocess.TimeoutExpired:
        raise ValidationError(f"{key}: {name} did not finish within {COMMAND_TIMEOUT_S} s") from None
    output = done.stdout + done.stderr
    if done.returncode:
        shown = _reason((scrub or (lambda t: t))(output), stdin, scrub) or f"exit {done.returncode}"
        raise ValidationError(f"{key}: {name} refused{' ' + what if what else ''}: {shown}")
    return output


def _reason(output: str, text: str | None, scrub) -> str:
    """The line that says why (an error line, else the last ones), with the file's line it names, if any."""
    lines = [re.sub(r"^[0-9-]+ [0-9:,]+ \S+\s+\[[0-9]+\]:\s+", "", line.strip())  # fail2ban's log prefix
             for line in output.strip().splitlines() if line.strip()]
    said = [line for line in lines if re.search(r"error|line[: ]|invalid|unknown|refus", line, re.I)]
    reason = " | ".join(said[:2] or lines[-2:])
    at = re.search(r"line:? ([0-9]+)", reason)
    if at and text is not None and 0 < int(at.group(1)) <= len(text.splitlines()):
        quoted = text.splitlines()[int(at.group(1)) - 1].strip()
        reason += f" (line {at.group(1)}: {(scrub or (lambda t: t))(quoted)!r})"
    return reason


__all__ = ["Scrubber", "ValidationError", "check_rendered", "network_namespace", "validate_image"]
