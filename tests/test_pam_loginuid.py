"""pam_loginuid: real Debian 12 and Gentoo PAM files read through their includes, one line added where the
session stack does not enforce it (nothing else changes, idempotent), never su/sudo; on a host through a
real sshd on a scratch root (this machine's /etc/pam.d is only read, and checked unchanged at the end)."""

from __future__ import annotations

import difflib
import hashlib
import shutil
from pathlib import Path

import pytest

from orchestrator.config import load_section
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.run import RemoteTarget
from orchestrator.security import pam
from orchestrator.security.loginuid import (check_and_fix_loginuid, loginuid_over_ssh, parse_loginuid,
                                            undo_loginuid)

pytestmark = pytest.mark.timeout(120)

CORPUS = Path(__file__).with_name("pam_corpus")
ADDED = f"session    required    pam_loginuid.so  {pam.TAG}\n"


def files(distro: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in (CORPUS / distro).iterdir() if p.name != "README.md"}


def resolver(distro: str):
    texts = files(distro)
    return texts.get


def one_line_added(old: str, new: str) -> str:
    """The single line ``new`` adds to ``old``; fails if anything else differs."""
    diff = [d for d in difflib.ndiff(old.splitlines(True), new.splitlines(True)) if d[:1] in "+-"]
    assert len(diff) == 1 and diff[0].startswith("+ "), diff
    return diff[0][2:]


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("distro", ["debian12", "gentoo"])
def test_every_corpus_file_reads_and_validates(distro):
    for name, text in files(distro).items():
        pam.check_pam_text(text, name)
        assert pam.parse(text, name), name


@pytest.mark.parametrize("distro, service, chain, control, enforced", [
    ("debian12", "sshd", ("sshd",), "required", True),
    ("debian12", "cron", ("cron",), "required", True),
    ("debian12", "atd", ("atd",), "required", True),
    ("debian12", "login", ("login",), "required", True),
    ("gentoo", "crond", ("crond",), "required", True),
    ("gentoo", "sshd", ("sshd", "system-remote-login", "system-login"), "optional", False),
    ("gentoo", "atd", ("atd", "system-services"), "optional", False),
    ("gentoo", "login", ("login", "system-local-login", "system-login"), "optional", False),
])
def test_found_directly_and_through_includes(distro, service, chain, control, enforced):
    found = pam.loginuid_entries(files(distro)[service], service, resolver(distro))
    assert [(f.chain, f.rule.control, f.enforcing) for f in found] == [(chain, control, enforced)]
    assert pam.has_loginuid(files(distro)[service], resolver(distro), service) is enforced


@pytest.mark.parametrize("distro, service", [("debian12", "su"), ("debian12", "sudo"), ("debian12", "sudo-i"),
                                             ("debian12", "su-l"), ("gentoo", "su"), ("gentoo", "sudo")])
def test_su_and_sudo_stacks_have_none(distro, service):
    assert pam.loginuid_entries(files(distro)[service], service, resolver(distro)) == []


def test_without_a_resolver_only_the_files_own_lines_count():
    assert pam.loginuid_entries(files("gentoo")["sshd"], "sshd") == []


def test_debian_bracket_controls_and_trailing_comments_parse():
    rules = pam.parse(files("debian12")["sshd"], "sshd")
    selinux = [r for r in rules if r.module == "pam_selinux.so"]
    assert selinux[0].control == "[success=ok ignore=ignore module_unknown=ignore default=bad]"
    assert selinux[0].args == ("close",)
    mail = next(r for r in rules if r.module == "pam_mail.so")
    assert mail.args == ("standard", "noenv")  # "# [1]" is a comment
    includes = [(r.control, r.module) for r in rules if r.includes]
    assert includes == [("@include", "common-auth"), ("@include", "common-account"),
                        ("@include", "common-session"), ("@include", "common-password")]


@pytest.mark.parametrize("control, enforced", [
    ("required", True), ("requisite", True), ("Required", True), ("optional", False), ("sufficient", False),
    ("[default=bad]", True), ("[success=ok ignore=ignore]", True), ("[success=ok default=ignore]", False),
    ("[success=ok session_err=die default=ignore]", True), ("[default=die session_err=ignore]", False),
])
def test_what_counts_as_enforcing(control, enforced):
    text = f"session {control} pam_loginuid.so\n"
    assert pam.has_loginuid(text) is enforced


def test_leading_dash_and_module_paths():
    assert not pam.has_loginuid("-session required pam_loginuid.so\n")
    assert pam.has_loginuid("session required /lib64/security/pam_loginuid.so\n")
    assert pam.has_loginuid("SESSION required $ISA/pam_loginuid.so\n")
    assert not pam.has_loginuid("session required pam_loginuid.so.bak\n")
    assert not pam.has_loginuid("auth required pam_loginuid.so\n")


def test_continuation_lines_read_as_one_with_comment_lines_between():
    text = "auth required pam_env.so\nsession \\\n# a comment inside\n    required \\\n\n  pam_loginuid.so\n"
    rules = pam.parse(text, "x")
    assert [(r.first, r.last, r.type, r.control, r.module) for r in rules] == [
        (0, 0, "auth", "required", "pam_env.so"), (1, 5, "session", "required", "pam_loginuid.so")]
    assert pam.has_loginuid(text)
    assert pam.ensure_loginuid(text, "x") == text


def test_a_hash_ends_the_line_even_after_a_backslash():
    rules = pam.parse("session required pam_limits.so \\ # not continued\nsession optional pam_loginuid.so\n")
    assert [r.module for r in rules] == ["pam_limits.so", "pam_loginuid.so"]


@pytest.mark.parametrize("text, reason", [
    ("sesion required pam_unix.so\n", "x:1: 'sesion' is not a PAM type"),
    ("session required\n", "x:1: a rule needs a type, a control and a module"),
    ("auth required pam_env.so\nsession mandatory pam_unix.so\n", "x:2: 'mandatory' is not a PAM control"),
    ("session [success=ok default=bad pam_unix.so\n", "x:1: a '[' without its ']'"),
    ("session [success=maybe] pam_unix.so\n", "x:1: 'success=maybe' in [success=maybe] is not value=action"),
    ("session required pam_unix.so \\\n", "x:1: the line continued with \\ runs past the end of the file"),
    ("session required pam_unix.so\r\n", "x:1: a carriage return"),
    ("@include\n", "x:1: @include without a file name"),
])
def test_malformed_lines_are_refused_with_their_number(text, reason):
    with pytest.raises(pam.PamError) as error:
        pam.parse(text, "x")
    assert str(error.value).startswith(reason) and "\n" not in str(error.value)


# --- the edit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["sshd", "cron", "atd", "login"])
def test_debian_stacks_come_back_unchanged(service):
    text = files("debian12")[service]
    assert pam.ensure_loginuid(text, service, resolver("debian12")) == text


def test_gentoo_sshd_gets_one_required_line_before_its_session_include():
    text = files("gentoo")["sshd"]
    new = pam.ensure_loginuid(text, "sshd", resolver("gentoo"))
    assert one_line_added(text, new) == ADDED
    assert new.splitlines()[-2:] == [ADDED.rstrip("\n"), "session    include      system-remote-login"]
    assert pam.has_loginuid(new, resolver("gentoo"), "sshd")
    assert pam.ensure_loginuid(new, "sshd", resolver("gentoo")) == new
    pam.loginuid_validator("sshd", resolver("gentoo"))(new)


def test_gentoo_atd_keeps_its_trailing_blank_line_and_the_optional_entry_below():
    text = files("gentoo")["atd"]
    new = pam.ensure_loginuid(text, "atd", resolver("gentoo"))
    assert one_line_added(text, new) == ADDED
    assert new.endswith(ADDED + "session include         system-services\n\n")
    found = pam.loginuid_entries(new, "atd", resolver("gentoo"))
    assert [(f.chain, f.enforcing) for f in found] == [(("atd",), True), (("atd", "system-services"), False)]


def test_gentoo_crond_already_has_it():
    text = files("gentoo")["crond"]
    assert pam.ensure_loginuid(text, "crond", resolver("gentoo")) is text


def test_commented_out_line_is_left_and_a_required_one_added_above_the_next_comment_block():
    text = files("debian12")["sshd"].replace("session    required     pam_loginuid.so",
                                             "#session    required     pam_loginuid.so")
    new = pam.ensure_loginuid(text, "sshd", resolver("debian12"))
    assert one_line_added(text, new) == ADDED
    assert "#session    required     pam_loginuid.so\n" in new
    after = new.split(ADDED)[1]
    assert after.startswith("# Create a new session keyring.\nsession    optional     pam_keyinit.so")
    assert pam.commented_out(text) == [22]


def test_an_optional_line_in_the_file_itself_stays_and_a_required_one_goes_before_it():
    text = ("#%PAM-1.0\nauth\tinclude\t\tsystem-auth\n"
            "session\toptional\tpam_loginuid.so\nsession\tinclude\t\tsystem-auth\n")
    new = pam.ensure_loginuid(text, "crond")
    assert one_line_added(text, new) == f"session\trequired\tpam_loginuid.so  {pam.TAG}\n"  # tabs, as the file
    assert new.index("required\tpam_loginuid") < new.index("optional\tpam_loginuid")


def test_debian_atd_without_its_line_gets_it_before_common_session_noninteractive():
    text = files("debian12")["atd"].replace("session    required   pam_loginuid.so\n", "")
    for resolve in (resolver("debian12"), None):  # without files to read: the include's name says "session"
        new = pam.ensure_loginuid(text, "atd", resolve)
        assert one_line_added(text, new) == ADDED
        assert ADDED + "@include common-session-noninteractive" in new


def test_after_leading_selinux_close_and_a_final_newline_added_when_last():
    text = "auth required pam_unix.so\nsession required pam_selinux.so close"
    new = pam.ensure_loginuid(text, "svc")
    assert new == "auth required pam_unix.so\nsession required pam_selinux.so close\n" + ADDED


def test_a_file_without_session_entries_is_refused_other_would_be_replaced():
    with pytest.raises(pam.PamError, match=r"^svc: no session entries of its own: PAM takes its session stack "
                                           r"from /etc/pam.d/other"):
        pam.ensure_loginuid("auth required pam_unix.so\naccount required pam_unix.so\n", "svc")


@pytest.mark.parametrize("service", ["su", "su-l", "sudo", "sudo-i", "runuser", "runuser-l", "sudo-rs", "doas"])
def test_su_and_sudo_are_refused(service):
    text = files("debian12").get(service, "session required pam_unix.so\n")
    with pytest.raises(pam.PamError, match=rf"^{service}: pam_loginuid must never be set for su/sudo"):
        pam.ensure_loginuid(text, service)


def test_missing_include_and_include_loop_are_one_line_each():
    with pytest.raises(pam.PamError, match=r"^sshd:6: includes system-remote-login, which does not exist"):
        pam.has_loginuid(files("gentoo")["sshd"], {}.get, "sshd")
    loop = {"a": "session include b\n", "b": "session include a\n"}
    with pytest.raises(pam.PamError, match=r"includes nest deeper than 16"):
        pam.has_loginuid(loop["a"], loop.get, "a")


def test_substack_counts_like_include():
    texts = {"system-auth": "session required pam_loginuid.so\n"}
    assert pam.has_loginuid("session\tsubstack\t\tsystem-auth\n", texts.get, "svc")
    assert not pam.has_loginuid("auth\tsubstack\t\tsystem-auth\n", texts.get, "svc")


@pytest.mark.parametrize("text, reason", [
    ("session required pam_unix.so", "no newline at the end"),
    ("session required pam_unix.so\nsesion required pam_loginuid.so\n", "x:2: 'sesion' is not a PAM type"),
    ("session required pam_unix.so\n", "no enforcing pam_loginuid.so"),
    ("session optional pam_loginuid.so\n", "no enforcing pam_loginuid.so"),
])
def test_validator_refuses_malformed_or_unfinished_output(text, reason):
    with pytest.raises(pam.PamError, match=reason):
        pam.loginuid_validator("x")(text)


def test_config_refuses_su_and_sudo_by_key():
    image = load_section("guard", {"images": [{"name": "web"}]}).images[0]
    assert (image.loginuid.enabled, image.loginuid.services) == (True, ["sshd", "crond", "atd"])
    with pytest.raises(ConfigError, match=r"^guard.images\[0\].loginuid.services\[1\]: sudo-i: loginuid must "
                                          r"never be set there"):
        load_section("guard", {"images": [{"name": "web", "loginuid": {"services": ["sshd", "sudo-i"]}}]})
    with pytest.raises(ConfigError, match=r"^guard.images\[0\].loginuid.services\[0\]: '../su' is not a PAM"):
        load_section("guard", {"images": [{"name": "web", "loginuid": {"services": ["../su"]}}]})


@pytest.mark.parametrize("text, value", [("4294967295\n", None), ("-1", None), ("0\n", 0), ("1000", 1000)])
def test_parse_loginuid(text, value):
    assert parse_loginuid(text) == value


def test_parse_loginuid_refuses_junk():
    with pytest.raises(OrchestratorError, match="is not a uid"):
        parse_loginuid("root")


# --- on a host, through a real sshd -------------------------------------------------------------


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def real_pam_d_untouched():
    before = tree_digest(Path("/etc/pam.d"))
    yield
    assert tree_digest(Path("/etc/pam.d")) == before


def host_root(tmp_path: Path, distro: str, module: bool = True) -> Path:
    root = tmp_path / "host"
    shutil.copytree(CORPUS / distro, root / "etc/pam.d", ignore=shutil.ignore_patterns("README.md"))
    if module:
        lib = root / ("usr/lib/x86_64-linux-gnu/security" if distro == "debian12" else "lib64/security")
        lib.mkdir(parents=True)
        (lib / "pam_loginuid.so").write_bytes(b"")
    return root


def remote(server, **kwargs) -> RemoteTarget:
    return RemoteTarget(server.host, user=server.user, port=server.port, key_filename=server.key_filename,
                        known_hosts=server.known_hosts, **kwargs)


@pytest.mark.usefixtures("every_session_ends")
def test_gentoo_host_fixed_once_previous_kept_rerun_changes_nothing(sshd, tmp_path):
    root = host_root(tmp_path, "gentoo")
    pam_d = root / "etc/pam.d"
    old = {name: (pam_d / name).read_text() for name in ("sshd", "crond", "atd")}
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd", "crond", "atd"], root=str(root))
        assert [(s.service, s.status) for s in result.services] == [
            ("sshd", "added"), ("crond", "present"), ("atd", "added")]
        assert result.ok and result.changed == [str(pam_d / "sshd"), str(pam_d / "atd")]
        assert "only optional in sshd -> system-remote-login -> system-login:8" in result.services[0].message
        for name in ("sshd", "atd"):
            assert one_line_added(old[name], (pam_d / name).read_text()) == ADDED
            assert (pam_d / f".{name}.previous").read_text() == old[name]
        assert (pam_d / "crond").read_text() == old["crond"] and not (pam_d / ".crond.previous").exists()
        assert result.warnings == []
        fixed = {name: (pam_d / name).stat().st_mtime_ns for name in ("sshd", "atd")}
        again = check_and_fix_loginuid(target, ["sshd", "crond", "atd"], root=str(root))
    assert [s.status for s in again.services] == ["present"] * 3 and again.changed == []
    assert {name: (pam_d / name).stat().st_mtime_ns for name in ("sshd", "atd")} == fixed
    assert again.summary() == "loginuid: sshd present, crond present, atd present"


@pytest.mark.usefixtures("every_session_ends")
def test_dry_run_prints_the_diff_and_writes_nothing(sshd, tmp_path):
    root = host_root(tmp_path, "gentoo")
    before = tree_digest(root)
    lines: list[str] = []
    with remote(sshd, dry=True, echo=lines.append) as target:
        result = check_and_fix_loginuid(target, ["sshd", "crond", "atd"], root=str(root))
    assert [s.status for s in result.services] == ["would-add", "present", "would-add"]
    assert tree_digest(root) == before
    assert f"+{ADDED.rstrip()}" in lines
    assert any(line.endswith(f"replace {root}/etc/pam.d/sshd") for line in lines)


@pytest.mark.usefixtures("every_session_ends")
def test_debian_host_needs_nothing_missing_file_reported_not_created(sshd, tmp_path):
    root = host_root(tmp_path, "debian12")
    (root / "etc/pam.d/atd").unlink()
    before = tree_digest(root)
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd", "cron", "atd"], root=str(root))
    assert [(s.service, s.status) for s in result.services] == [
        ("sshd", "present"), ("cron", "present"), ("atd", "missing-file")]
    assert result.ok and tree_digest(root) == before
    assert result.as_dict()["services"]["atd"]["message"] == f"no {root}/etc/pam.d/atd: not installed; nothing created"


@pytest.mark.usefixtures("every_session_ends")
def test_no_module_on_the_host_no_required_line(sshd, tmp_path):
    root = host_root(tmp_path, "gentoo", module=False)
    before = tree_digest(root)
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd"], root=str(root))
    assert [s.status for s in result.services] == ["no-module"] and not result.ok
    assert tree_digest(root) == before


@pytest.mark.usefixtures("every_session_ends")
def test_sudo_with_loginuid_is_warned_about_never_edited_and_refused_as_a_service(sshd, tmp_path):
    root = host_root(tmp_path, "debian12")
    sudo = root / "etc/pam.d/sudo"
    sudo.write_text(sudo.read_text() + "session    required   pam_loginuid.so\n")
    before = tree_digest(root)
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd", "sudo"], root=str(root))
    assert [s.status for s in result.services] == ["present", "failed"]
    assert result.warnings == [f"{sudo}: runs pam_loginuid (required in sudo:9): sudo would overwrite the login "
                               "uid; remove it by hand (harden never edits it)"]
    assert tree_digest(root) == before


@pytest.mark.usefixtures("every_session_ends")
def test_malformed_file_fails_that_service_only(sshd, tmp_path):
    root = host_root(tmp_path, "gentoo")
    (root / "etc/pam.d/atd").write_text("session mandatory pam_unix.so\n")
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd", "atd"], root=str(root))
    assert [s.status for s in result.services] == ["added", "failed"]
    assert result.services[1].message == "atd:1: 'mandatory' is not a PAM control (required, requisite, " \
                                         "sufficient, optional, include, substack or [value=action])"


@pytest.mark.usefixtures("every_session_ends")
def test_undo_puts_the_old_files_back(sshd, tmp_path):
    root = host_root(tmp_path, "gentoo")
    old = (root / "etc/pam.d/sshd").read_text()
    with remote(sshd) as target:
        result = check_and_fix_loginuid(target, ["sshd"], root=str(root))
        assert undo_loginuid(target, result) == [f"{root}/etc/pam.d/sshd"]
    assert (root / "etc/pam.d/sshd").read_text() == old


@pytest.mark.usefixtures("every_session_ends")
def test_loginuid_over_ssh_reports_what_the_session_has(sshd):
    """The test sshd runs with ``UsePAM no``: its sessions inherit the listener's login uid, which is this
    process's (unset on a build box started by init, set when started from a login)."""
    expected = parse_loginuid(Path("/proc/self/loginuid").read_text())
    with remote(sshd) as target:
        assert loginuid_over_ssh(target) == expected
