"""``inv harden`` for real: hosts are sshds in throwaway network namespaces with private copies of /etc,
/var/lib, /var/log and /run (``harden_lab``); knockd, fwknopd and fail2ban run there for real, the firewall
is the namespace's, and every new connection comes from this process through the knock (or SPA packet).

Never this machine's firewall, files or services: the namespaces, their daemons and their overlays go
after each test (``netns_lab`` kills every process in a namespace before deleting it).
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import sys
from contextlib import closing
from pathlib import Path

import pytest

from children import finished, no_sshd_session_left, wait_until
from harden_lab import RSYSLOG_CONF, LabHost, lab_host
from logs_lab import MariaDB
from orchestrator.faults import ENV as CRASH_ENV
from orchestrator.faults import HARDEN_POINTS
from orchestrator.job import execute
from orchestrator.logs import setup as logs_setup
from orchestrator.security import access, harden, render as r
from orchestrator.security.deadman import normalised


def config(tmp: Path, hosts: dict[str, LabHost], images: list[dict]) -> dict:
    return {
        "orchestrator": {"state_dir": str(tmp / "state"), "progress": "plain"},
        "fleet": {"hosts": [lab.fleet_entry(name) for name, lab in hosts.items()], "parallel": 8},
        "guard": {"images": images, "secrets_file": str(tmp / "secrets.json")},
    }


def run_harden(cfg: dict, words=(), image=None, dry=False) -> tuple[int, str, dict]:
    out = io.StringIO()
    cfg = copy.deepcopy(cfg)
    cfg["run"] = {"dry": dry}
    code = execute(cfg, "harden", lambda run: harden.harden(run, list(words), image), out=out)
    latest = Path(cfg["orchestrator"]["state_dir"]) / "reports/harden-latest.json"
    report = json.loads(latest.read_text()) if latest.exists() else {}
    return code, out.getvalue(), report


def close_the_knock(cfg: dict, name: str, lab: LabHost) -> None:
    """``inv knock HOST --close``, then wait until knockd has taken our ACCEPT out again."""
    assert execute(copy.deepcopy(cfg), "knock", access.knock_job(name, True), locked=False, out=io.StringIO()) == 0
    wait_until(lambda: "-A guard-knock" not in lab.net.ns("iptables", "-S", "guard-knock").stdout,
               "knockd's close command did not remove the knocker's rule")


def new_connection_refused(lab: LabHost) -> bool:
    """A fresh TCP connection to sshd, no knock first: dropped (times out) by the default-drop rules."""
    try:
        socket.create_connection((lab.net.server.host, lab.net.server.port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def lab(tmp_path):
    """One host to harden; after the test, every SSH connection harden opened to it is closed."""
    with lab_host(tmp_path) as host:
        yield host
        no_sshd_session_left(host.net.server)


def test_a_knockd_image_is_kept_after_a_new_connection_through_the_knock(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"])])
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 0, output
    host = report["summary"]["hosts"]["web1"]
    assert host["status"] == "hardened" and "kept and saved for boot" in host["message"]
    assert set(host["jails"]) == {"sshd", "recidive"} and host["jails"]["sshd"]["currently_banned"] == 0
    # Debian's sshd and cron stacks have pam_loginuid; no atd here; the lab's sshd runs without PAM
    assert host["loginuid"]["services"]["sshd"]["status"] == "present"
    assert host["loginuid"]["services"]["atd"]["status"] == "missing-file" and host["loginuid"]["over_ssh"] == "unset"
    assert any("loginuid is unset over SSH" in w for w in report["warnings"])
    saved = lab.path(r.RULES_V4).read_text()
    live = lab.net.ns("iptables-save").stdout
    assert ":INPUT DROP" in live and "-j guard-knock" in live and saved.startswith("# ")
    assert lab.path(r.KNOCKD_CONF).stat().st_mode & 0o777 == 0o600
    assert lab.path("/etc/runlevels/default/knock").is_symlink()
    assert {p.name for p in lab.path("/etc/runlevels/default").iterdir()} == {
        "knock", "fail2ban", "iptables", "ip6tables"}
    close_the_knock(cfg, "web1", lab)
    assert new_connection_refused(lab)


def secrets_in(tmp: Path, image_name: str) -> list[str]:
    """Every secret of the image as it could leak: each sequence as knockd writes it, each key."""
    store = json.loads((tmp / "secrets.json").read_text())["images"][image_name]
    words = [store["spa_key"], store["hmac_key"]]
    for seq in [store["open"], store["close"], *store.get("one_time", [])]:
        words.append(",".join(seq))
    return words


def leaked(tmp: Path, image_name: str, *texts: str) -> list[str]:
    everything = "".join(texts) + "".join(p.read_text() for p in (tmp / "state").rglob("*.json"))
    return [word for word in secrets_in(tmp, image_name) if word in everything]


def test_a_second_run_gets_in_by_knocking_changes_nothing_and_proves_the_way_in_again(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"])])
    assert run_harden(cfg, ["web1"])[0] == 0
    saved = lab.path(r.RULES_V4).read_text()
    close_the_knock(cfg, "web1", lab)  # the host is shut to us again: the rerun's own first connection knocks
    assert new_connection_refused(lab)
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 0, output
    host = report["summary"]["hosts"]["web1"]
    assert host["status"] == "unchanged" and "changed" not in host and "confirmed over a new connection" in output
    assert lab.path(r.RULES_V4).read_text() == saved and report["summary"]["unchanged"] == 1
    assert not leaked(tmp_path, "web", output)


def test_a_rule_set_that_shuts_the_admin_out_is_undone_by_the_host_and_a_good_host_is_kept(tmp_path):
    """Two hosts at once: web1 (nftables, one-time knocks) is kept; web2's image protects a port its sshd does
    not listen on, so no new connection gets in: web2 puts back its old rules AND knockd's old files by itself."""
    gentoo = {f"/etc/pam.d/{p.name}": p.read_text() for p in (Path(__file__).parent / "pam_corpus/gentoo").iterdir()}
    gentoo_sshd = gentoo["/etc/pam.d/sshd"]  # its stack has pam_loginuid only as optional (pambase)
    with lab_host(tmp_path / "a", gentoo) as good, lab_host(tmp_path / "b", gentoo) as bad:
        bad.net.ns("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
        before = {tool: bad.net.ns(f"{tool}-save").stdout for tool in ("iptables", "ip6tables")}
        images = [good.image("web", ["web1"], knock={"one_time": True, "one_time_count": 8},
                             firewall={"backend": "nftables", "confirm_window": 8}),
                  {**bad.image("shut", ["web2"]), "ssh_port": 2200}]
        cfg = config(tmp_path, {"web1": good, "web2": bad}, images)
        code, output, report = run_harden(cfg, ["web1", "web2"])
        hosts = report["summary"]["hosts"]
        assert code == 1 and "harden: reverted on web2 (the old rules and files are back, proven)" in output
        assert hosts["web1"]["status"] == "hardened" and hosts["web2"]["status"] == "reverted"
        assert "the host restored the old rules" in hosts["web2"]["message"]
        for tool, text in before.items():
            assert normalised(tool, bad.net.ns(f"{tool}-save").stdout) == normalised(tool, text)
        assert bad.path(r.KNOCKD_CONF).read_text() == Path(r.KNOCKD_CONF).read_text()  # the package's, back
        assert bad.path("/etc/pam.d/sshd").read_text() == gentoo_sshd  # pam_loginuid was added, then undone
        assert re.search(r"^session +required +pam_loginuid.so", good.path("/etc/pam.d/sshd").read_text(), re.M)
        assert "/etc/pam.d/sshd" in hosts["web1"]["changed"]
        assert not bad.path(r.RULES_V4).exists() and not bad.path("/run/lab-knock.pid").exists()
        assert "table inet guard" in good.net.ns("nft", "list", "ruleset").stdout
        assert good.path("/etc/runlevels/default/nftables").is_symlink()
        store = json.loads((tmp_path / "secrets.json").read_text())["images"]["web"]
        on_host = good.path("/etc/knockd/one_time_sequences").read_text().splitlines()
        # harden's way in, the new connection that confirms, the one that reads the login uid back
        assert "one_time_on_host" not in store and len(store["one_time"]) == 5
        assert [line for line in on_host if not line.startswith("#")] == [",".join(s) for s in store["one_time"]]
        assert not leaked(tmp_path, "web", output) and not leaked(tmp_path, "shut", output)
        no_sshd_session_left(good.net.server)
        no_sshd_session_left(bad.net.server)


def test_an_fwknop_image_is_kept_after_one_spa_packet(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("spa", ["web1"], guard="fwknop")])
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 0, output
    assert report["summary"]["hosts"]["web1"]["status"] == "hardened"
    assert "-A INPUT -j FWKNOP_INPUT" in lab.net.ns("iptables-save").stdout
    assert lab.path(r.ACCESS_CONF).stat().st_mode & 0o777 == 0o600
    assert lab.path("/etc/runlevels/default/fwknopd").is_symlink()
    assert not leaked(tmp_path, "spa", output)


def test_dry_run_shows_the_diffs_but_never_a_secret_and_changes_nothing(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"])])
    rules_before = lab.net.ns("iptables-save").stdout
    code, output, _ = run_harden(cfg, ["web1"], dry=True)
    assert code == 0, output
    assert "web1: planned (image web): dry run: nothing changed" in output
    assert f"replace {r.KNOCKD_CONF} (it holds secrets: no diff shown)" in output
    assert f"replace {r.RULES_V4}\n" in output and "+:INPUT DROP [0:0]" in output
    assert "arm: sh " in output and "confirm over a new connection" in output
    assert lab.net.ns("iptables-save").stdout == rules_before
    assert not any(p.is_file() for p in (lab.path("/etc"), lab.path("/var/lib")) for p in p.rglob("*"))
    assert not (tmp_path / "secrets.json").exists()  # not even the secrets are saved under --dry


def test_a_host_without_what_the_image_needs_is_one_line_and_untouched(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [{**lab.image("web", ["web1"]), "interface": "nosuch0"}])
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 1
    assert "web1: cannot harden with image web: no interface nosuch0" in output
    assert not lab.path(r.KNOCKD_CONF).exists() and "DROP" not in lab.net.ns("iptables-save").stdout


def test_a_one_time_image_of_two_hosts_is_refused_in_one_line(tmp_path):
    cfg = {"orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
           "fleet": {"hosts": [{"name": f"web{i}", "host": f"192.0.2.{i}", "groups": ["web"]} for i in (1, 2)]},
           "guard": {"images": [{"name": "web", "hosts": ["@web"], "knock": {"one_time": True}}],
                     "secrets_file": str(tmp_path / "s.json")}}
    code, output, _ = run_harden(cfg, image="web")
    assert code == 2 and output.strip().splitlines()[-1] == (
        "error: guard.images[0].knock.one_time: image web has 2 hosts; each host's knockd uses up its own list, "
        "so a one-time image holds one host")


@pytest.mark.parametrize("words, image, message", [
    ([], None, "--hosts or --image: name the hosts to harden"),
    (["web1"], "web", "--image and --hosts: choose hosts one way, not both"),
    (["web2"], None, "guard.images: host 'web2' is in no image's hosts; add it to one"),
    ([], "nosuch", "--image: no image 'nosuch' in guard.images (web)"),
    (["@db"], None, "--hosts: no group '@db' in fleet.hosts"),
])
def test_bad_choices_are_one_line_exit_2(tmp_path, words, image, message):
    cfg = {"orchestrator": {"state_dir": str(tmp_path / "state"), "progress": "plain"},
           "fleet": {"hosts": [{"name": "web1", "host": "192.0.2.1"}, {"name": "web2", "host": "192.0.2.2"}]},
           "guard": {"images": [{"name": "web", "hosts": ["web1"]}], "secrets_file": str(tmp_path / "s.json")}}
    code, output, _ = run_harden(cfg, words, image)
    assert code == 2 and output.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not (tmp_path / "s.json").exists()


def harden_killed_at(tmp: Path, cfg: dict, point: str) -> None:
    spec = tmp / "harden-config.json"
    spec.write_text(json.dumps(cfg))
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = [sys.executable, str(Path(__file__).with_name("harden_child.py")), str(spec), "web1"]
    done = finished(child, what=f"harden killed at {point}", out_dir=tmp / "child", env=env)
    assert done.returncode == -9, done


def host_jobs(lab: LabHost) -> list[Path]:
    return sorted(p for p in lab.path("/var/lib/gentoo-ec2-orchestrator/guard").iterdir() if p.is_dir())


@pytest.mark.parametrize("point", HARDEN_POINTS)
def test_kill_9_at_each_harden_point_is_undone_or_finished_by_the_rerun(tmp_path, lab, point):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"])])
    harden_killed_at(tmp_path, cfg, point)
    (job,) = host_jobs(lab)
    if point == "deadman-prepared":  # knockd's new files went up under the armed revert: it undoes them
        wait_until(lambda: (job / "outcome").exists(), "the host's revert did not decide", timeout=30)
        assert (job / "outcome").read_text().startswith("reverted")
        assert lab.path(r.KNOCKD_CONF).read_text() == Path(r.KNOCKD_CONF).read_text()
        assert not lab.path("/run/lab-knock.pid").exists()
    else:  # kept, but not yet saved for boot
        assert os.readlink(job / "decision") == "confirmed" and not lab.path(r.RULES_V4).exists()
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 0, output
    assert report["summary"]["hosts"]["web1"]["status"] == "hardened" and lab.path(r.RULES_V4).exists()
    assert all((path / "outcome").exists() for path in host_jobs(lab))


def test_services_are_the_init_systems_own_commands_with_gentoos_names(tmp_path):
    from orchestrator.config import load_section
    image = load_section("guard", {"images": [{"name": "web", "services": {"fail2ban": "fail2ban-ssh"}}]}).images[0]
    openrc, systemd = harden.Services("openrc", image), harden.Services("systemd", image)
    assert openrc.restart("knockd") == ["rc-service", "knock", "restart"]
    assert openrc.enable("iptables") == ["rc-update", "add", "iptables", "default"]
    assert openrc.status("fail2ban") == ["fail2ban-client", "ping"]
    assert systemd.restart("fail2ban") == ["systemctl", "restart", "fail2ban-ssh"]
    assert systemd.enable("nft") == ["systemctl", "enable", "--quiet", "nftables-restore"]
    assert systemd.status("knockd") == ["systemctl", "is-active", "--quiet", "knockd"]


@pytest.mark.parametrize("locked", [False, True], ids=["loaded", "locked"])
def test_audit_rules_are_loaded_and_counted_or_left_for_the_next_boot(tmp_path, locked):
    """The lab's augenrules/auditctl stand in for the kernel's audit (never this machine's: see harden_lab)."""
    early = {"/etc/audit/rules.d/70-everything.rules": "-a always,exit -F arch=b64 -S all -F auid=7005 -k x\n"}
    if locked:
        early["/run/lab-audit-locked"] = ""
    with lab_host(tmp_path, early) as lab:
        cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"], audit={"enabled": True})])
        code, output, report = run_harden(cfg, ["web1"])
        host = report["summary"]["hosts"]["web1"]
        rules = sorted(p.name for p in lab.path("/etc/audit/rules.d").iterdir() if not p.name.startswith("."))
        assert rules == ["10-base-config.rules", "30-main.rules", "31-privileged.rules", "40-exec.rules"]
        if locked:
            assert code == 75 and host["status"] == "pending" and host["audit"]["loaded"] == "locked (-e 2)"
            assert "they load at the next boot; everything else is kept" in output
        else:
            assert code == 0, output
            assert host["audit"]["loaded"] == host["audit"]["expected"] > 10
            loaded = lab.path("/run/lab-audit.loaded").read_text()
            assert "-S execve" in loaded and "auid=7005" not in loaded  # the stale everything rule went
        no_sshd_session_left(lab.net.server)


def test_syslog_is_proven_by_a_row_on_the_log_server(tmp_path):
    """A real MariaDB on this box's end of the lab's veth pair, inv logs.setup, then harden: the host's real
    rsyslogd gets our snippet and its password file, and a line logged there must become a row."""
    host_files = {"/etc/rsyslog.conf": RSYSLOG_CONF, "/etc/rsyslog.d/mysql.conf": "# not on a Gentoo host\n"}
    with lab_host(tmp_path, host_files) as lab, closing(MariaDB(tmp_path / "db", bind=lab.net.peer).up()) as db:
        syslog = {"enabled": True, "server": lab.net.peer, "port": db.port, "resume_interval": 1}
        cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"], syslog=syslog)])
        cfg["logs"] = {"socket": str(db.socket)}
        assert execute(copy.deepcopy(cfg), "logs-setup", logs_setup.setup, out=io.StringIO()) == 0
        code, output, report = run_harden(cfg, ["web1"])
        assert code == 0, output
        host = report["summary"]["hosts"]["web1"]
        assert "syslog: a test line reached Syslog.SystemEvents (1 row)" in host["message"]
        assert lab.path("/etc/rsyslog-ommysql.pwd").stat().st_mode & 0o777 == 0o600
        assert db.count("SysLogTag LIKE 'inv-harden%'") == 1
        password = json.loads((tmp_path / "state/logs/passwords.json").read_text())["users"]["syslog_web"]
        assert password not in output + "".join(p.read_text() for p in (tmp_path / "state").rglob("*.json")
                                                 if p.name != "passwords.json")
        no_sshd_session_left(lab.net.server)
