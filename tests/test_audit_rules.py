"""guard.images[].audit: settings refused with one line, rules.d files in upstream order, -e 2 only in the
next-boot file, the expected rule count and the check of `auditctl -l` after a load (outputs written in
auditctl's normalized listing form; no rule is ever loaded here)."""

from __future__ import annotations

import pytest

from orchestrator.config import load_section
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.security.audit_rules import (
    FINALIZE,
    RULES_D,
    audit_warnings,
    check_loaded,
    enabled_state,
    expected_rule_count,
    load_commands,
    merged_rules,
    render_audit,
    render_next_boot,
    stale_paths,
)


def image(**audit):
    return load_section("guard", {"images": [{"name": "web", "audit": {"enabled": True, **audit}}]}).images[0]


def rule_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


BAD = [
    ({"buffer": 10}, "guard.images[0].audit.buffer", "at least 64"),
    ({"failure": 3}, "guard.images[0].audit.failure", "not one of"),
    ({"watches": ["etc/passwd"]}, "guard.images[0].audit.watches[0]", "absolute path"),
    ({"watches": ["/srv/a b"]}, "guard.images[0].audit.watches[0]", "split the audit rule"),
    ({"privileged": ["/usr/bin/../bin/su"]}, "guard.images[0].audit.privileged[0]", "absolute path"),
    ({"everything_auid": 4294967295}, "guard.images[0].audit.everything_auid", "at most 4294967294"),
    ({"local_rules": ["-e 2"]}, "guard.images[0].audit.local_rules[0]", "-a, -A or -w"),
    ({"local_rules": ["-w /srv -p wa -D"]}, "guard.images[0].audit.local_rules[0]", "control option -D"),
    ({"local_rules": ["-w /srv\n-e 2"]}, "guard.images[0].audit.local_rules[0]", "one rule line"),
    ({"local_rules": ["-w /srv\t-p wa"]}, "guard.images[0].audit.local_rules[0]", "one rule line"),
    ({"exec_logging": "maybe"}, "guard.images[0].audit.exec_logging", "true or false"),
    ({"bufer": 1}, "guard.images[0].audit.bufer", "did you mean buffer"),
]


@pytest.mark.parametrize("settings, key, why", BAD)
def test_a_bad_audit_setting_is_one_line_naming_its_key(settings, key, why):
    with pytest.raises(ConfigError) as caught:
        image(**settings)
    message = str(caught.value)
    assert message.startswith(f"{key}:") and why in message and "\n" not in message


def test_disabled_renders_nothing():
    web = load_section("guard", {"images": [{"name": "web"}]}).images[0]
    assert render_audit(web) == {} and render_next_boot(web) == {} and audit_warnings(web) == []


def test_default_files_in_upstream_order_with_base_config_first():
    files = render_audit(image())
    assert list(files) == [f"{RULES_D}/{n}.rules" for n in ("10-base-config", "30-main", "31-privileged", "40-exec")]
    assert all(f.mode == 0o640 for f in files.values())
    assert rule_lines(files[f"{RULES_D}/10-base-config.rules"].text) == [
        "-D", "-b 8192", "--backlog_wait_time 60000", "-f 1"]
    main = rule_lines(files[f"{RULES_D}/30-main.rules"].text)
    for path in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d",
                 "/etc/ssh/sshd_config", "/etc/portage/make.conf", "/etc/portage/repos.conf", "/etc/pam.d",
                 "/etc/audit"):
        assert any(line.startswith(f"-w {path} -p wa -k ") for line in main), path
    assert "-a always,exit -F arch=b64 -S init_module,finit_module,delete_module -k modules" in main
    assert "-w /sbin/modprobe -p x -k modules" in main
    assert ("-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged"
            in files[f"{RULES_D}/31-privileged.rules"].text)
    assert rule_lines(files[f"{RULES_D}/40-exec.rules"].text) == [
        "-a always,exit -F arch=b64 -S execve -F auid>=1000 -F auid!=unset -k exec",
        "-a always,exit -F arch=b32 -S execve -F auid>=1000 -F auid!=unset -k exec"]
    assert not any("-e" in rule_lines(f.text)[0] for f in files.values())


def test_settings_reach_their_lines():
    files = render_audit(image(buffer=32768, failure=2, backlog_wait_time=0, exec_min_auid=500, abi32=False,
                               watches=["/srv/www"], privileged=["/usr/bin/doas"], exec_logging=True))
    text = "\n".join(f.text for f in files.values())
    assert "-b 32768\n" in text and "-f 2\n" in text and "--backlog_wait_time 0\n" in text
    assert "-w /srv/www -p wa -k watch\n" in text and "arch=b32" not in text
    assert rule_lines(files[f"{RULES_D}/31-privileged.rules"].text) == [
        "-a always,exit -F path=/usr/bin/doas -F perm=x -F auid>=500 -F auid!=unset -k privileged"]
    assert "-S execve -F auid>=500 -F auid!=unset -k exec" in text
    assert f"{RULES_D}/40-exec.rules" not in render_audit(image(exec_logging=False))


def test_the_everything_rule_is_opt_in_for_one_auid_with_the_seeds_warning():
    web = image(everything_auid=7005)
    text = render_audit(web)[f"{RULES_D}/70-everything.rules"].text
    assert "DO NOT ENABLE THIS ON PRODUCTION SYSTEMS WITHOUT PROPER TESTING" in text
    assert rule_lines(text) == ["-a always,exit -F arch=b64 -S all -F auid=7005 -k everything-7005",
                                "-a always,exit -F arch=b32 -S all -F auid=7005 -k everything-7005"]
    (warning,) = audit_warnings(web)
    assert warning.startswith("guard image web: audit.everything_auid 7005: WARNING") and "\n" not in warning
    assert f"{RULES_D}/70-everything.rules" not in render_audit(image())


def test_immutable_is_only_in_the_next_boot_file():
    web = image(immutable=True, local_rules=["-w /srv -p wa -k srv"])
    now = render_audit(web)
    assert not any(line.startswith("-e") for f in now.values() for line in f.text.splitlines())
    assert list(render_next_boot(web)) == [FINALIZE]
    assert rule_lines(render_next_boot(web)[FINALIZE].text) == ["-e 2"]
    assert rule_lines(now[f"{RULES_D}/90-local.rules"].text) == ["-w /srv -p wa -k srv"]
    assert "next boot" in audit_warnings(web)[0]
    assert render_next_boot(image()) == {} and FINALIZE in stale_paths(image())
    assert FINALIZE not in stale_paths(web) and f"{RULES_D}/70-everything.rules" in stale_paths(web)


def test_merge_follows_augenrules_control_lines_first_and_e_last():
    web = image(immutable=True, local_rules=["-a always,exit -F arch=b64 -S mount -k mounts"])
    merged = merged_rules({**render_next_boot(web), **render_audit(web)})
    assert merged[:4] == ["-D", "-b 8192", "-f 1", "--backlog_wait_time 60000"]
    assert merged[-2:] == ["-a always,exit -F arch=b64 -S mount -k mounts", "-e 2"]


def listing(files) -> str:
    """`auditctl -l` as the kernel lists these rules: normalized (-k kept, unset as -1), no control lines."""
    out = []
    for line in merged_rules(files):
        if line.split()[:1] and line.split()[0] in ("-a", "-w"):
            out.append(line.replace("auid!=unset", "auid!=-1"))
    return "\n".join(out) + "\n"


def test_expected_count_and_check_loaded():
    web = image(everything_auid=7005, watches=["/srv/www"], local_rules=["-w /srv -p wa -k srv"],
                immutable=True)
    files = render_audit(web)
    expected = expected_rule_count(files)
    assert expected == 18 + 1 + 2 + 4 + 10 + 2 + 2 + 1  # watches+extra, module syscalls, tools, privileged...
    assert expected_rule_count({**files, **render_next_boot(web)}) == expected  # -e is no listed rule
    assert check_loaded(listing(files), expected) == expected
    with pytest.raises(OrchestratorError, match=r"^web1: auditctl -l says 'No rules' after augenrules --load, "
                                                r"40 expected"):
        check_loaded("No rules\n", expected, where="web1")
    short = "".join(listing(files).splitlines(keepends=True)[:12])
    with pytest.raises(OrchestratorError, match=r"^host: the kernel holds 12 audit rule\(s\), 40 expected"):
        check_loaded(short, expected)
    with pytest.raises(OrchestratorError, match="holds 41 audit rule"):
        check_loaded(listing(files) + "-w /etc/hosts -p wa -k other\n", expected)
    assert check_loaded("No rules\n", 0) == 0


def test_load_commands_and_status():
    assert load_commands() == [["augenrules", "--load"], ["auditctl", "-l"]]
    status = "enabled 2\nfailure 1\npid 412\nrate_limit 0\nbacklog_limit 8192\n"
    assert enabled_state(status) == 2
    with pytest.raises(OrchestratorError):
        enabled_state("")
