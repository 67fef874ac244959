"""``inv fleet.check`` and ``fleet.facts.gather`` against the real sshd: each host's root is a temp dir with a
fake boot/grub, etc/fstab, etc/os-release and sys/ (NVMe serials, the DMI asset tag)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from children import finished
from conftest import Site
from orchestrator.config import load_section
from orchestrator.fleet import connect
from orchestrator.fleet.facts import HostFacts, gather, parse
from sshd import SshServer, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("every_session_ends")]
REPO_ROOT = Path(__file__).resolve().parents[1]
UNAME = os.uname()






def write(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def web_root(tmp_path: Path) -> Path:
    """A Gentoo EC2 instance on NVMe with grub2; its instance id only in the DMI asset tag."""
    root = write(tmp_path / "web1", {
        "boot/grub/grub.cfg": "menuentry 'Gentoo' {}\n",
        "etc/os-release": 'NAME=Gentoo\nPRETTY_NAME="Gentoo Linux"\nID=gentoo\n',
        "etc/fstab": "# /dev/xvda1 / ext4 noatime 0 1\n/dev/nvme0n1p1\t/\text4\tnoatime 0 1\n/dev/nvme1n1 /srv xfs 0 0\n",
        "sys/class/nvme/nvme0/serial": "vol0123456789abcdef0\n",
        "sys/class/nvme/nvme1/serial": "vol0fedcba9876543210\n",
        "sys/class/nvme/nvme2/serial": "\n",  # no serial: left out
        "sys/devices/virtual/dmi/id/board_asset_tag": "i-0a1b2c3d4e5f67890\n",
    })
    for device in ("nvme0/nvme0n1", "nvme1/nvme1n1", "nvme2/nvme2n1"):
        (root / "sys/class/nvme" / device).mkdir()
    return root


def db_root(tmp_path: Path) -> Path:
    """An old Xen instance with legacy grub; its instance id from the config."""
    return write(tmp_path / "db1", {
        "boot/grub/menu.lst": "title Gentoo\n",
        "usr/lib/os-release": "PRETTY_NAME='Gentoo Linux 2.14'\n",
        "etc/fstab": "LABEL=root / ext4 noatime 0 1\n",
        "sys/devices/virtual/dmi/id/board_asset_tag": "not an id\n",
    })


def entry(sshd: SshServer, name: str, root: Path, **settings) -> dict:
    return {"name": name, "host": sshd.host, "port": sshd.port, "key_filename": sshd.key_filename,
            "known_hosts": sshd.known_hosts, "root": str(root), **settings}


WEB1 = HostFacts(UNAME.nodename, UNAME.release, UNAME.machine, "Gentoo Linux", "grub2", "/dev/nvme0n1p1",
                 "i-0a1b2c3d4e5f67890", {"nvme0n1": "vol-0123456789abcdef0", "nvme1n1": "vol-0fedcba9876543210"})
DB1 = HostFacts(UNAME.nodename, UNAME.release, UNAME.machine, "Gentoo Linux 2.14", "grub-legacy", "LABEL=root",
                "i-00000000aaaaaaaa1", {})


def test_gather_reads_every_fact_in_one_round_trip(site: Site, sshd, tmp_path):
    site.set("fleet", {"hosts": [entry(sshd, "web1", web_root(tmp_path)),
                                 entry(sshd, "db1", db_root(tmp_path), instance_id="i-00000000aaaaaaaa1")]})
    cfg = load_section("fleet", site.config["fleet"])
    got = {}

    def body(run):
        for host in cfg.hosts:
            with connect(run, host) as remote:
                got[host.name] = gather(remote, host)

    code, output = site.run("facts", body, dry=True)  # read-only: it runs under --dry too
    assert code == 0, output
    assert got == {"web1": WEB1, "db1": DB1}
    assert WEB1.line() == (f"{UNAME.release} {UNAME.machine} Gentoo Linux, grub2, root /dev/nvme0n1p1, "
                           "i-0a1b2c3d4e5f67890")


def test_a_root_of_slash_is_the_running_system(site: Site, sshd):
    cfg = load_section("fleet", {"hosts": [entry(sshd, "self", Path("/"), instance_id="i-0123456789abcdef0")]})
    site.set("fleet", {"hosts": [entry(sshd, "self", Path("/"), instance_id="i-0123456789abcdef0")]})
    got = {}

    def body(run):
        with connect(run, cfg.hosts[0]) as remote:
            got["facts"] = gather(remote, cfg.hosts[0])

    assert site.run("facts", body)[0] == 0
    mounted = subprocess.run(["findmnt", "-no", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    facts = got["facts"]
    assert (facts.kernel, facts.arch, facts.root_device, facts.instance_id) == (
        UNAME.release, UNAME.machine, mounted, "i-0123456789abcdef0")


def test_parse_refuses_output_without_facts_and_keeps_what_it_knows():
    host = load_section("fleet", {"hosts": [{"name": "h", "host": "x"}]}).hosts[0]
    with pytest.raises(Exception, match=r"^h: the facts script printed nothing usable$"):
        parse("garbage\n", host)
    facts = parse("kernel=6.1\nimds=i-0123456789abcdef0\nnvme=nvme0n1 AWS1234\nos_line=PRETTY_NAME=\"A 'b\n", host)
    assert (facts.instance_id, facts.nvme, facts.os, facts.boot_loader) == (
        "i-0123456789abcdef0", {"nvme0n1": "AWS1234"}, "A 'b", "unknown")


def inv(site: Site, tmp_path: Path, *args: str):
    config = tmp_path / "inv" / "site.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump(site.config))
    return finished([sys.executable, "-m", "invoke", "-f", str(config), *args], what=f"inv {' '.join(args)}",
                    out_dir=tmp_path / "inv", cwd=REPO_ROOT)


def test_inv_fleet_check_prints_a_line_per_host_and_exits_1_when_one_is_unreachable(site: Site, sshd, tmp_path):
    gone = free_port()
    site.set("fleet", {"hosts": [
        entry(sshd, "web1", web_root(tmp_path), groups=["web"]),
        entry(sshd, "db1", db_root(tmp_path), instance_id="i-00000000aaaaaaaa1", groups=["db"]),
        entry(sshd, "web2", tmp_path / "web2", groups=["web"], port=gone),
    ]})
    done = inv(site, tmp_path, "fleet.check", "--hosts", "db1,@web")
    assert done.returncode == 1, done
    assert f"  web1: {WEB1.line()}" in done.stdout.splitlines()
    assert f"  db1: {DB1.line()}" in done.stdout.splitlines()
    why = f"ssh root@127.0.0.1:{gone}: connect failed: Connection refused"
    assert f"  web2: UNREACHABLE: {why}" in done.stdout.splitlines()
    assert done.stderr.endswith(f"error: 1 of 3 host(s) failed to answer: web2: {why}\n"), done.stderr
    report = json.loads((site.root / "state/reports/fleet-check-latest.json").read_text())["summary"]
    assert report["facts"]["web1"]["nvme"] == WEB1.nvme and list(report["facts"]) == ["web1", "db1"]
    assert report["hosts"] == {"web1": "ok", "db1": "ok", "web2": f"FAILED: {why}"}

    done = inv(site, tmp_path, "fleet.check", "--host", "db1")
    assert done.returncode == 0 and f"  db1: {DB1.line()}" in done.stdout.splitlines(), done
    done = inv(site, tmp_path, "fleet.check", "--hosts", "@mail")
    assert (done.returncode, done.stderr) == (2, "error: --hosts: no group '@mail' in fleet.hosts (groups: @web, @db, @all)\n")
