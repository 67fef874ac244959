"""``inv ami`` against a real moto server over HTTP on 127.0.0.1: the CLI end to end, and the job in-process.

moto keeps only Name and Description of ``register_image`` (FIELD-NOTES), so the
request we SENT is captured on each client's ``before-call.ec2.*`` event (the real
client, talking to moto; ``ec2.ec2_client`` is wrapped only to register that hook)
and asserted, never moto's answer. moto completes snapshots at once: waiting for a
pending one is tested in test_ec2.py (Stubber).
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
from pathlib import Path

import pytest

import test_s3_store
from children import finished
from conftest import summary_value
from ec2_lab import Sent, job_run, launch, record
from moto_server import running_moto
from orchestrator import ec2
from orchestrator.errors import EXIT_CONFIG, EXIT_FAILED
from orchestrator.job import execute
from orchestrator.kernel import ami

REPO_ROOT = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).with_name("inv")
aws_env = test_s3_store.aws_env  # the fixture: fake credentials from the environment only


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


class AmiLab:
    """A state dir and an ``ec2`` section pointing at moto; runs ``inv ami`` in-process or as the CLI."""

    def __init__(self, root: Path, moto):
        self.root = root
        self.moto = moto
        self.config = {"orchestrator": {"state_dir": str(root / "state"), "progress": "plain"},
                       "ec2": {"endpoint_url": moto.endpoint_url, "poll_seconds": 0}}
        self.client = ec2.ec2_client(ec2.Ec2Settings(endpoint_url=moto.endpoint_url))
        self.sent = None

    def snapshot(self) -> str:
        """A completed snapshot of a fresh instance's root volume."""
        run, _ = job_run()
        return ec2.snapshot_root(run, self.client, launch(self.client), host="web1", description="lab",
                                 tags={}, wait_timeout=60)

    def run(self, options: ami.AmiOptions, monkeypatch, dry: bool = False, hooks=()) -> tuple[int, str]:
        """The job in-process; every request its clients send is recorded in ``self.sent``; ``hooks`` are
        more (event, handler) pairs for its clients."""
        made = ec2.ec2_client
        self.sent = sent = Sent()

        def recording(*args, **kwargs):
            client = made(*args, **kwargs)
            client.meta.events.register("before-call.ec2", sent)
            for event, handler in hooks:
                client.meta.events.register(event, handler)
            return client

        monkeypatch.setattr(ec2, "ec2_client", recording)
        config = copy.deepcopy(self.config)
        config["run"] = {"dry": dry}
        out = io.StringIO()
        return execute(config, "ami", lambda run: ami.make_ami(run, options), out=out), out.getvalue()

    def inv(self, *args: str):
        site = self.root / "site.json"
        site.write_text(json.dumps(self.config))
        return finished([str(INV), "-f", str(site), "ami", *args], what=f"inv ami {' '.join(args)}",
                        out_dir=self.root / "inv", env=dict(os.environ), cwd=REPO_ROOT)

    def images(self) -> list[dict]:
        return self.client.describe_images(Owners=["self"])["Images"]

    def report(self) -> dict:
        return json.loads((self.root / "state" / "reports" / "ami-latest.json").read_text())


@pytest.fixture
def lab(tmp_path, moto, aws_env):
    moto.reset()
    return AmiLab(tmp_path, moto)


def test_inv_ami_from_a_snapshot_registers_and_reports_the_request(lab):
    snapshot_id = lab.snapshot()
    result = lab.inv("gentoo-web-6.6", "--snapshot", snapshot_id, "--description", "web with 6.6")
    assert result.returncode == 0, result.stderr
    [image] = lab.images()
    assert image["Name"] == "gentoo-web-6.6" and image["State"] == "available"
    assert summary_value(result.stdout, "image") == f"{image['ImageId']} (gentoo-web-6.6)"
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {
        "Name": "gentoo-web-6.6", "gentoo-ec2-orchestrator:source-snapshot": snapshot_id}
    report = lab.report()
    assert report["status"] == "ok" and report["summary"]["request"] == {
        "Name": "gentoo-web-6.6", "Architecture": "x86_64", "VirtualizationType": "hvm", "EnaSupport": True,
        "SriovNetSupport": "simple", "BootMode": "legacy-bios", "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": snapshot_id, "DeleteOnTermination": True, "VolumeType": "gp3"}}],
        "Description": "web with 6.6"}
    assert result.stderr == ""


def test_the_request_sent_follows_the_options_and_ec2_boot_mode(lab, monkeypatch):
    """Asserted on what went over HTTP (moto would answer uefi and no ENA whatever we sent)."""
    snapshot_id = lab.snapshot()
    lab.config["ec2"]["boot_mode"] = "uefi-preferred"
    code, out = lab.run(ami.AmiOptions("gentoo-arm", snapshot=snapshot_id, root_device="/dev/sda1",
                                       architecture="arm64", ena=False), monkeypatch)
    assert code == 0, out
    body = lab.sent.body("RegisterImage")
    assert (body["BootMode"], body["EnaSupport"], body["Architecture"], body["RootDeviceName"],
            body["BlockDeviceMapping.1.DeviceName"], body["BlockDeviceMapping.1.Ebs.SnapshotId"]) == \
        ("uefi-preferred", "false", "arm64", "/dev/sda1", "/dev/sda1", snapshot_id)
    assert lab.sent.changing() == ["RegisterImage", "CreateTags"]
    code, out = lab.run(ami.AmiOptions("gentoo-bios", snapshot=snapshot_id, boot_mode="legacy-bios"), monkeypatch)
    assert code == 0, out
    assert lab.sent.body("RegisterImage")["BootMode"] == "legacy-bios"


def test_dry_prints_each_call_and_changes_nothing(lab):
    snapshot_id = lab.snapshot()
    result = lab.inv("gentoo-web", "--snapshot", snapshot_id, "--dry")
    assert result.returncode == 0, result.stderr
    assert lab.images() == []
    lines = result.stdout.splitlines()
    assert [line.split(" ", 3)[2] for line in lines if line.startswith("[dry-run] ec2 ")] == \
        ["RegisterImage", "CreateTags"]
    assert any(f'"SnapshotId":"{snapshot_id}"' in line and "BootMode=legacy-bios" in line for line in lines)
    assert summary_value(result.stdout, "image") == "ami-DRYRUN (gentoo-web) (dry run: nothing registered)"
    assert not (lab.root / "state" / "reports").exists()


def test_dry_makes_only_describe_calls(lab, monkeypatch):
    snapshot_id = lab.snapshot()
    code, out = lab.run(ami.AmiOptions("gentoo-web", snapshot=snapshot_id), monkeypatch, dry=True)
    assert code == 0, out
    assert lab.sent.names() and all(name.startswith("Describe") for name in lab.sent.names())
    assert lab.images() == []


def test_a_taken_name_is_one_line_and_registers_nothing(lab):
    snapshot_id = lab.snapshot()
    assert lab.inv("gentoo-web", "--snapshot", snapshot_id).returncode == 0
    [first] = lab.images()
    result = lab.inv("gentoo-web", "--snapshot", snapshot_id)
    assert result.returncode == EXIT_FAILED
    assert result.stderr == (f"error: NAME: image name 'gentoo-web' is already used by {first['ImageId']} in this "
                             "account (us-east-1): choose another name or deregister it\n")
    assert [i["ImageId"] for i in lab.images()] == [first["ImageId"]]


def test_a_missing_snapshot_is_one_line_naming_it(lab):
    result = lab.inv("gentoo-web", "--snapshot", "snap-0123456789abcdef0")
    assert result.returncode == EXIT_FAILED
    assert result.stderr == ("error: --snapshot: describe snapshot snap-0123456789abcdef0: not found in region "
                             "us-east-1 (the id, or ec2.region)\n")
    assert lab.images() == []


@pytest.mark.parametrize("options, message", [
    (ami.AmiOptions("gentoo-web"), "--snapshot / --host: give exactly one"),
    (ami.AmiOptions("gentoo-web", snapshot="snap-0123456789abcdef0", host="web1"),
     "--snapshot / --host: give exactly one"),
    (ami.AmiOptions("gentoo-web", snapshot="vol-0123"), "--snapshot: 'vol-0123' is not a snapshot id"),
    (ami.AmiOptions("x", snapshot="snap-0123456789abcdef0"), "NAME: 'x' is not an image name"),
    (ami.AmiOptions("gentoo-web", snapshot="snap-0123456789abcdef0", boot_mode="bios"),
     "--boot-mode: 'bios' is not one of legacy-bios, uefi, uefi-preferred"),
    (ami.AmiOptions("gentoo-web", snapshot="snap-0123456789abcdef0", root_device="xvda"),
     "--root-device: 'xvda' is not a device name"),
    (ami.AmiOptions("gentoo-web", snapshot="snap-0123456789abcdef0", architecture="amd64"),
     "--arch: 'amd64' is not one of"),
])
def test_bad_options_are_one_line_exit_2_before_any_aws_call(lab, monkeypatch, options, message):
    code, out = lab.run(options, monkeypatch)
    assert code == EXIT_CONFIG
    assert out.splitlines()[-1].startswith(f"error: {message}")
    assert lab.sent.names() == []


def test_a_bad_ec2_setting_is_one_line_exit_2_and_touches_nothing(lab):
    lab.config["ec2"]["boot_mode"] = "bios"
    result = lab.inv("gentoo-web", "--snapshot", "snap-0123456789abcdef0")
    assert result.returncode == EXIT_CONFIG
    assert result.stderr == "ec2.boot_mode: 'bios' is not one of 'legacy-bios', 'uefi', 'uefi-preferred'\n"
    assert not (lab.root / "state").exists()


def test_record_sees_every_request(lab):
    """The recorder the tests above rely on: it sees a request that changes something, with its body."""
    volume_id = ec2.root_volume(lab.client, launch(lab.client)).volume_id
    sent = record(lab.client)
    lab.client.create_tags(Resources=[volume_id], Tags=[{"Key": "a", "Value": "b"}])
    assert sent.changing() == ["CreateTags"] and sent.body("CreateTags")["Tag.1.Key"] == "a"


# --host: a fleet host's root volume, snapshotted first ------------------------------------------------
def with_host(lab: AmiLab, instance_id: str = "", **settings) -> AmiLab:
    """One fleet host; nothing listens at its address (no SSH is needed when its instance id is known)."""
    host = {"name": "web1", "host": "192.0.2.10", "instance_id": instance_id, **settings}
    lab.config["fleet"] = {"hosts": [{"name": "db1", "host": "192.0.2.11"}, host]}
    return lab


def regional(lab: AmiLab, region: str):
    return ec2.ec2_client(ec2.Ec2Settings(endpoint_url=lab.moto.endpoint_url, region=region))


def test_host_snapshots_its_root_first_in_the_hosts_region_then_registers(lab, monkeypatch, capsys):
    """The instance is in the host's own region (fleet.hosts[].region), not ec2.region's default."""
    client = regional(lab, "eu-west-1")
    instance_id = launch(client, root="/dev/xvda")
    volume = ec2.root_volume(client, instance_id)
    with_host(lab, instance_id, region="eu-west-1")
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == 0, out
    assert lab.sent.changing() == ["CreateSnapshot", "RegisterImage", "CreateTags"]
    snapshot_id = summary_value(out, "snapshot")
    snapshot = client.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["VolumeId"] == volume.volume_id and snapshot["State"] == "completed"
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert (tags["gentoo-ec2-orchestrator:host"], tags["gentoo-ec2-orchestrator:image"]) == ("web1", "gentoo-web1")
    body = lab.sent.body("RegisterImage")
    assert (body["BlockDeviceMapping.1.Ebs.SnapshotId"], body["RootDeviceName"], body["Architecture"]) == \
        (snapshot_id, "/dev/xvda", "x86_64")
    [image] = client.describe_images(Owners=["self"])["Images"]
    assert summary_value(out, "image") == f"{image['ImageId']} (gentoo-web1)"
    assert summary_value(out, "host") == f"web1 ({instance_id})"
    assert f"snapshot {snapshot_id}: 100% (completed)" in capsys.readouterr().out  # progress: the process's stdout


def test_host_dry_prints_the_snapshot_and_the_image_and_makes_neither(lab, monkeypatch):
    instance_id = launch(lab.client)
    with_host(lab, instance_id)
    stock = {s["SnapshotId"] for s in lab.client.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch, dry=True)
    assert code == 0, out
    assert lab.sent.changing() == [] and lab.images() == []
    assert {s["SnapshotId"] for s in lab.client.describe_snapshots(OwnerIds=["self"])["Snapshots"]} == stock
    calls = [line for line in out.splitlines() if line.startswith("[dry-run] ec2 ")]
    assert [line.split(" ", 3)[2] for line in calls] == ["CreateSnapshot", "RegisterImage", "CreateTags"]
    assert '"SnapshotId":"snap-DRYRUN"' in calls[1]


def test_host_with_a_taken_name_makes_no_snapshot(lab, monkeypatch):
    instance_id = launch(lab.client)
    with_host(lab, instance_id)
    first = ec2.register_ami(job_run()[0], lab.client, "gentoo-web1", lab.snapshot(), wait_timeout=60)
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (f"error: NAME: image name 'gentoo-web1' is already used by {first} in this "
                                    "account (us-east-1): choose another name or deregister it")
    assert lab.sent.changing() == []


def test_host_whose_instance_is_gone_names_it_and_the_hosts_region_setting(lab, monkeypatch):
    with_host(lab, "i-0123456789abcdef0", region="eu-west-1")
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == ("error: describe instance i-0123456789abcdef0: not found in region eu-west-1 "
                                    "(the id, or fleet.hosts[1].region)")
    assert lab.sent.changing() == []


def test_host_whose_root_is_not_an_ebs_mapping_makes_no_snapshot(lab, monkeypatch):
    """moto's own case of a root device with no EBS volume behind it (launched without a mapping)."""
    instance_id = launch(lab.client, mapped=False)
    with_host(lab, instance_id)
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == EXIT_FAILED
    assert out.splitlines()[-1] == (f"error: instance {instance_id}: no EBS volume at its root device /dev/xvda "
                                    "(EBS mappings: /dev/sda1)")
    assert lab.sent.changing() == []


@pytest.mark.parametrize("host, message", [
    ("web9", "--host: no host 'web9' in fleet.hosts (known: db1, web1)"),
    ("@all", "--host: '@all' means 2 hosts; an image is made from one host"),
])
def test_host_must_name_one_fleet_host(lab, monkeypatch, host, message):
    with_host(lab, "i-0123456789abcdef0")
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host=host), monkeypatch)
    assert code == EXIT_CONFIG and out.splitlines()[-1] == f"error: {message}"
    assert lab.sent.names() == []


def test_an_instance_booting_uefi_while_the_image_says_bios_is_warned(lab, monkeypatch):
    """moto reports no boot mode for an instance: its real DescribeInstances answer gets the field EC2 sets
    (CurrentInstanceBootMode) added on botocore's after-call event."""
    instance_id = launch(lab.client)
    with_host(lab, instance_id)

    def booted_uefi(parsed, **_):
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                instance["CurrentInstanceBootMode"] = "uefi"

    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch,
                        hooks=[("after-call.ec2.DescribeInstances", booted_uefi)])
    assert code == 0, out
    assert (f"warning: web1 ({instance_id}) boots uefi, the image is registered legacy-bios (--boot-mode / "
            "ec2.boot_mode): it may not boot") in out.splitlines()
    assert lab.sent.body("RegisterImage")["BootMode"] == "legacy-bios"
    code, out = lab.run(ami.AmiOptions("gentoo-web1-uefi", host="web1", boot_mode="uefi"), monkeypatch,
                        hooks=[("after-call.ec2.DescribeInstances", booted_uefi)])
    assert code == 0 and "warning:" not in out


# --host without an instance id: the host tells it over SSH (a real sshd on a loopback port) ----------




def reached_over_ssh(lab: AmiLab, sshd, asset_tag: str) -> AmiLab:
    """web1 is the real sshd; its ``root`` a temp dir whose DMI asset tag is ``asset_tag`` (what a Nitro
    instance's firmware sets); the metadata service is never asked for a root other than /."""
    root = lab.root / "web1-root"
    tag = root / "sys/devices/virtual/dmi/id/board_asset_tag"
    tag.parent.mkdir(parents=True)
    tag.write_text(asset_tag + "\n")
    lab.config["fleet"] = {"hosts": [{"name": "web1", "host": sshd.host, "port": sshd.port, "user": sshd.user,
                                      "key_filename": sshd.key_filename, "known_hosts": sshd.known_hosts,
                                      "root": str(root)}]}
    return lab


def test_host_without_an_instance_id_is_told_it_over_ssh(lab, sshd, every_session_ends, monkeypatch):
    instance_id = launch(lab.client)
    reached_over_ssh(lab, sshd, instance_id)
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch, dry=True)
    assert code == 0, out
    assert summary_value(out, "host") == f"web1 ({instance_id})" and lab.sent.changing() == []
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == 0, out
    volume = ec2.root_volume(lab.client, instance_id)
    snapshot = lab.client.describe_snapshots(SnapshotIds=[summary_value(out, "snapshot")])["Snapshots"][0]
    assert snapshot["VolumeId"] == volume.volume_id
    assert lab.sent.changing() == ["CreateSnapshot", "RegisterImage", "CreateTags"]


def test_a_host_that_does_not_tell_its_instance_id_is_one_line_naming_the_setting(lab, sshd, every_session_ends,
                                                                                   monkeypatch):
    reached_over_ssh(lab, sshd, "To Be Filled By O.E.M.")
    code, out = lab.run(ami.AmiOptions("gentoo-web1", host="web1"), monkeypatch)
    assert code == EXIT_CONFIG
    assert out.splitlines()[-1] == ("error: fleet.hosts[0].instance_id: not set, and web1 did not tell its EC2 "
                                    "instance id (no DMI asset tag, no answer from the metadata service): set it")
    assert lab.sent.names() == []
