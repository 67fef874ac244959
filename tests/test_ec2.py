"""orchestrator.ec2 against a real moto server over HTTP on 127.0.0.1.

What moto cannot do, and what stands in for it (each test says so too):

* moto completes a snapshot at create (``100%`` at once) and never reaches ``error``;
  and it reports every instance's root as EBS. The in-between progress lines, the
  error state, the timeout and an instance-store root are tested with botocore's
  ``Stubber`` on a client (answers shaped like EC2's), only for those.
* moto keeps only Name and Description of ``register_image``: the request we sent
  is captured on the client's ``before-call`` event and asserted (``ec2_lab.record``).
"""

from __future__ import annotations

import datetime

import pytest
from botocore.stub import Stubber

from daemons import free_port
from ec2_lab import job_run, launch, record
from moto_server import running_moto
from orchestrator import ec2
from orchestrator.errors import ConfigError, OrchestratorError
import test_s3_store


aws_env = test_s3_store.aws_env  # the fixture: fake credentials from the environment only


@pytest.fixture(scope="module")
def moto():
    with running_moto() as server:
        yield server


@pytest.fixture
def client(moto, aws_env):
    moto.reset()
    return ec2.ec2_client(ec2.Ec2Settings(endpoint_url=moto.endpoint_url))


def stubbed(region: str = "us-east-1"):
    """A client that never leaves the process: for the answers moto cannot give."""
    client = ec2.ec2_client(ec2.Ec2Settings(region=region, endpoint_url="http://127.0.0.1:9"))
    return client, Stubber(client)


def snapshot_answer(state: str, progress: str, message: str = "") -> dict:
    snapshot = {"SnapshotId": "snap-0abc", "VolumeId": "vol-0abc", "State": state, "Progress": progress,
                "StartTime": datetime.datetime(2026, 1, 1), "VolumeSize": 8, "OwnerId": "123456789012"}
    if message:
        snapshot["StateMessage"] = message
    return {"Snapshots": [snapshot]}


def snapshots(client, before: frozenset = frozenset()) -> list[dict]:
    """This account's snapshots, less moto's stock ones (those of its stock images) named in ``before``."""
    return [s for s in client.describe_snapshots(OwnerIds=["self"])["Snapshots"] if s["SnapshotId"] not in before]


def stock(client) -> frozenset:
    return frozenset(s["SnapshotId"] for s in snapshots(client))


def images(client) -> list[dict]:
    return client.describe_images(Owners=["self"])["Images"]


# clients and errors ------------------------------------------------------------------------------
def test_a_hosts_region_overrides_the_settings_region(moto, aws_env):
    settings = ec2.Ec2Settings(region="eu-west-1", endpoint_url=moto.endpoint_url)
    assert ec2.ec2_client(settings).meta.region_name == "eu-west-1"
    assert ec2.ec2_client(settings, region="ap-south-1").meta.region_name == "ap-south-1"


def test_an_unknown_profile_names_the_callers_setting(aws_env):
    with pytest.raises(ConfigError, match=r"^kernel\.deploy\.profile: AWS profile 'nope' not found$"):
        ec2.ec2_client(ec2.Ec2Settings(profile="nope", setting="kernel.deploy"))


def test_an_unreachable_endpoint_is_one_line_naming_the_settings(aws_env):
    client = ec2.ec2_client(ec2.Ec2Settings(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1))
    with pytest.raises(OrchestratorError) as info:
        ec2.instance_of(client, "i-0123456789abcdef0")
    assert str(info.value) == ("describe instance i-0123456789abcdef0: cannot reach the endpoint "
                               "(ec2.endpoint_url / ec2.region)")


def test_no_such_instance_names_it_and_the_region(client):
    with pytest.raises(OrchestratorError) as info:
        ec2.instance_of(client, "i-0123456789abcdef0")
    assert str(info.value) == ("describe instance i-0123456789abcdef0: not found in region us-east-1 "
                               "(the id, or ec2.region)")
    with pytest.raises(OrchestratorError, match="^describe instance i-0123456789abcdef0: not found"):
        ec2.root_volume(client, "i-0123456789abcdef0")


def test_instance_of_returns_the_one_instance(client):
    first, second = launch(client), launch(client)
    assert ec2.instance_of(client, second)["InstanceId"] == second
    assert ec2.instance_of(client, first)["InstanceId"] == first


# root volume ---------------------------------------------------------------------------------------
def test_root_volume_is_the_ebs_volume_at_the_root_device(client):
    instance_id = launch(client, size_gib=20)
    volume = ec2.root_volume(client, instance_id)
    described = client.describe_volumes(VolumeIds=[volume.volume_id])["Volumes"][0]
    assert volume == ec2.RootVolume(described["VolumeId"], "/dev/xvda", "us-east-1a", 20)
    assert described["Attachments"][0]["InstanceId"] == instance_id


def test_a_root_device_without_an_ebs_mapping_is_one_line_naming_the_instance(client):
    """moto's own case: an image rooted at /dev/xvda launched without a mapping gets only a blank /dev/sda1."""
    instance_id = launch(client, mapped=False)
    with pytest.raises(OrchestratorError) as info:
        ec2.root_volume(client, instance_id)
    assert str(info.value) == (f"instance {instance_id}: no EBS volume at its root device /dev/xvda "
                               "(EBS mappings: /dev/sda1)")


def test_an_instance_store_root_is_refused_naming_the_instance():
    """Stubber: moto reports every root as EBS; the answer is shaped like EC2's for an instance-store AMI."""
    client, stub = stubbed()
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [{
        "InstanceId": "i-0abc", "RootDeviceName": "/dev/sda1", "RootDeviceType": "instance-store",
        "BlockDeviceMappings": []}]}]}, {"InstanceIds": ["i-0abc"]})
    with stub, pytest.raises(OrchestratorError) as info:
        ec2.root_volume(client, "i-0abc")
    assert str(info.value) == "instance i-0abc: root device /dev/sda1 is instance-store, not EBS: it cannot be snapshotted"
    stub.assert_no_pending_responses()


# snapshots ----------------------------------------------------------------------------------------
def test_snapshot_root_tags_the_snapshot_and_waits_until_completed(client):
    instance_id = launch(client)
    volume = ec2.root_volume(client, instance_id)
    before = stock(client)
    run, out = job_run()
    snapshot_id = ec2.snapshot_root(run, client, instance_id, host="web1", description="before kernel 6.6.30",
                                    tags={"kernel-from": "6.1.90", "kernel-to": "6.6.30"}, wait_timeout=60)
    [snapshot] = snapshots(client, before)
    assert snapshot["SnapshotId"] == snapshot_id and snapshot["VolumeId"] == volume.volume_id
    assert snapshot["State"] == "completed" and snapshot["Description"] == "before kernel 6.6.30"
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert tags.pop("Name").startswith("web1 root ")
    assert tags == {"gentoo-ec2-orchestrator:host": "web1", "kernel-from": "6.1.90", "kernel-to": "6.6.30"}
    assert f"snapshot {snapshot_id}: 100% (completed)" in out.getvalue()


def test_snapshot_progress_is_one_plain_line_per_change():
    """Stubber: moto completes a snapshot at once, so the 0% -> 42% -> 100% a real one goes through is stubbed."""
    client, stub = stubbed()
    for state, progress in (("pending", ""), ("pending", "42%"), ("pending", "42%"), ("completed", "100%")):
        stub.add_response("describe_snapshots", snapshot_answer(state, progress), {"SnapshotIds": ["snap-0abc"]})
    run, out = job_run()
    with stub:
        ec2.wait_snapshot(run, client, "snap-0abc", timeout=60, poll_seconds=0)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["snapshot snap-0abc: 0% (pending)", "snapshot snap-0abc: 42% (pending)",
                     "snapshot snap-0abc: 100% (completed)"]
    stub.assert_no_pending_responses()


def test_snapshot_progress_on_a_terminal_is_a_bar_that_reaches_100():
    """Stubber, as above; the bar mode is what a tty gets (Progress('bar'))."""
    client, stub = stubbed()
    for state, progress in (("pending", "42%"), ("completed", "100%")):
        stub.add_response("describe_snapshots", snapshot_answer(state, progress), {"SnapshotIds": ["snap-0abc"]})
    run, out = job_run(mode="bar")
    seen = []
    with stub:
        shown = ec2.PercentProgress(run.progress, "snapshot snap-0abc")
        shown.at("42%", "pending")
        seen.append(shown.counter.n)
        shown.at("100%", "completed")
        seen.append(shown.counter.n)
        shown.__exit__(None, None, None)
        ec2.wait_snapshot(run, client, "snap-0abc", timeout=60, poll_seconds=0)
    assert seen == [42, 100]
    assert "\rsnapshot snap-0abc:" in out.getvalue() and "(pending)" not in out.getvalue()
    assert run.progress._bars == []
    stub.assert_no_pending_responses()


def test_a_snapshot_in_error_state_is_an_error_naming_it():
    """Stubber: moto cannot put a snapshot in the error state; EC2 does (e.g. a volume lost mid-copy)."""
    client, stub = stubbed()
    stub.add_response("describe_snapshots", snapshot_answer("pending", "12%"), {"SnapshotIds": ["snap-0abc"]})
    stub.add_response("describe_snapshots", snapshot_answer("error", "12%", "internal error copying"),
                      {"SnapshotIds": ["snap-0abc"]})
    run, out = job_run()
    with stub, pytest.raises(OrchestratorError) as info:
        ec2.wait_snapshot(run, client, "snap-0abc", timeout=60, poll_seconds=0)
    assert str(info.value) == "snapshot snap-0abc: state error (internal error copying)"
    assert "12% (pending)" in out.getvalue()


def test_a_snapshot_not_completed_in_time_is_an_error_naming_it():
    """Stubber: a snapshot that stays pending (moto's never do)."""
    client, stub = stubbed()
    stub.add_response("describe_snapshots", snapshot_answer("pending", "7%"), {"SnapshotIds": ["snap-0abc"]})
    run, _ = job_run()
    with stub, pytest.raises(OrchestratorError) as info:
        ec2.wait_snapshot(run, client, "snap-0abc", timeout=0, poll_seconds=0)
    assert str(info.value).startswith("snapshot snap-0abc: not completed after 0 s (state pending, 7%)")


def test_dry_snapshot_prints_the_call_and_makes_none(client):
    instance_id = launch(client)
    volume = ec2.root_volume(client, instance_id)
    before = stock(client)
    sent = record(client)
    run, out = job_run(dry=True)
    assert ec2.snapshot_root(run, client, instance_id, host="web1", description="before kernel 6.6.30",
                             tags={"kernel-to": "6.6.30"}, wait_timeout=60) == "snap-DRYRUN"
    assert sent.changing() == [] and snapshots(client, before) == []
    [line] = out.getvalue().splitlines()
    assert line.startswith(f'[dry-run] ec2 CreateSnapshot VolumeId={volume.volume_id} '
                           'Description="before kernel 6.6.30" TagSpecifications=[{"ResourceType":"snapshot"')
    assert '{"Key":"gentoo-ec2-orchestrator:host","Value":"web1"}' in line
    assert '{"Key":"kernel-to","Value":"6.6.30"}' in line


# images ---------------------------------------------------------------------------------------------
def test_register_ami_sends_the_whole_request_waits_and_tags(client):
    """moto drops RootDeviceName, EnaSupport, BootMode...: the request we sent is asserted (before-call event)."""
    instance_id = launch(client)
    run, out = job_run()
    snapshot_id = ec2.snapshot_root(run, client, instance_id, host="web1", description="d", tags={},
                                    wait_timeout=60)
    sent = record(client)
    image_id = ec2.register_ami(run, client, "gentoo-web-6.6.30", snapshot_id, boot_mode="legacy-bios",
                                description="web1 with kernel 6.6.30", tags={"kernel": "6.6.30"},
                                wait_timeout=60)
    body = sent.body("RegisterImage")
    assert {k: v for k, v in body.items() if k not in ("Action", "Version")} == {
        "Name": "gentoo-web-6.6.30", "Description": "web1 with kernel 6.6.30", "Architecture": "x86_64",
        "VirtualizationType": "hvm", "EnaSupport": "true", "SriovNetSupport": "simple", "BootMode": "legacy-bios",
        "RootDeviceName": "/dev/xvda", "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.Ebs.SnapshotId": snapshot_id, "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
        "BlockDeviceMapping.1.Ebs.VolumeType": "gp3"}
    assert sent.changing() == ["RegisterImage", "CreateTags"]
    [image] = images(client)
    assert image["ImageId"] == image_id and image["State"] == "available"
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"Name": "gentoo-web-6.6.30", "kernel": "6.6.30"}
    assert f"image {image_id}: available" in out.getvalue()


def test_no_ena_and_uefi_are_sent_as_asked(client):
    instance_id = launch(client)
    run, _ = job_run()
    snapshot_id = ec2.snapshot_root(run, client, instance_id, host="web1", description="d", tags={}, wait_timeout=60)
    sent = record(client)
    ec2.register_ami(run, client, "gentoo-uefi", snapshot_id, ena=False, boot_mode="uefi",
                     root_device_name="/dev/sda1", architecture="arm64", wait_timeout=60)
    body = sent.body("RegisterImage")
    assert (body["EnaSupport"], body["BootMode"], body["RootDeviceName"], body["Architecture"]) == \
        ("false", "uefi", "/dev/sda1", "arm64")
    assert body["BlockDeviceMapping.1.DeviceName"] == "/dev/sda1"


def test_a_taken_image_name_is_refused_before_anything_is_registered(client):
    instance_id = launch(client)
    run, _ = job_run()
    snapshot_id = ec2.snapshot_root(run, client, instance_id, host="web1", description="d", tags={}, wait_timeout=60)
    first = ec2.register_ami(run, client, "gentoo-web", snapshot_id, wait_timeout=60)
    sent = record(client)
    with pytest.raises(OrchestratorError) as info:
        ec2.register_ami(run, client, "gentoo-web", snapshot_id, wait_timeout=60)
    assert str(info.value) == (f"image name 'gentoo-web' is already used by {first} in this account (us-east-1): "
                               "choose another name or deregister it")
    assert sent.changing() == [] and [i["ImageId"] for i in images(client)] == [first]


def test_a_bad_boot_mode_is_refused_before_any_call(client):
    sent = record(client)
    run, _ = job_run()
    with pytest.raises(ConfigError, match="^boot mode 'bios': expected one of legacy-bios, uefi, uefi-preferred$"):
        ec2.register_ami(run, client, "x-image", "snap-0abc", boot_mode="bios", wait_timeout=60)
    assert sent.names() == []


def test_a_failed_image_is_an_error_naming_it():
    """Stubber: moto's images are available at once; EC2's can end 'failed' with a reason."""
    client, stub = stubbed()
    stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0abc", "State": "pending"}]},
                      {"ImageIds": ["ami-0abc"]})
    stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0abc", "State": "failed",
                                                      "StateReason": {"Message": "snapshot not found"}}]},
                      {"ImageIds": ["ami-0abc"]})
    run, out = job_run()
    with stub, pytest.raises(OrchestratorError) as info:
        ec2.wait_image(run, client, "ami-0abc", timeout=60, poll_seconds=0)
    assert str(info.value) == "image ami-0abc: state failed (snapshot not found)"
    assert "image ami-0abc: pending" in out.getvalue()


def test_dry_register_prints_the_exact_request_and_makes_no_change(client):
    sent = record(client)
    run, out = job_run(dry=True)
    assert ec2.register_ami(run, client, "gentoo-web", "snap-0123", description="two words",
                            tags={"kernel": "6.6"}, wait_timeout=60) == "ami-DRYRUN"
    assert sent.names() == ["DescribeImages"] and images(client) == []
    assert out.getvalue().splitlines() == [
        '[dry-run] ec2 RegisterImage Name=gentoo-web Architecture=x86_64 VirtualizationType=hvm EnaSupport=true '
        'SriovNetSupport=simple BootMode=legacy-bios RootDeviceName=/dev/xvda BlockDeviceMappings=[{"DeviceName":'
        '"/dev/xvda","Ebs":{"SnapshotId":"snap-0123","DeleteOnTermination":true,"VolumeType":"gp3"}}] '
        'Description="two words"',
        '[dry-run] ec2 CreateTags Resources=["ami-DRYRUN"] Tags=[{"Key":"Name","Value":"gentoo-web"},'
        '{"Key":"kernel","Value":"6.6"}]']


# console and reboot -----------------------------------------------------------------------------------
def test_console_output_is_decoded_text(client):
    """moto's console is a fixed 2006 Xen boot log, base64 on the wire like EC2's (botocore decodes it)."""
    text = ec2.console_output(client, launch(client))
    assert text.startswith("Linux version 2.6.16-xenU")


def test_console_output_falls_back_without_latest_where_unsupported():
    """Stubber: Xen instance types refuse Latest=True; moto accepts it everywhere."""
    client, stub = stubbed()
    stub.add_client_error("get_console_output", "UnsupportedOperation", "Latest is only on Nitro",
                          expected_params={"InstanceId": "i-0abc", "Latest": True})
    stub.add_response("get_console_output", {"InstanceId": "i-0abc", "Output": "Ym9vdGVkIG9rCg=="},
                      {"InstanceId": "i-0abc"})
    stub.add_response("get_console_output", {"InstanceId": "i-0abc"}, {"InstanceId": "i-0abc", "Latest": True})
    with stub:
        assert ec2.console_output(client, "i-0abc") == "booted ok\n"
        assert ec2.console_output(client, "i-0abc") == ""
    stub.assert_no_pending_responses()


def test_reboot_sends_one_call_and_dry_prints_it_instead(client):
    instance_id = launch(client)
    sent = record(client)
    run, out = job_run(dry=True)
    ec2.reboot_instance(run, client, instance_id)
    assert sent.names() == [] and out.getvalue() == f'[dry-run] ec2 RebootInstances InstanceIds=["{instance_id}"]\n'
    run, _ = job_run()
    ec2.reboot_instance(run, client, instance_id)
    assert sent.body("RebootInstances")["InstanceId.1"] == instance_id
    assert ec2.instance_of(client, instance_id)["State"]["Name"] == "running"


def test_reboot_of_a_missing_instance_names_it(client):
    run, _ = job_run()
    with pytest.raises(OrchestratorError, match="^reboot i-0123456789abcdef0: not found in region us-east-1"):
        ec2.reboot_instance(run, client, "i-0123456789abcdef0")


def test_an_error_answer_is_scrubbed_and_one_line():
    """Stubber: a refusal naming a key id (AWS's own wording) never reaches the message."""
    client, stub = stubbed()
    stub.add_client_error("reboot_instances", "AuthFailure", "key AKIAABCDEFGHIJKLMNOP\nnot valid")
    run, _ = job_run()
    with stub, pytest.raises(OrchestratorError) as info:
        ec2.reboot_instance(run, client, "i-0abc")
    assert str(info.value) == "reboot i-0abc: AWS refused the credentials (AuthFailure)"
