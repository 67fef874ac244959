"""``inv deploy-kernel``: per host, facts -> snapshot -> upload -> install -> boot config -> one-shot -> (reboot, check, promote).

What a host ends in, and what it means:

* ``deployed``: the host was rebooted, came back running the new kernel
  (``uname -r``), and only then the new kernel was made the default. Proven.
* ``armed``: installed and armed for **one** boot; the old kernel is still the
  default. Not proven: nothing has booted it yet. A later run (after any reboot)
  finds out what happened: running the new kernel -> promoted; came back on the
  old one -> failed, left for ``inv rollback-kernel``.
* ``failed``: with the reason (and the serial console when the host never came back).

A run exits 0 only when every host is ``deployed`` (or already was); 75
(EX_TEMPFAIL, "come back later") when the worst is ``armed``; 1 when a host failed.
State on the host: ``<staging_dir>/state.json`` (release, old and new boot entries,
the boot id at arming, the files changed, and ``installed``: every release deploy
installed there, oldest first, which ``keep_kernels`` prunes by), written after
arming, read by reruns and by rollback. Once a host is proven on the new kernel,
``prune.prune_host`` removes deploy's own older kernels beyond ``keep_kernels``.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..bootcfg import default_grub, grubenv, menulst
from ..bootcfg.validate import validator_for
from ..errors import EXIT_NOT_READY, OrchestratorError
from ..faults import crash_point
from ..run import Target
from . import oneshot, prune
from .install import ArtifactSet, HostRoot, install, installed, staged_dir, upload

DEFAULT_GRUB = "/etc/default/grub"
GRUB_CFG = "/boot/grub/grub.cfg"
MENU_FILES = ("/boot/grub/menu.lst", "/boot/grub/grub.conf")
STATE_FILE = "state.json"
POLL_SECONDS = 1.0


class NotProven(OrchestratorError):
    """Every host is installed and armed, none failed, but not every one was seen booting the new kernel."""

    exit_code = EXIT_NOT_READY


@dataclass
class DeployFacts:
    """What deploy reads from a host before it changes anything: ``fleet.facts`` plus deploy's own."""

    running: str
    boot_id: str
    loader: str  # "grub2" | "grub-legacy"
    state: dict = field(default_factory=dict)
    instance_id: str = ""  # fleet.hosts[].instance_id, else the DMI asset tag, else IMDSv2 (root / only)
    root_device: str = ""
    nvme: dict[str, str] = field(default_factory=dict)  # "nvme0n1" -> "vol-0abc..." (fleet.facts)


@dataclass
class Outcome:
    host: str
    status: str  # deployed | armed | unchanged | failed
    kernel_from: str = ""
    kernel_to: str = ""
    message: str = ""
    snapshot: str = ""
    changed: list[str] = field(default_factory=list)
    console: str = ""
    removed: list[str] = field(default_factory=list)  # kernels keep_kernels removed
    kept_foreign: list[str] = field(default_factory=list)  # kernels present that deploy did not install

    @property
    def proven(self) -> bool:
        return self.status == "deployed" or (self.status == "unchanged" and self.kernel_from == self.kernel_to)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [])}


@dataclass(frozen=True)
class HostSpec:
    """What deploy needs of a fleet host (``fleet.hosts[]``): its name, system root, instance and region."""

    name: str
    root: str = "/"
    instance_id: str = ""
    region: str = ""


@dataclass
class Ec2Access:
    """How to reach EC2 for one run: ``client(region)`` makes a client; timeouts from the ``ec2`` section."""

    client: Callable[[str], Any]
    snapshot_wait_timeout: float = 3600
    poll_seconds: float = 15


# --- facts ---------------------------------------------------------------------------------

# Deploy's own facts, run after fleet.facts' script in the same round trip: $4 is the state file's path.
DEPLOY_FACTS = r"""
say boot_id "$(cat "$root/proc/sys/kernel/random/boot_id" 2>/dev/null)"
[ -r "$root/proc/sys/kernel/osrelease" ] && say osrelease "$(cat "$root/proc/sys/kernel/osrelease")"
if [ -e "$4" ]; then say state_found yes; say state "$(cat "$4")"; fi
"""


def boot_id(target: Target, host: HostRoot) -> str:
    return (target.read_file(host.at("/proc/sys/kernel/random/boot_id")) or "").strip()


def gather(target: Target, spec: HostSpec, staging_dir: str) -> DeployFacts:
    """``fleet.facts`` (kernel, boot loader, root device, instance id, NVMe) and deploy's own, in one round trip.

    The running kernel is ``uname -r`` on a live root; under another root (the tests' instance, an image)
    it is ``<root>/proc/sys/kernel/osrelease`` (empty when there is none).
    """
    from ..fleet.facts import gather_more

    host = HostRoot(spec.root)
    where = state_path(host, staging_dir)
    facts, own = gather_more(target, spec, DEPLOY_FACTS, [where])
    if facts.boot_loader not in ("grub2", "grub-legacy"):
        raise OrchestratorError(f"{target.describe()}: no boot loader found under {host.at('/boot/grub')} "
                                "(neither grub.cfg/grubenv nor menu.lst/grub.conf)")
    try:
        state = json.loads(own["state"]) if own.get("state") else {}
    except ValueError:
        raise OrchestratorError(f"{target.describe()}: {where} is not JSON; "
                                "move it away after checking /boot by hand") from None
    running = facts.kernel if host.is_live else own.get("osrelease", "")
    return DeployFacts(running, own.get("boot_id", ""), facts.boot_loader, state, facts.instance_id,
                       facts.root_device, facts.nvme)


def state_path(host: HostRoot, staging_dir: str) -> str:
    return host.at(posixpath.join(staging_dir, STATE_FILE))


def write_state(target: Target, host: HostRoot, staging_dir: str, state: dict) -> None:
    target.replace_file(state_path(host, staging_dir), json.dumps(state, indent=2, sort_keys=True) + "\n",
                        keep_previous=False)


# --- one host -----------------------------------------------------------------------------

def deploy_host(run, target: Target, spec: HostSpec, aset: ArtifactSet, settings, *, reboot: bool, snapshot: bool,
                ec2: Ec2Access | None, reconnect: Callable[[], AbstractContextManager[Target]],
                before_reboot: Callable[[Target], None] | None = None) -> Outcome:
    """Deploy ``aset`` on one host; never raises for a host problem it can describe (returns ``failed``).
    ``before_reboot(target)`` runs right before the reboot (what only a boot may load: audit's ``-e 2``)."""
    host = HostRoot(spec.root)
    facts = gather(target, spec, settings.staging_dir)
    if facts.instance_id and facts.instance_id != spec.instance_id:
        spec = dataclasses.replace(spec, instance_id=facts.instance_id)  # learnt from the host (DMI, IMDS)
    out = Outcome(spec.name, "armed", facts.running, aset.release)
    state = facts.state if facts.state.get("release") == aset.release else {}
    if state and facts.boot_id != state.get("armed_boot_id") and state.get("status") == "armed":
        return settle_after_boot(run, target, host, spec, aset, settings, facts, state, out)
    if state.get("status") == "deployed" and facts.running == aset.release:
        out.status, out.message = "unchanged", f"deployed already: running {aset.release}"
        return prune_after(run, target, host, aset, settings, facts, state, out)
    if aset.release == facts.running:
        return _already_running(target, host, aset, out)
    if snapshot and not state:
        out.snapshot = take_snapshot(run, spec, ec2, facts.running, aset.release)
    sent = upload(target, host, settings.staging_dir, aset)
    out.changed += [f"uploaded {sent} files"] if sent else []
    out.changed += install(target, host, settings.staging_dir, aset)
    old, new, changed = configure_boot(run, target, host, spec, aset, settings, facts, state, ec2)
    out.changed += changed
    if not run.dry and (out.changed or not state):
        write_state(target, host, settings.staging_dir, {
            "release": aset.release, "image": aset.image, "old_release": state.get("old_release", facts.running),
            "old_entry": old, "new_entry": new, "loader": facts.loader, "armed_boot_id": facts.boot_id,
            "changed": sorted(set(state.get("changed", [])) | {c for c in changed if c.startswith("/")}),
            "installed": _with_release(facts.state, aset.release), "status": "armed"})
    out.message = ("installed, armed for one boot (not proven booted: the old kernel stays the default)"
                   if out.changed else "unchanged: installed and armed for one boot (not proven booted)")
    if reboot:
        if before_reboot is not None:
            before_reboot(target)
        return reboot_and_check(run, target, host, spec, aset, settings, facts, ec2, reconnect, out)
    return out


def _with_release(state: dict, release: str) -> list[str]:
    """The install record (oldest first) with ``release`` appended when it is not in it yet."""
    history = prune.recorded(state)
    return history if release in history else [*history, release]


def prune_after(run, target: Target, host: HostRoot, aset: ArtifactSet, settings, facts: DeployFacts, state: dict,
                out: Outcome) -> Outcome:
    """``keep_kernels``, once the host is proven on the new kernel; the record loses what was removed."""
    done = prune.prune_host(run, target, host, loader=facts.loader, running=facts.running, state=state,
                            keep=settings.keep_kernels,
                            staged_image_dir=posixpath.dirname(staged_dir(host, settings.staging_dir, aset)),
                            current=aset.release)
    out.removed, out.kept_foreign = done.removed, done.kept_foreign
    out.changed += done.changed + [f"removed kernel {r}" for r in done.removed] + \
        [f"removed staging {n}" for n in done.staging_removed]
    if done.kept_foreign:
        run.report.warnings.append(f"{out.host}: kept {', '.join(done.kept_foreign)}: not installed by deploy-kernel "
                                   "(no record in its state), so keep_kernels leaves it; remove it by hand if unused")
    history = [r for r in prune.recorded(state) if r not in done.removed]
    if not run.dry and history != state.get("installed"):
        write_state(target, host, settings.staging_dir, {**state, "installed": history})
    return out


def _already_running(target: Target, host: HostRoot, aset: ArtifactSet, out: Outcome) -> Outcome:
    have = installed(target, host, aset)
    if have["modules"] and have["boot"]:
        out.status, out.message = "unchanged", f"running {aset.release} already"
        return out
    raise OrchestratorError(f"{target.describe()}: {aset.release} is the running kernel and the set differs "
                            "from what is installed; replacing the running kernel's files is refused: build it "
                            "under a new release (CONFIG_LOCALVERSION)")


def take_snapshot(run, spec: HostSpec, ec2: Ec2Access | None, old: str, new: str) -> str:
    from .. import ec2 as ec2ops

    if ec2 is None or not spec.instance_id:
        raise OrchestratorError(f"{spec.name}: no instance id (not in fleet.hosts[].instance_id, nor the host's DMI "
                                "asset tag or instance metadata): cannot snapshot its root volume (set instance_id, "
                                "or pass --no-snapshot)")
    client = ec2.client(spec.region)
    return ec2ops.snapshot_root(run, client, spec.instance_id, host=spec.name,
                                description=f"{spec.name} root before kernel {new} (was {old})",
                                tags={"kernel-from": old, "kernel-to": new}, wait_timeout=ec2.snapshot_wait_timeout,
                                poll_seconds=ec2.poll_seconds)


def block_device_names(spec: HostSpec, ec2: Ec2Access | None, settings) -> dict[str, str]:
    """``{volume id: mapping name}`` of the instance (for ``root_to: nvme``), {} without EC2 or an instance id."""
    if settings.root_to != "nvme" or ec2 is None or not spec.instance_id:
        return {}
    from .. import ec2 as ec2ops

    instance = ec2ops.instance_of(ec2.client(spec.region), spec.instance_id)
    return {m["Ebs"]["VolumeId"]: m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("VolumeId") and m.get("DeviceName")}


# --- boot configuration ---------------------------------------------------------------------

def configure_boot(run, target: Target, host: HostRoot, spec: HostSpec, aset: ArtifactSet, settings,
                   facts: DeployFacts, state: dict, ec2: Ec2Access | None) -> tuple[str, str, list[str]]:
    """Renames (``root_to``), the new entry and the one-shot; returns ``(old entry, new entry, files changed)``."""
    changed = []
    if settings.root_to != "keep":
        from ..bootcfg.apply import apply_bootcfg

        serials = {f"/dev/{dev}": vol for dev, vol in facts.nvme.items() if vol.startswith("vol-")}
        changed += apply_bootcfg(run, target, host, settings.root_to, block_device_names(spec, ec2, settings),
                                 serials=serials)
    arm = _arm_grub2 if facts.loader == "grub2" else _arm_legacy
    old, new, armed = arm(run, target, host, aset, settings, facts, state)
    return old, new, changed + armed


def replace(target: Target, path: str, text: str, changed: list[str]) -> None:
    """Validated atomic replace, previous kept; ``path`` noted in ``changed`` when it changed."""
    if target.replace_file(path, text, validate=validator_for(path)):
        changed.append(path)


def _arm_grub2(run, target, host, aset, settings, facts, state) -> tuple[str, str, list[str]]:
    changed: list[str] = []
    env_path, cfg_path, dg_path = host.at("/boot/grub/grubenv"), host.at(GRUB_CFG), host.at(DEFAULT_GRUB)
    dg = target.read_file(dg_path)
    cfg = target.read_file(cfg_path) or ""
    distributor = _plain(default_grub.get_variable(dg, dg_path, "GRUB_DISTRIBUTOR") if dg else "") or "Gentoo"
    submenu = (default_grub.get_variable(dg, dg_path, "GRUB_DISABLE_SUBMENU") if dg else "") not in ("y", "true")
    old = state.get("old_entry") or _old_grub2_entry(target, env_path, cfg, distributor, submenu, facts.running)
    env = target.read_file(env_path) or grubenv.new_grubenv()
    # pin the old default first: GRUB_DEFAULT=saved with no saved_entry would boot entry 0, the newest kernel
    replace(target, env_path, grubenv.edit_grubenv(env, env_path, {"saved_entry": old})
            if grubenv.parse_grubenv(env, env_path).get("saved_entry") != old else env, changed)
    replace(target, dg_path, default_grub.set_variable(dg or "", dg_path, "GRUB_DEFAULT", "saved"), changed)
    cfg = _grub_mkconfig(run, target, host, cfg)
    title = oneshot.grub2_entry_title(distributor, aset.release)
    new = oneshot.grub2_find_entry(cfg, title, cfg_path) if cfg else None
    if new:
        replace(target, cfg_path, oneshot.grub2_panic_on_entry(cfg, new, settings.panic_seconds, cfg_path), changed)
    else:
        new = oneshot.grub2_entry_path(distributor, aset.release, submenu=submenu)
        run.report.warnings.append(f"{target.describe()}: {cfg_path} was not regenerated (the host root is not /) "
                                   f"and has no entry {title!r}: the one-shot names {new!r}, the entry "
                                   "grub-mkconfig would write; panic= is not on it")
    crash_point("deploy-bootcfg-written")
    env = target.read_file(env_path) or grubenv.new_grubenv()
    replace(target, env_path, oneshot.grub2_arm(env, new, old, env_path), changed)
    crash_point("deploy-armed")
    return old, new, changed


def _plain(value: str | None) -> str:
    """A GRUB_DISTRIBUTOR we can use as it is (not ``$(lsb_release ...)``), else empty."""
    return "" if not value or any(c in value for c in "$`") else value


def _old_grub2_entry(target, env_path, cfg, distributor, submenu, running) -> str:
    text = target.read_file(env_path)
    saved = grubenv.parse_grubenv(text, env_path).get("saved_entry") if text else ""
    if saved:
        return saved
    found = oneshot.grub2_find_entry(cfg, oneshot.grub2_entry_title(distributor, running)) if cfg else None
    return found or oneshot.grub2_entry_path(distributor, running, submenu=submenu)


def _grub_mkconfig(run, target: Target, host: HostRoot, cfg: str) -> str:
    """grub.cfg as ``grub-mkconfig`` makes it now (on a live root only), into a temp file we then read."""
    if not host.is_live:
        return cfg
    temp = host.at("/boot/grub/.grub.cfg.mkconfig")
    target.run(["grub-mkconfig", "-o", temp], mutates=not run.dry)
    text = target.read_file(temp) if not run.dry else cfg
    target.run(["rm", "-f", "--", temp])
    return text or cfg


def _arm_legacy(run, target, host, aset, settings, facts, state) -> tuple[str, str, list[str]]:
    changed: list[str] = []
    menu_path = next(host.at(p) for p in MENU_FILES if target.read_file(host.at(p)) is not None)
    default_path = host.at(oneshot.LEGACY_DEFAULT)
    text = target.read_file(menu_path)
    old = state.get("old_entry") or _legacy_default(target, text, menu_path, default_path)
    new = oneshot.legacy_title(aset.release)
    added = oneshot.menulst_add(text, aset.release, old, panic_seconds=settings.panic_seconds, name=menu_path)
    armed, default_text = oneshot.menulst_arm(added, new, old, menu_path)
    old_index = menulst.find_entry(menulst.parse_menu(armed, menu_path), old, menu_path).index
    # the saved default says "old" before menu.lst says "default saved": the old kernel boots at every instant
    if not state:
        _replace_plain(target, default_path, oneshot.legacy_default_file(old_index), changed)
    replace(target, menu_path, armed, changed)
    crash_point("deploy-bootcfg-written")
    _replace_plain(target, default_path, default_text, changed)
    crash_point("deploy-armed")
    return old, new, changed


def _replace_plain(target: Target, path: str, text: str, changed: list[str]) -> None:
    if target.replace_file(path, text):
        changed.append(path)


def _legacy_default(target: Target, text: str, menu_path: str, default_path: str) -> str:
    title = menulst.default_title(text, menu_path)
    if title is not None:
        return title
    index = oneshot.legacy_saved_default(target.read_file(default_path) or "0") or 0
    return menulst.parse_menu(text, menu_path).entries[index].title


def promote(target: Target, host: HostRoot, loader: str, new: str) -> list[str]:
    """Make ``new`` the default; only after it was seen running."""
    changed: list[str] = []
    if loader == "grub2":
        path = host.at("/boot/grub/grubenv")
        replace(target, path, oneshot.grub2_promote(target.read_file(path), new, path), changed)
    else:
        path = next(host.at(p) for p in MENU_FILES if target.read_file(host.at(p)) is not None)
        replace(target, path, oneshot.menulst_promote(target.read_file(path), new, path), changed)
    return changed


# --- reboot and proof -------------------------------------------------------------------------

def reboot_and_check(run, target, host, spec, aset, settings, facts, ec2, reconnect, out: Outcome) -> Outcome:
    """Reboot, wait for a new boot id over SSH, check the running kernel, promote only then."""
    if run.dry:
        target.run(list(settings.reboot_command))
        run.echo(f"[dry-run] {spec.name}: would wait up to {settings.boot_timeout} s for a new boot, check the "
                 f"kernel is {aset.release}, then make it the default")
        return out
    run.progress.say(f"{spec.name}: rebooting into {aset.release} once")
    try:
        target.run(list(settings.reboot_command), check=False, timeout=60)
    except OrchestratorError:
        pass  # the connection may drop under the command: the new boot id is the proof, not this
    close = getattr(target, "close", None)
    if close:
        close()
    back = wait_for_boot(reconnect, host, facts.boot_id, settings.boot_timeout)
    if back is None:
        return never_back(run, spec, ec2, settings, out)
    return settle_after_boot(run, None, host, spec, aset, settings, None, None, out, reconnect=reconnect)


def wait_for_boot(reconnect, host: HostRoot, before: str, timeout: float) -> str | None:
    """The new boot id once SSH answers with one other than ``before``; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with reconnect() as fresh:
                now = boot_id(fresh, host)
                if now and now != before:
                    return now
        except OrchestratorError:
            pass  # down, or not yet answering
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


def settle_after_boot(run, target, host, spec, aset, settings, facts, state, out: Outcome, *,
                      reconnect=None) -> Outcome:
    """The host booted since arming: promote if it runs the new kernel, else fail and leave the old default."""
    if target is None:
        with reconnect() as fresh:
            return settle_after_boot(run, fresh, host, spec, aset, settings, gather(fresh, spec, settings.staging_dir),
                                     None, out)
    state = state or facts.state
    if facts.running != aset.release:
        out.status = "failed"
        out.message = (f"booted once since the new kernel was armed and came back on {facts.running}, not "
                       f"{aset.release}; the old default is left (inv rollback-kernel {spec.name} removes the new one)")
        if not run.dry:
            write_state(target, host, settings.staging_dir, {**state, "status": "failed"})
        return out
    out.changed += promote(target, host, state["loader"], state["new_entry"])
    state = {**state, "status": "deployed", "armed_boot_id": facts.boot_id}
    if not run.dry:
        write_state(target, host, settings.staging_dir, state)
    out.status, out.message = "deployed", f"deployed: booted {aset.release}"
    return prune_after(run, target, host, aset, settings, facts, state, out)


def never_back(run, spec: HostSpec, ec2: Ec2Access | None, settings, out: Outcome) -> Outcome:
    """No new boot within the timeout: the serial console into the report, a reboot through EC2."""
    from .. import ec2 as ec2ops

    out.status = "failed"
    out.message = f"did not come back within {settings.boot_timeout} s"
    if ec2 is None or not spec.instance_id:
        out.message += "; no instance_id: cannot read its console or reboot it through EC2"
        return out
    client = ec2.client(spec.region)
    try:
        out.console = ec2ops.console_output(client, spec.instance_id)
    except OrchestratorError as exc:
        out.console = f"(console output unavailable: {exc})"
    ec2ops.reboot_instance(run, client, spec.instance_id)
    out.message += (f"; console output in the report; rebooted through EC2 ({spec.instance_id}): the one-shot is "
                    "spent, so it comes back on the old default")
    return out


# --- the run ----------------------------------------------------------------------------------

def summarize(run, outcomes: dict[str, Outcome], failures: dict[str, str]) -> None:
    """Summary lines, the report, and the exit: 0 only when every host is proven on the new kernel."""
    run.report.summary["hosts"] = {name: o.as_dict() for name, o in outcomes.items()}
    for name, reason in failures.items():
        run.report.summary["hosts"][name] = {"host": name, "status": "failed", "message": reason}
    for name, o in outcomes.items():
        run.echo(f"{name}: {o.status}: {o.message} ({o.kernel_from} -> {o.kernel_to})")
    failed = sorted([n for n, o in outcomes.items() if o.status == "failed"] + list(failures))
    unproven = sorted(n for n, o in outcomes.items() if o.status != "failed" and not o.proven)
    run.report.summary["deployed"] = sum(o.status == "deployed" for o in outcomes.values())
    run.report.summary["armed_not_proven"] = len(unproven)
    run.report.summary["failed"] = len(failed)
    if failed:
        raise OrchestratorError(f"deploy-kernel: failed on {', '.join(failed)}"
                                + (f"; armed, not proven on {', '.join(unproven)}" if unproven else ""))
    if unproven and not run.dry:
        raise NotProven(f"deploy-kernel: installed and armed for one boot on {', '.join(unproven)}, not proven "
                        "booted: reboot (--reboot, or by hand and run again) to finish")
