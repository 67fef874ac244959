"""One image's audit rules: the files of ``/etc/audit/rules.d/``, what loading them must show, and ``-e 2``.

Pure: ``guard.images[].audit`` in, ``{path on the host: RenderedFile}`` out, from ``templates/audit/``
in upstream's rules.d order (10 base config, 30 main, 31 privileged, 40 exec, 70 the seed's
"everything" rule, 90 local, 99 finalize). ``augenrules --load`` merges them into
``/etc/audit/audit.rules`` and runs ``auditctl -R`` on that, which stops at the first line the kernel
refuses and still leaves ``auditctl -l`` exiting 0 ("No rules"): so after a load, the rules the kernel
lists are counted against what these files add (``expected_rule_count``, ``check_loaded``).

``-e 2`` (immutable) is the one line that must not be loaded by ``inv harden``: once set, no rule can
change until a reboot, so a mistake would stay. It lives in its own file (``render_next_boot``), which
the kernel deploy writes right before it reboots; the boot's own ``augenrules --load`` loads it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from collections.abc import Mapping

from ..config.audit import EVERYTHING_WARNING, AuditConfig
from ..config.guard import GuardImage
from ..errors import OrchestratorError
from ..templating import render
from .render import RenderedFile

RULES_D = "/etc/audit/rules.d"
MERGED = "/etc/audit/audit.rules"  # what augenrules writes from RULES_D, and what auditd loads at boot
FINALIZE = f"{RULES_D}/99-finalize.rules"
MODE = 0o640  # auditctl -R refuses (silently, rc 1) a world-writable file
RULE_STARTS = ("-a", "-A", "-w")  # each is one line of `auditctl -l`; control lines (-D -b -f -e ...) are not
NO_RULES = "No rules"
# Watched for writes and attribute changes ("-p wa"), with the key each event carries.
WATCHES = [
    ("/etc/passwd", "identity"), ("/etc/group", "identity"), ("/etc/shadow", "identity"),
    ("/etc/gshadow", "identity"), ("/etc/sudoers", "sudoers"), ("/etc/sudoers.d", "sudoers"),
    ("/etc/ssh/sshd_config", "sshd_config"), ("/etc/pam.d", "pam"),
    ("/etc/portage/make.conf", "portage"), ("/etc/portage/repos.conf", "portage"),
    ("/etc/portage/binrepos.conf", "portage"), ("/etc/portage/package.use", "portage"),
    ("/etc/portage/package.accept_keywords", "portage"), ("/etc/portage/package.mask", "portage"),
    ("/etc/portage/package.unmask", "portage"), ("/etc/portage/package.env", "portage"),
    ("/etc/portage/package.license", "portage"), ("/etc/audit", "audit_config"),
]
MODULE_TOOLS = ["/bin/kmod", "/sbin/insmod", "/sbin/modprobe", "/sbin/rmmod"]  # kmod's links on Gentoo


def render_audit(image: GuardImage) -> dict[str, RenderedFile]:
    """The rules files ``inv harden`` installs and loads now (``-e 2`` is never among them); {} when
    ``audit.enabled`` is off."""
    cfg = image.audit
    if not cfg.enabled:
        return {}
    arches = ["b64", "b32"] if cfg.abi32 else ["b64"]
    parts = {
        "10-base-config": {"buffer": cfg.buffer, "failure": cfg.failure,
                           "backlog_wait_time": cfg.backlog_wait_time},
        "30-main": {"watches": [*WATCHES, *((path, "watch") for path in cfg.watches)], "arches": arches,
                    "module_tools": MODULE_TOOLS},
        "31-privileged": {"privileged": cfg.privileged, "min_auid": cfg.exec_min_auid},
    }
    if cfg.exec_logging:
        parts["40-exec"] = {"arches": arches, "min_auid": cfg.exec_min_auid}
    if cfg.everything_auid is not None:
        parts["70-everything"] = {"arches": arches, "auid": cfg.everything_auid, "warning": EVERYTHING_WARNING}
    if cfg.local_rules:
        parts["90-local"] = {"rules": cfg.local_rules}
    return {f"{RULES_D}/{name}.rules": _file(image, name, values) for name, values in parts.items()}


def render_next_boot(image: GuardImage) -> dict[str, RenderedFile]:
    """``99-finalize.rules`` (``-e 2``) when ``audit.immutable``, else {}: the kernel deploy writes it just
    before its reboot (and removes ``FINALIZE`` when it is not wanted: ``stale_paths``)."""
    if not (image.audit.enabled and image.audit.immutable):
        return {}
    return {FINALIZE: _file(image, "99-finalize", {})}


def schedule_next_boot(target, image: GuardImage, *, root: str = "/") -> list[str]:
    """Right before a reboot (the kernel deploy): ``99-finalize.rules`` written when ``immutable`` (the boot's
    ``augenrules --load`` locks the rules), removed when not; what was done, as lines. Nothing without audit."""
    if not image.audit.enabled:
        return []
    path = posixpath.join(root, FINALIZE.lstrip("/"))
    wanted = render_next_boot(image).get(FINALIZE)
    if wanted is not None:
        changed = target.replace_file(path, wanted.text, mode=wanted.mode)
        return [f"audit: {path} (-e 2) {'written' if changed else 'in place'}: the rules lock at this boot"]
    if target.read_file(path) is not None:
        target.run(["rm", "-f", "--", path])
        return [f"audit: {path} removed (immutable is off)"]
    return []


@dataclass
class AuditLoad:
    """What ``install_and_load`` did on a host: files changed, rules expected and loaded (None: the host's
    rules are locked with ``-e 2``, the files wait for its next boot), and a remark for the summary."""

    changed: list[str]
    expected: int
    loaded: int | None
    remark: str = ""


def install_and_load(target, image: GuardImage, files: Mapping[str, RenderedFile], *, where: str) -> AuditLoad:
    """``inv harden``'s audit step: the files, our stale ones removed (not ``FINALIZE``: the kernel deploy's,
    for its reboot), then ``augenrules --load`` and the count checked (``check_loaded`` raises). A host whose
    rules are locked gets the files only."""
    changed = [path for path, f in sorted(files.items()) if target.replace_file(path, f.text, mode=f.mode)]
    for path in stale_paths(image):
        if path != FINALIZE and target.read_file(path) is not None:
            target.run(["rm", "-f", "--", path])
            changed.append(path)
    expected = expected_rule_count(files)
    if enabled_state(target.run(["auditctl", "-s"], mutates=False).stdout) == 2:
        return AuditLoad(changed, expected, None, f"the host's rules are locked (-e 2): the {expected} rules load "
                                                  "at its next boot")
    remark = ""
    if target.read_file(FINALIZE) is not None:  # deploy-kernel wrote it for a reboot that has not come yet
        remark = f"{FINALIZE} is there (-e 2): this load locks the rules until the next boot; "
    target.run(load_commands()[0])
    loaded = check_loaded(target.run(load_commands()[1], mutates=False).stdout, expected, where=where)
    return AuditLoad(changed, expected, loaded, remark + f"{loaded} rules loaded")


def stale_paths(image: GuardImage) -> list[str]:
    """Our files a host may still have from an earlier config, and that must go (a rule file left over
    would be merged and loaded): every name we can write that this config does not."""
    wanted = set(render_audit(image)) | set(render_next_boot(image))
    ours = ["10-base-config", "30-main", "31-privileged", "40-exec", "70-everything", "90-local", "99-finalize"]
    return [path for path in (f"{RULES_D}/{name}.rules" for name in ours) if path not in wanted]


def audit_warnings(image: GuardImage) -> list[str]:
    """Lines for ``run.progress.warn`` when the image is rendered: the opt-ins that cost a lot or lock."""
    cfg: AuditConfig = image.audit
    if not cfg.enabled:
        return []
    lines = []
    if cfg.everything_auid is not None:
        lines.append(f"guard image {image.name}: audit.everything_auid {cfg.everything_auid}: {EVERYTHING_WARNING}")
    if cfg.immutable:
        lines.append(f"guard image {image.name}: audit.immutable: -e 2 is written for the next boot (the kernel "
                     "deploy); after that reboot, audit rules change only with another reboot")
    return lines


def load_commands() -> list[list[str]]:
    """What ``inv harden`` runs on a host once the files are in place: merge rules.d and load the result,
    then list what the kernel holds (its output goes to ``check_loaded``)."""
    return [["augenrules", "--load"], ["auditctl", "-l"]]


def merged_rules(files: Mapping[str, RenderedFile]) -> list[str]:
    """The rule lines of ``files`` as augenrules merges them: files in version order, comments and blank
    lines dropped, the last ``-D`` first, then the last ``-b`` and ``-f``, everything else in order, the last
    ``-e`` at the end (augenrules' awk program, which also writes the empty lines of missing ones)."""
    control = {"-e": "", "-D": "", "-f": "", "-b": ""}
    rest = []
    for path in sorted(files, key=_version_key):
        if not path.endswith(".rules"):
            continue
        for line in files[path].text.splitlines():
            word = line.split()[0] if line.split() else ""
            if not word or word.startswith("#"):
                continue
            if word in control and (word != "-D" or line.strip() == "-D"):
                control[word] = line
            else:
                rest.append(line)
    return [control["-D"], control["-b"], control["-f"], *rest, control["-e"]]


def expected_rule_count(files: Mapping[str, RenderedFile]) -> int:
    """How many lines ``auditctl -l`` prints once ``files`` are loaded: one per syscall rule and watch."""
    return sum(1 for line in merged_rules(files) if line.split()[:1] and line.split()[0] in RULE_STARTS)


def check_loaded(listing: str, expected: int, *, where: str = "host") -> int:
    """Count the rules in ``auditctl -l`` output; "No rules" or any other count than ``expected`` is a one-line
    failure naming both numbers. Returns the count."""
    lines = [line for line in listing.splitlines() if line.strip()]
    if expected and (not lines or lines[0].strip() == NO_RULES):
        raise OrchestratorError(f"{where}: auditctl -l says {NO_RULES!r} after augenrules --load, {expected} "
                                "expected: a rule line was refused and the load stopped there")
    loaded = sum(1 for line in lines if line.split()[0] in RULE_STARTS)
    if loaded != expected:
        raise OrchestratorError(f"{where}: the kernel holds {loaded} audit rule(s), {expected} expected from "
                                f"{RULES_D}: a line was refused (the load stops there) or another file "
                                "in rules.d added rules")
    return loaded


def enabled_state(status: str) -> int:
    """The ``enabled`` value of ``auditctl -s`` (0 off, 1 on, 2 immutable: no rule changes until reboot)."""
    found = re.search(r"^enabled (\d+)$", status, re.M)
    if not found:
        raise OrchestratorError("auditctl -s printed no 'enabled' line")
    return int(found.group(1))


def _file(image: GuardImage, name: str, values: dict) -> RenderedFile:
    text = render(f"audit/{name}.rules.j2", {"name": f"{name}.rules", "image": image.name, **values},
                  settings={"rules": f"guard image {image.name}: audit.local_rules",
                            "watches": f"guard image {image.name}: audit.watches"})
    return RenderedFile(text, MODE)


def _version_key(path: str) -> list:
    """``ls -v`` order, near enough for rules.d names: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.rsplit("/", 1)[-1])]


__all__ = ["FINALIZE", "MERGED", "RULES_D", "audit_warnings", "check_loaded", "enabled_state",
           "expected_rule_count", "load_commands", "merged_rules", "render_audit", "render_next_boot",
           "stale_paths"]
