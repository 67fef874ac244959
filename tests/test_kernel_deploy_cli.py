"""``inv deploy-kernel``, ``inv rollback-kernel`` and ``inv bootcfg`` end to end: the real ``inv`` CLI in a
subprocess, a site yaml whose ``fleet.hosts`` are two instance roots behind two real sshd on loopback, EC2
through a moto server.

What cannot exist here: a real reboot. ``kernel.deploy.reboot_command`` is deploy_lab's ``lab_reboot``: the
sshd port the command arrives on names the host's root, and GRUB 2 is played on it (next_entry once, else
saved_entry). grub-mkconfig is not run (the roots are not /).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from children import finished
from conftest import Site
from deploy_lab import NEW, OLD, lab_reboot, make_root, publish_set, tree
from moto_server import FAKE_CREDENTIALS, running_moto
from sshd import SshServer, free_port, running_sshd

pytestmark = pytest.mark.timeout(300)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sshd_a(tmp_path_factory) -> SshServer:
    with running_sshd(tmp_path_factory.mktemp("sshd-a")) as server:
        yield server


@pytest.fixture(scope="module")
def sshd_b(tmp_path_factory) -> SshServer:
    with running_sshd(tmp_path_factory.mktemp("sshd-b")) as server:
        yield server


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


def entry(sshd: SshServer, name: str, root: Path, **more) -> dict:
    return {"name": name, "host": sshd.host, "port": sshd.port, "key_filename": sshd.key_filename,
            "known_hosts": sshd.known_hosts, "root": str(root), "groups": ["web"], **more}


@pytest.fixture
def fleet(site: Site, sshd_a, sshd_b, moto, tmp_path):
    """web1 behind sshd_a, web2 behind sshd_b, each its own instance root (grub2, OLD running); NEW published."""
    out = tmp_path / "out"
    publish_set(out, "web", NEW, tmp_path)
    roots = {"web1": make_root(tmp_path / "web1"), "web2": make_root(tmp_path / "web2")}
    site.set("fleet", {"hosts": [entry(sshd_a, "web1", roots["web1"]), entry(sshd_b, "web2", roots["web2"])]})
    site.set("kernel", {"images": [{"name": "web", "source": {"path": str(tmp_path)}}], "output_dir": str(out),
                        "deploy": {"boot_timeout": 20, "reboot_command": lab_reboot(
                            tmp_path, {sshd_a.port: roots["web1"], sshd_b.port: roots["web2"]})}})
    site.set("ec2", {"region": "us-east-1", "endpoint_url": moto.endpoint_url, "poll_seconds": 0})
    return roots


def inv(site: Site, tmp_path: Path, *args: str):
    config = tmp_path / "inv" / "site.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump(site.config))
    return finished([sys.executable, "-m", "invoke", "-f", str(config), *args], what=f"inv {' '.join(args)}",
                    out_dir=tmp_path / "inv", cwd=REPO_ROOT, env={**os.environ, **FAKE_CREDENTIALS})


def report(site: Site, job: str) -> dict:
    return json.loads((site.root / f"state/reports/{job}-latest.json").read_text())["summary"]


def running(root: Path) -> str:
    return (root / "proc/sys/kernel/osrelease").read_text().strip()


def test_deploy_arms_then_rollback_then_reboot_proves(site: Site, fleet, tmp_path):
    done = inv(site, tmp_path, "deploy-kernel", "web1,web2", "--no-snapshot")
    assert done.returncode == 75, done
    for name in ("web1", "web2"):
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"{name}: armed: installed, armed "
                                                                            "for one boot")]
        assert len(lines) == 1 and lines[0].endswith(f"({OLD} -> {NEW})"), done.stdout
        assert (fleet[name] / f"boot/vmlinuz-{NEW}").is_file()
    assert "not proven booted" in done.stderr
    hosts = report(site, "deploy-kernel")["hosts"]
    assert {name: hosts[name]["status"] for name in ("web1", "web2")} == {"web1": "armed", "web2": "armed"}

    done = inv(site, tmp_path, "rollback-kernel", "web1")
    assert done.returncode == 0, done
    assert "web1: default is gnulinux-advanced-x>gnulinux-6.1.0-old-advanced-x again" in done.stdout
    assert not (fleet["web1"] / f"boot/vmlinuz-{NEW}").exists() and (fleet["web2"] / f"boot/vmlinuz-{NEW}").exists()

    # web1's guard image wants its audit rules immutable: -e 2 is written right before the reboot, for that boot
    site.set("guard", {"images": [{"name": "web", "hosts": ["web1"], "guard": "none",
                                   "audit": {"enabled": True, "immutable": True}}],
                       "secrets_file": str(tmp_path / "secrets.json")})
    done = inv(site, tmp_path, "deploy-kernel", "@web", "--no-snapshot", "--reboot")
    assert done.returncode == 0, done
    finalize = fleet["web1"] / "etc/audit/rules.d/99-finalize.rules"
    assert "\n-e 2\n" in "\n" + finalize.read_text() and f"web1: audit: {finalize} (-e 2) written" in done.stdout
    assert not (fleet["web2"] / "etc/audit").exists()
    for name in ("web1", "web2"):
        assert f"{name}: deployed: deployed: booted {NEW} ({OLD} -> {NEW})" in done.stdout.splitlines(), done.stdout
        assert running(fleet[name]) == NEW
    hosts = report(site, "deploy-kernel")["hosts"]
    assert hosts["web1"]["status"] == hosts["web2"]["status"] == "deployed"
    assert report(site, "deploy-kernel")["deployed"] == 2


def test_one_host_unreachable_the_other_is_still_done_exit_1(site: Site, fleet, tmp_path):
    gone = free_port()
    site.config["fleet"]["hosts"][1]["port"] = gone
    done = inv(site, tmp_path, "deploy-kernel", "web1,web2", "--no-snapshot")
    assert done.returncode == 1, done
    assert any(line.startswith("web1: armed: installed, armed for one boot") for line in done.stdout.splitlines())
    assert (fleet["web1"] / f"boot/vmlinuz-{NEW}").is_file() and not (fleet["web2"] / f"boot/vmlinuz-{NEW}").exists()
    assert "deploy-kernel: failed on web2" in done.stderr and "Connection refused" in done.stderr, done.stderr
    hosts = report(site, "deploy-kernel")["hosts"]
    assert hosts["web1"]["status"] == "armed" and hosts["web2"]["status"] == "failed"
    assert "Connection refused" in hosts["web2"]["message"]


def test_dry_deploy_changes_nothing_and_lists_every_command_diff_and_aws_call(site: Site, fleet, moto, tmp_path):
    client = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    image = client.describe_images()["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in client.run_instances(ImageId=image, MinCount=2, MaxCount=2)["Instances"]]
    tag = fleet["web1"] / "sys/devices/virtual/dmi/id/board_asset_tag"  # web1's id: learnt from the host
    tag.parent.mkdir(parents=True)
    tag.write_text(ids[0] + "\n")
    site.config["fleet"]["hosts"][1]["instance_id"] = ids[1]  # web2's: from the config
    before = {name: tree(root) for name, root in fleet.items()}
    snapshots = len(client.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    done = inv(site, tmp_path, "--dry", "deploy-kernel", "web1,web2")
    assert done.returncode == 0, done
    assert {name: tree(root) for name, root in fleet.items()} == before
    assert len(client.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == snapshots
    text = done.stdout
    for iid in ids:
        volume = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
            "BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert f"[dry-run] ec2 CreateSnapshot VolumeId={volume}" in text, text
    for name in ("web1", "web2"):
        assert f"put {tmp_path}/out/kernels/web/{NEW}/vmlinuz" in text
        assert f"{fleet[name]}/lib/modules/.{NEW}.new" in text  # the modules unpack, as a command
        assert f"+++ {fleet[name]}/etc/default/grub" in text or f"{fleet[name]}/etc/default/grub" in text
    assert text.count("+GRUB_DEFAULT=saved") == 2 and text.count("+next_entry=") == 2
    assert "armed_not_proven: 2" in text and not (site.root / "state/reports").exists()  # --dry writes no report


def test_bootcfg_root_dry_prints_the_diff_and_changes_nothing(site: Site, tmp_path):
    root = make_root(tmp_path / "image")
    before = tree(root)
    done = inv(site, tmp_path, "bootcfg", "--root", str(root), "--to", "xvd", "--dry")
    assert done.returncode == 0, done
    assert "-/dev/sda1\t/\text4\tnoatime\t0 1" in done.stdout and "+/dev/xvda1\t/\text4\tnoatime\t0 1" in done.stdout
    assert f"would change: {root}/etc/fstab" in done.stdout
    assert tree(root) == before
