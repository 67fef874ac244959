"""``inv harden``: each host gets its image's guard, and keeps it only once a new connection got in through it.

Per image, once, on this box: the secrets (a one-time list refilled), the files rendered and validated
(``validate``: the daemons themselves, in throwaway namespaces). Then per host, in parallel:

1. **facts**, one read-only round trip: the init system, the tools the image needs, its interface and
   fail2ban's log file. A missing piece is one line and nothing changes on that host.
2. **plan**: the daemons' files (knockd or fwknopd, fail2ban) against the host's. Under ``--dry`` the
   diffs (a file holding a secret says only that it would change) and the dead-man switch's steps.
3. **under the dead-man switch** (``deadman.apply_with_deadman``): with the revert armed, knockd's (or
   fwknopd's) files go up (the previous kept as ``.<name>.previous``), the daemon restarts and must be
   seen running, the login services' PAM stacks get ``pam_loginuid`` where missing (``loginuid``), then
   the rules are loaded. Only a NEW connection through the knock (or SPA packet) keeps them, which also
   proves sshd still lets us in with its new PAM stack. If none can be made, the host puts the old rules,
   the daemon's old files and the old PAM files back by itself (``Undo``), restarts the daemon, and the
   run fails for that host.
4. **kept**: only now the rules are saved where the firewall service loads them at boot, and the services
   are enabled at boot (the seed's advice: don't save the rules until you know they work, so that a
   reboot gets you back in). The one-time list the host has is recorded. Then fail2ban: its files go up
   and it restarts (always: ``iptables-restore`` replaced the filter table, its chains with it), must
   answer, and its status per jail is read back. fail2ban cannot lock the admin out, so it is not under
   the switch; its failure still fails the host. Last, the login uid is read on a new connection: a
   host where ``/proc/self/loginuid`` is still unset (sshd with ``UsePAM no``) is reported.
5. **audit** (``audit.enabled``): the image's ``/etc/audit/rules.d`` files (parsed by auditctl on this box
   first), our files the config no longer makes removed, ``augenrules --load``, and ``auditctl -l`` must
   hold exactly the rules the files make ("No rules" fails: augenrules stops at the first bad line). A
   host whose rules are locked (``-e 2``) gets the files and is ``pending``: they load at its next boot.
6. **syslog** (``syslog.enabled``): the INSERT-only user's password file (0600), then the rsyslog snippet
   (its disk-assisted queue's directory made first), ``rsyslogd -N1`` on the host's whole config, rsyslog
   restarted; proven when a ``logger`` line with a fresh token is a row of ``SystemEvents`` on the log
   server (``logs``) in time (``logs.delivery``).

Every run goes through the switch, even when nothing changed: the rules are loaded again and the way in is
proven by a new connection. That also clears knockd's open windows (established sessions stay).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import HostConfig
from ..config.guard import GuardImage
from ..errors import EXIT_NOT_READY, ConfigError, OrchestratorError
from ..faults import crash_point
from ..fleet.hosts import connect, select_hosts
from ..fleet.runner import run_on_hosts
from ..job import JobRun
from ..logs import SNIPPET, syslog_files
from ..logs.delivery import prove_delivery
from ..run import Target
from . import access, render as r
from .audit_rules import RULES_D, audit_warnings, expected_rule_count, install_and_load, render_audit
from .audit_validate import validate_audit
from .deadman import Undo, apply_with_deadman
from .loginuid import LoginuidResult, check_and_fix_loginuid, loginuid_over_ssh
from .secrets import load_or_create, mark_one_time_deployed
from .validate import validate_image

FAIL2BAN_FILES = (r.JAIL_LOCAL, r.DIGEST_CRON)
OK_STATUSES = ("hardened", "unchanged", "planned")
FAIL2BAN_UP_S = 30  # fail2ban-client answers "pong" once the server and its jails are up
# A confirming connection tries again (a fresh knock each time) until the window ends; waiting briefly for
# each banner leaves room for several tries: with iptables, the stop_command of a knock made shortly
# before can take out the very rule a new knock just added (both read "-s IP ... -j ACCEPT").
RECONNECT_BANNER_S = 3

FACTS = r"""
say() { printf '%s=%s\n' "$1" "$2"; }
iface=$1 logpath=$2; shift 2
if [ -d /run/systemd/system ]; then say manager systemd
elif command -v rc-service >/dev/null 2>&1; then say manager openrc
else say manager none; fi
for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || say missing "$tool"; done
[ -e "/sys/class/net/$iface" ] || say missing_interface "$iface"
[ "$logpath" = - ] || ls -d $logpath >/dev/null 2>&1 || say missing_log "$logpath"
"""


class AuditPending(OrchestratorError):
    """Every host kept its guard, but some hold audit rules that only their next boot loads (``-e 2``)."""

    exit_code = EXIT_NOT_READY


@dataclass(frozen=True)
class ImagePlan:
    """One image's rendered, validated files: the daemons' (uploaded under the switch) and the rules."""

    image: GuardImage
    key: str
    files: Mapping[str, r.RenderedFile]
    syslog_files: Mapping[str, r.RenderedFile] = field(default_factory=dict)  # password file, then the snippet

    @property
    def guard_files(self) -> dict[str, r.RenderedFile]:
        """knockd's or fwknopd's files: what the switch undoes."""
        return {path: f for path, f in self.files.items()
                if path not in r.FIREWALL_TOOLS and path not in FAIL2BAN_FILES and not _is_audit(path)}

    @property
    def audit_files(self) -> dict[str, r.RenderedFile]:
        return {path: f for path, f in self.files.items() if _is_audit(path)}

    @property
    def fail2ban_files(self) -> dict[str, r.RenderedFile]:
        return {path: f for path, f in self.files.items() if path in FAIL2BAN_FILES}

    @property
    def rule_files(self) -> dict[str, r.RenderedFile]:
        return {path: f for path, f in self.files.items() if path in r.FIREWALL_TOOLS}

    @property
    def new_rules(self) -> dict[str, str]:
        return {r.FIREWALL_TOOLS[path]: f.text for path, f in self.rule_files.items()}

    @property
    def guard_daemon(self) -> str | None:
        return {"knockd": "knockd", "fwknop": "fwknopd", "none": None}[self.image.guard]


@dataclass
class Outcome:
    host: str
    image: str
    status: str  # hardened | unchanged | pending | reverted | failed | planned
    message: str = ""
    changed: list[str] = field(default_factory=list)
    jails: dict[str, dict[str, int]] = field(default_factory=dict)
    loginuid: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], {})}


@dataclass(frozen=True)
class Services:
    """The host's init system's commands for the image's daemons and firewall services."""

    manager: str
    image: GuardImage

    def name(self, daemon: str) -> str:
        return self.image.services.name(self.manager, daemon)

    def restart(self, daemon: str) -> list[str]:
        return self._argv(daemon, "restart")

    def stop(self, daemon: str) -> list[str]:
        return self._argv(daemon, "stop")

    def status(self, daemon: str) -> list[str]:
        if daemon == "fail2ban":
            return ["fail2ban-client", "ping"]
        if self.manager == "systemd":
            return ["systemctl", "is-active", "--quiet", self.name(daemon)]
        return self._argv(daemon, "status")

    def enable(self, daemon: str) -> list[str]:
        if self.manager == "systemd":
            return ["systemctl", "enable", "--quiet", self.name(daemon)]
        return ["rc-update", "add", self.name(daemon), "default"]

    def _argv(self, daemon: str, action: str) -> list[str]:
        if self.manager == "systemd":
            return ["systemctl", action, self.name(daemon)]
        return ["rc-service", self.name(daemon), action]


# --- the job -------------------------------------------------------------------------------


def harden(run: JobRun, words: list[str], image_name: str | None = None) -> dict[str, Outcome]:
    """Harden the named hosts (or every host of ``--image``) at once; exit 0 only when every host is proven."""
    hosts, image_of_host = _chosen(run, words, image_name)
    images = {image.name: image for image in image_of_host.values()}
    plans = {name: plan_image(run, image) for name, image in images.items()}
    outcomes: dict[str, Outcome] = {}

    def job(host: HostConfig, target: Target) -> str:
        plan = plans[image_of_host[host.name].name]
        outcomes[host.name] = harden_host(run, target, host, plan)
        return outcomes[host.name].status

    results = run_on_hosts(run, hosts, job, what="harden")
    summarize(run, outcomes, results.failed)
    return outcomes


def _chosen(run: JobRun, words: list[str], image_name: str | None) -> tuple[list[HostConfig], dict[str, GuardImage]]:
    """The hosts, and each host's image by host name; every choice checked before anything runs."""
    guard, fleet = run.section("guard"), run.section("fleet")
    if image_name and words:
        raise ConfigError("--image and --hosts: choose hosts one way, not both")
    if image_name:
        image = guard.image(image_name)
        if not image.hosts:
            raise ConfigError(f"guard.images[{guard.index(image.name)}].hosts: image {image.name} has no hosts")
        hosts = select_hosts(fleet, image.hosts, option=f"guard.images[{guard.index(image.name)}].hosts")
    elif words:
        hosts = select_hosts(fleet, words, option="--hosts")
    else:
        raise ConfigError("--hosts or --image: name the hosts to harden (names, @group, @all) or an image")
    images = {}
    for host in hosts:
        if host.root != "/":
            raise ConfigError(f"fleet.hosts[{fleet.names.index(host.name)}].root: harden changes the running "
                              f"system of {host.name}; its root must be /, not {host.root}")
        images[host.name] = access.image_of(run, host)
        if images[host.name] is None:
            raise ConfigError(f"guard.images: host {host.name!r} is in no image's hosts; add it to one")
    return hosts, images


def plan_image(run: JobRun, image: GuardImage) -> ImagePlan:
    """The image's secrets (saved, unless ``--dry``), files rendered and validated: once for all its hosts."""
    key = f"guard.images[{run.section('guard').index(image.name)}]"
    secrets = load_or_create(run, image)
    for warning in secrets.warnings:
        run.report.warnings.append(warning)
    files = r.render_image(image, secrets)
    passed = validate_image(image, secrets, files, key=key)
    audit_files = render_audit(image)
    if audit_files:
        for warning in audit_warnings(image):
            run.progress.warn(f"image {image.name}: {warning}")
        validate_audit(image, audit_files, key)
        passed.append(f"audit ({expected_rule_count(audit_files)} rules parsed by auditctl)")
    syslog = syslog_files(run, image, key)
    if syslog:
        passed.append("syslog (rsyslogd -N1)")
    run.echo(f"image {image.name}: {len(files) + len(audit_files) + len(syslog)} files validated "
             f"({', '.join(passed)})")
    return ImagePlan(image, key, {**files, **audit_files}, syslog)


# --- one host ------------------------------------------------------------------------------


def harden_host(run: JobRun, target: Target, host: HostConfig, plan: ImagePlan) -> Outcome:
    image, daemon = plan.image, plan.guard_daemon
    services = Services(_manager(target, host, plan), image)  # the first command: connected (and knocked) now
    plan = _with_current_one_time_list(run, plan)
    changed = _changed_files(target, plan.guard_files)
    if run.dry:
        return _dry_run(run, target, host, plan, changed)
    running = daemon is not None and _is_running(target, services, daemon)
    pam_files = _pam_texts(target, image)
    undo = Undo({**changed, **pam_files},
                [services.restart(daemon) if running else services.stop(daemon)] if daemon else [])
    login: list[LoginuidResult] = []

    def prepare(t: Target) -> None:
        _prepare(t, plan, changed, services, running)
        if image.loginuid.enabled:
            login.append(check_and_fix_loginuid(t, image.loginuid.services))

    outcome = apply_with_deadman(
        run, target, new_rules=plan.new_rules, backend=image.firewall.backend,
        window_s=image.firewall.confirm_window, state_dir=run.section("guard").host_state_dir,
        reconnect=lambda: _through_the_guard(run, host), prepare=prepare, undo=undo)
    if not outcome.ok:
        status = "reverted" if outcome.status == "reverted" else "failed"
        return Outcome(host.name, image.name, status, outcome.message, sorted(changed))
    crash_point("harden-kept")
    touched = sorted(changed) + (login[0].changed if login else []) + _save_for_boot(target, plan, services)
    if image.guard == "knockd" and image.knock.one_time:
        mark_one_time_deployed(run, image)
    try:
        touched += _restart_fail2ban(target, plan, services)
        jails = fail2ban_status(target)
    except OrchestratorError as exc:
        return Outcome(host.name, image.name, "failed", f"the firewall is kept and saved, but fail2ban: {exc}",
                       touched)
    result = Outcome(host.name, image.name, "hardened" if touched else "unchanged",
                     f"kept and saved for boot ({outcome.message}); fail2ban jails: {', '.join(jails) or 'none'}",
                     touched, jails)
    if login:
        _loginuid_report(run, host, login[0], result)
    if plan.audit_files and result.status != "failed":
        _audit(target, host, plan, result)
    if plan.syslog_files and result.status != "failed":
        _syslog(run, target, host, plan, services, result)
    return result


def _syslog(run: JobRun, target: Target, host: HostConfig, plan: ImagePlan, services: Services,
            result: Outcome) -> None:
    """The password file, the snippet, rsyslog checked and restarted; then a token logged on the host must
    arrive in ``SystemEvents``. A failure fails the host (the firewall stays kept and saved)."""
    try:
        target.run(["install", "-d", "-m", "0700", "--", plan.image.syslog.queue_dir])
        changed = [path for path, f in sorted(plan.syslog_files.items(), key=lambda item: item[0] == SNIPPET)
                   if target.replace_file(path, f.text, mode=f.mode, secret=f.secret)]
        target.run(["rsyslogd", "-N1"], mutates=False)
        target.run(services.restart("rsyslog"))
        _wait_running(target, services, "rsyslog")
        target.run(services.enable("rsyslog"))
        rows = prove_delivery(run, target, host.name)
    except OrchestratorError as exc:
        result.status = "failed"
        result.message += f"; syslog: {exc}"
        return
    _changed(result, changed)
    result.message += f"; syslog: a test line reached {run.section('logs').database}.SystemEvents ({rows} row)"


def _is_audit(path: str) -> bool:
    return path.startswith(RULES_D + "/")


def _audit(target: Target, host: HostConfig, plan: ImagePlan, result: Outcome) -> None:
    """The audit step (``audit_rules.install_and_load``) into the host's outcome: a failed load fails it, a
    locked host is ``pending``."""
    try:
        load = install_and_load(target, plan.image, plan.audit_files, where=host.name)
    except OrchestratorError as exc:
        result.audit = {"expected": expected_rule_count(plan.audit_files), "loaded": "failed"}
        result.status = "failed"
        result.message += f"; audit: {exc}"
        return
    _changed(result, load.changed)
    result.audit = {"expected": load.expected, "loaded": "locked (-e 2)" if load.loaded is None else load.loaded}
    result.message += f"; audit: {load.remark}"
    if load.loaded is None:
        result.status = "pending"


def _changed(result: Outcome, paths: list[str]) -> None:
    result.changed += paths
    if paths and result.status == "unchanged":
        result.status = "hardened"


def _pam_texts(target: Target, image: GuardImage) -> dict[str, str]:
    """The login services' PAM files as they are now (what the switch puts back); missing ones are never made."""
    if not image.loginuid.enabled:
        return {}
    paths = (f"/etc/pam.d/{name}" for name in image.loginuid.services)
    return {path: text for path in paths if (text := target.read_file(path)) is not None}


def _loginuid_report(run: JobRun, host: HostConfig, login: LoginuidResult, result: Outcome) -> None:
    """The PAM result, and the login uid read back on a new connection: an unset one is reported, and a
    service pam_loginuid could not be given fails the host."""
    with connect(run, host) as fresh:
        uid = loginuid_over_ssh(fresh)
    result.loginuid = {**login.as_dict(), "over_ssh": uid if uid is not None else "unset"}
    for warning in login.warnings:
        run.report.warnings.append(f"{host.name}: {warning}")
    if uid is None:
        run.report.warnings.append(f"{host.name}: /proc/self/loginuid is unset over SSH (sshd with UsePAM no?): "
                                   "audit records will not name who logged in")
    if not login.ok:
        result.status = "failed"
        result.message += f"; {login.summary()}"


def _manager(target: Target, host: HostConfig, plan: ImagePlan) -> str:
    """The init system (the setting, else the host's), after checking the host has what the image needs."""
    image = plan.image
    tools = _host_tools(image)
    logpath = image.fail2ban.logpath if image.fail2ban.backend != "systemd" else "-"
    out = target.run(["sh", "-c", FACTS, "sh", image.interface, logpath, *tools], mutates=False).stdout
    facts: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        facts.setdefault(name, []).append(value)
    problems = [f"{', '.join(facts['missing'])} not found"] if "missing" in facts else []
    if "missing_interface" in facts:
        problems.append(f"no interface {image.interface} (guard.images[].interface: knockd would hear no knock)")
    if "missing_log" in facts:
        problems.append(f"no {logpath} for fail2ban (fail2ban.logpath; or backend systemd)")
    manager = image.services.manager if image.services.manager != "auto" else facts.get("manager", ["none"])[0]
    if manager == "none":
        problems.append("neither systemd nor OpenRC (rc-service) found (set guard.images[].services.manager)")
    if problems:
        raise OrchestratorError(f"cannot harden with image {image.name}: {'; '.join(problems)}")
    return manager


def _host_tools(image: GuardImage) -> list[str]:
    tools = ["fail2ban-client"]
    if image.firewall.backend == "nftables":
        tools.append("nft")
    else:
        tools += ["iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"]
    if image.guard == "knockd":
        tools.append("knockd")
        tools += [r.DEFAULT_FACTS["nft"]] if image.firewall.backend == "nftables" else \
            [r.DEFAULT_FACTS["iptables"], r.DEFAULT_FACTS["ip6tables"]]  # what knockd's commands name
    elif image.guard == "fwknop":
        tools.append("fwknopd")
    if image.audit.enabled:
        tools += ["augenrules", "auditctl"]
    if image.syslog.enabled:
        tools += ["rsyslogd", "logger"]
    return tools


def _with_current_one_time_list(run: JobRun, plan: ImagePlan) -> ImagePlan:
    """The plan with knockd's one-time file as the list stands now: getting in to harden used its head (the
    host's knockd takes the lines in order, so the file must start at the sequence the next knock sends)."""
    image = plan.image
    if image.guard != "knockd" or not image.knock.one_time or run.dry:
        return plan
    path = r.DEFAULT_FACTS["one_time_file"]
    fresh = r.render_image(image, load_or_create(run, image))[path]
    return ImagePlan(image, plan.key, {**plan.files, path: fresh}, plan.syslog_files)


def _changed_files(target: Target, files: Mapping[str, r.RenderedFile]) -> dict[str, str | None]:
    """The files whose text on the host differs from ours: path -> the host's text (None: absent)."""
    changed = {}
    for path, rendered in files.items():
        old = target.read_file(path)
        if old != rendered.text:
            changed[path] = old
    return changed


def _dry_run(run: JobRun, target: Target, host: HostConfig, plan: ImagePlan,
             changed: Mapping[str, str | None]) -> Outcome:
    for path, rendered in sorted(plan.files.items()):
        target.replace_file(path, rendered.text, mode=rendered.mode, secret=rendered.secret)
    if plan.image.loginuid.enabled:
        check_and_fix_loginuid(target, plan.image.loginuid.services)
    for path, rendered in sorted(plan.syslog_files.items()):
        target.replace_file(path, rendered.text, mode=rendered.mode, secret=rendered.secret)
    apply_with_deadman(run, target, new_rules=plan.new_rules, backend=plan.image.firewall.backend,
                       window_s=plan.image.firewall.confirm_window, reconnect=_no_reconnect,
                       state_dir=run.section("guard").host_state_dir)
    return Outcome(host.name, plan.image.name, "planned", "dry run: nothing changed", sorted(changed))


@contextmanager
def _no_reconnect() -> Iterator[Target]:
    raise AssertionError("a dry run makes no connection")
    yield  # pragma: no cover


def _is_running(target: Target, services: Services, daemon: str) -> bool:
    return target.run(services.status(daemon), check=False, mutates=False).ok


def _prepare(target: Target, plan: ImagePlan, changed: Mapping[str, str | None], services: Services,
             running: bool) -> None:
    """Under the armed revert: knockd's (fwknopd's) new files; the daemon restarted when they changed or it
    was down, and seen running."""
    for path in changed:
        rendered = plan.files[path]
        target.replace_file(path, rendered.text, mode=rendered.mode, secret=rendered.secret)
    daemon = plan.guard_daemon
    if daemon is None:
        return
    if changed or not running:
        target.run(services.restart(daemon))
    _wait_running(target, services, daemon)


def _restart_fail2ban(target: Target, plan: ImagePlan, services: Services) -> list[str]:
    """fail2ban's files, then a restart (its chains went with the old filter table) until it answers."""
    changed = [path for path, rendered in sorted(plan.fail2ban_files.items())
               if target.replace_file(path, rendered.text, mode=rendered.mode)]
    target.run(services.restart("fail2ban"))
    _wait_running(target, services, "fail2ban")
    target.run(services.enable("fail2ban"))
    return changed


def _wait_running(target: Target, services: Services, daemon: str) -> None:
    deadline = time.monotonic() + (FAIL2BAN_UP_S if daemon == "fail2ban" else 5)
    while not _is_running(target, services, daemon):
        if time.monotonic() > deadline:
            raise OrchestratorError(f"{target.describe()}: {services.name(daemon)} is not running after its restart")
        time.sleep(0.2)


@contextmanager
def _through_the_guard(run: JobRun, host: HostConfig) -> Iterator[Target]:
    """A new connection the way an admin gets in: ``connect`` knocks (or sends one SPA packet) and waits for
    sshd's banner first."""
    with connect(run, host, banner_timeout=RECONNECT_BANNER_S) as fresh:
        yield fresh


def _save_for_boot(target: Target, plan: ImagePlan, services: Services) -> list[str]:
    """The kept rules where the firewall service loads them at boot; that service and the daemons enabled."""
    saved = [path for path, rendered in sorted(plan.rule_files.items())
             if target.replace_file(path, rendered.text, mode=rendered.mode)]
    for path in plan.rule_files:
        target.run(services.enable(r.FIREWALL_TOOLS[path]))
    if plan.guard_daemon:
        target.run(services.enable(plan.guard_daemon))
    return saved


def fail2ban_status(target: Target) -> dict[str, dict[str, int]]:
    """Per jail: currently/total failed and banned, as ``fail2ban-client status JAIL`` says."""
    listing = target.run(["fail2ban-client", "status"], mutates=False).stdout
    names = [name.strip() for line in listing.splitlines() if "Jail list:" in line
             for name in line.split(":", 1)[1].split(",") if name.strip()]
    jails = {}
    for name in names:
        text = target.run(["fail2ban-client", "status", name], mutates=False).stdout
        jails[name] = {_counter(label): int(value) for label, value in _counts(text)}
    return jails


def _counts(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        label, _, value = line.partition(":")
        label = label.strip(" |`-\t")
        if label.startswith(("Currently", "Total")) and value.strip().isdigit():
            yield label, value.strip()


def _counter(label: str) -> str:
    return label.lower().replace(" ", "_")


def summarize(run: JobRun, outcomes: Mapping[str, Outcome], failures: Mapping[str, str]) -> None:
    """One line per host, the report, and the exit: 0 only when every host is proven (or, dry, planned)."""
    hosts = run.report.summary["hosts"] = {name: o.as_dict() for name, o in outcomes.items()}
    for name, reason in failures.items():
        hosts[name] = {"host": name, "status": "failed", "message": reason}
    for name, o in outcomes.items():
        line = f"{name}: {o.status} (image {o.image}): {o.message}"
        run.echo(line) if o.ok else run.progress.warn(line)
    failed = {n: o.message for n, o in outcomes.items() if o.status == "failed"} | dict(failures)
    reverted = sorted(n for n, o in outcomes.items() if o.status == "reverted")
    pending = sorted(n for n, o in outcomes.items() if o.status == "pending")
    for status in (*OK_STATUSES, "pending"):
        run.report.summary[status] = sum(o.status == status for o in outcomes.values())
    run.report.summary["reverted"], run.report.summary["failed"] = len(reverted), len(failed)
    parts = ([f"failed on {'; '.join(f'{n}: {why}' for n, why in sorted(failed.items()))}"] if failed else []) + \
        ([f"reverted on {', '.join(reverted)} (the old rules and files are back, proven)"] if reverted else [])
    if parts:
        raise OrchestratorError(f"harden: {'; '.join(parts)}")
    if pending:
        raise AuditPending(f"harden: audit rules not loaded yet on {', '.join(pending)} (locked with -e 2): "
                           "they load at the next boot; everything else is kept")


__all__ = ["ImagePlan", "Outcome", "Services", "fail2ban_status", "harden", "harden_host", "plan_image"]
