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
import socket
from pathlib import Path

import pytest

from children import wait_until
from harden_lab import LabHost, lab_host
from orchestrator.job import execute
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
    with lab_host(tmp_path) as host:
        yield host


def test_a_knockd_image_is_kept_after_a_new_connection_through_the_knock(tmp_path, lab):
    cfg = config(tmp_path, {"web1": lab}, [lab.image("web", ["web1"])])
    code, output, report = run_harden(cfg, ["web1"])
    assert code == 0, output
    host = report["summary"]["hosts"]["web1"]
    assert host["status"] == "hardened" and "kept and saved for boot" in host["message"]
    assert set(host["jails"]) == {"sshd", "recidive"} and host["jails"]["sshd"]["currently_banned"] == 0
    saved = lab.path(r.RULES_V4).read_text()
    live = lab.net.ns("iptables-save").stdout
    assert ":INPUT DROP" in live and "-j guard-knock" in live and saved.startswith("# ")
    assert lab.path(r.KNOCKD_CONF).stat().st_mode & 0o777 == 0o600
    assert lab.path("/etc/runlevels/default/knock").is_symlink()
    assert {p.name for p in lab.path("/etc/runlevels/default").iterdir()} == {
        "knock", "fail2ban", "iptables", "ip6tables"}
    close_the_knock(cfg, "web1", lab)
    assert new_connection_refused(lab)
