"""EC2 operations for kernels and images: one room for deploy-kernel, ``inv ami`` and the fleet inventory.

Every call that changes something (a snapshot, an image, tags, a reboot) is
printed instead of made under ``--dry`` (``[dry-run] ec2 CreateSnapshot VolumeId=...``,
the parameters exactly as they would be sent); calls that only look (describe,
console output) run under ``--dry`` too, so a dry run still finds a missing
instance or a taken image name. Every AWS error is one line naming the setting
to fix (``aws.aws_error`` with the caller's setting names, ``ec2.region``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from . import aws
from .errors import ConfigError, OrchestratorError

HOST_TAG = "gentoo-ec2-orchestrator:host"
DRY_SNAPSHOT = "snap-DRYRUN"
DRY_IMAGE = "ami-DRYRUN"
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
ARCHITECTURES = ("x86_64", "arm64", "i386")
POLL_SECONDS = 15.0  # between two looks at a snapshot or an image being made
NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed", "InvalidSnapshot.NotFound",
             "InvalidSnapshotID.Malformed", "InvalidAMIID.NotFound", "InvalidAMIID.Malformed",
             "InvalidVolume.NotFound")


@dataclass(frozen=True)
class Ec2Settings:
    """What the caller's config says about reaching EC2; ``setting`` prefixes the setting names in errors."""

    region: str = ""
    endpoint_url: str = ""
    profile: str = ""
    setting: str = "ec2"
    max_attempts: int = 10

    @property
    def hints(self) -> aws.SettingHints:
        return _hints(self.setting)


@dataclass(frozen=True)
class RootVolume:
    volume_id: str
    device_name: str
    availability_zone: str
    size_gib: int


def _hints(setting: str) -> aws.SettingHints:
    return aws.SettingHints(profile=f"{setting}.profile", region=f"{setting}.region",
                            endpoint_url=f"{setting}.endpoint_url")


def ec2_client(settings: Ec2Settings, *, region: str = "", region_setting: str = ""):
    """An EC2 client from the normal credential chain; ``region`` (a host's own) overrides the settings'.

    ``region_setting`` names where that region came from (``fleet.hosts[2].region``), for errors.
    """
    hints = settings.hints
    if region and region_setting:
        hints = dataclasses.replace(hints, region=region_setting)
    client = aws.client("ec2", region=region or settings.region, endpoint_url=settings.endpoint_url,
                        profile=settings.profile, max_attempts=settings.max_attempts, setting_hints=hints)
    client._orchestrator_hints = hints  # read back by ec2_error, for clients made here
    return client


def ec2_error(client, exc: Exception, what: str) -> OrchestratorError:
    """``aws.aws_error`` with the client's setting names; a missing resource also names the region looked in."""
    hints = getattr(client, "_orchestrator_hints", None) or _hints("ec2")
    if isinstance(exc, botocore.exceptions.ClientError) and exc.response.get("Error", {}).get("Code") in NOT_FOUND:
        region = client.meta.region_name
        return OrchestratorError(aws.scrub(f"{what}: not found in region {region} (the id, or {hints.region})"))
    return aws.aws_error(exc, what, hints)


def call_line(operation: str, params: Mapping[str, Any]) -> str:
    """``[dry-run] ec2 Operation Key=value ...``: the request exactly as it would be sent."""
    return " ".join([f"[dry-run] ec2 {operation}", *(f"{key}={_value(value)}" for key, value in params.items())])


def _value(value: Any) -> str:
    if isinstance(value, str) and value and not any(ch.isspace() or ch in "\"'" for ch in value):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


def instance_of(client, instance_id: str) -> dict:
    """The one instance ``instance_id`` as describe_instances tells it; an error naming it when there is none."""
    what = f"describe instance {instance_id}"
    try:
        reservations = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except Exception as exc:
        raise ec2_error(client, exc, what) from None
    found = [i for r in reservations for i in r.get("Instances", []) if i.get("InstanceId") == instance_id]
    if not found:
        raise OrchestratorError(f"{what}: not found in region {client.meta.region_name}")
    return found[0]


def root_volume(client, instance_id: str) -> RootVolume:
    """The EBS volume the instance boots from (its RootDeviceName among its BlockDeviceMappings)."""
    instance = instance_of(client, instance_id)
    device = instance.get("RootDeviceName") or ""
    if instance.get("RootDeviceType", "ebs") != "ebs":
        raise OrchestratorError(f"instance {instance_id}: root device {device or '?'} is "
                                f"{instance.get('RootDeviceType')}, not EBS: it cannot be snapshotted")
    mapped = {m.get("DeviceName"): m.get("Ebs") or {} for m in instance.get("BlockDeviceMappings", [])}
    volume_id = mapped.get(device, {}).get("VolumeId", "")
    if not device or not volume_id:
        devices = ", ".join(d for d in mapped if d) or "none"
        raise OrchestratorError(f"instance {instance_id}: no EBS volume at its root device {device or '(none)'} "
                                f"(EBS mappings: {devices})")
    try:
        volume = client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    except Exception as exc:
        raise ec2_error(client, exc, f"describe root volume {volume_id} of {instance_id}") from None
    zone = volume.get("AvailabilityZone") or instance.get("Placement", {}).get("AvailabilityZone", "")
    return RootVolume(volume_id, device, zone, int(volume.get("Size", 0)))


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": str(key), "Value": str(value)} for key, value in tags.items()]


def snapshot_root(run, client, instance_id: str, *, host: str, description: str, tags: Mapping[str, str],
                  wait_timeout: float, poll_seconds: float = POLL_SECONDS) -> str:
    """Snapshot the instance's root volume, tagged, and wait until it is completed; returns the snapshot id.

    Tags: ``Name`` (``<host> root <UTC time>`` unless ``tags`` has one),
    ``gentoo-ec2-orchestrator:host``, then ``tags`` (``kernel-from``, ``kernel-to``, ...).
    """
    volume = root_volume(client, instance_id)
    stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    all_tags = {"Name": f"{host} root {stamp}", **tags, HOST_TAG: host}
    params = {"VolumeId": volume.volume_id, "Description": description,
              "TagSpecifications": [{"ResourceType": "snapshot", "Tags": tag_list(all_tags)}]}
    if run.dry:
        run.echo(call_line("CreateSnapshot", params))
        return DRY_SNAPSHOT
    try:
        snapshot_id = client.create_snapshot(**params)["SnapshotId"]
    except Exception as exc:
        raise ec2_error(client, exc, f"snapshot {volume.volume_id} (root of {host}, {instance_id})") from None
    run.progress.say(f"snapshot {snapshot_id} of {volume.volume_id} ({host} {volume.device_name}, "
                     f"{volume.size_gib} GiB) started")
    wait_snapshot(run, client, snapshot_id, timeout=wait_timeout, poll_seconds=poll_seconds)
    return snapshot_id


def wait_snapshot(run, client, snapshot_id: str, *, timeout: float, poll_seconds: float = POLL_SECONDS) -> dict:
    """Poll until the snapshot is ``completed`` showing its Progress; ``error`` or the timeout is an error."""

    def completed(snapshot: dict) -> bool:
        if snapshot.get("State") == "error":
            reason = snapshot.get("StateMessage") or "no reason given"
            raise OrchestratorError(f"snapshot {snapshot_id}: state error ({reason})")
        return snapshot.get("State") == "completed"

    def late(snapshot: dict) -> str:
        return (f"snapshot {snapshot_id}: not completed after {timeout:g} s (state {snapshot.get('State', '')}, "
                f"{snapshot.get('Progress') or '0%'}); it may still complete: look at it before snapshotting again")

    with PercentProgress(run.progress, f"snapshot {snapshot_id}") as shown:
        return poll_until(lambda: describe_snapshot(client, snapshot_id), completed, late,
                          show=lambda snapshot: shown.at(snapshot.get("Progress") or "", snapshot.get("State", "")),
                          timeout=timeout, poll_seconds=poll_seconds)


def poll_until(describe: Callable[[], dict], done: Callable[[dict], bool], late: Callable[[dict], str], *,
               show: Callable[[dict], None], timeout: float, poll_seconds: float) -> dict:
    """``describe()`` every ``poll_seconds`` until ``done`` says so (it raises for a failed state); after
    ``timeout`` seconds, ``late(last answer)`` is the error. Each answer is shown first."""
    deadline = time.monotonic() + timeout
    while True:
        found = describe()
        show(found)
        if done(found):
            return found
        if time.monotonic() >= deadline:
            raise OrchestratorError(late(found))
        time.sleep(max(0.0, min(poll_seconds, deadline - time.monotonic())))


def describe_snapshot(client, snapshot_id: str) -> dict:
    try:
        found = client.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except Exception as exc:
        raise ec2_error(client, exc, f"describe snapshot {snapshot_id}") from None
    if not found:
        raise OrchestratorError(f"describe snapshot {snapshot_id}: not found in region {client.meta.region_name}")
    return found[0]


class PercentProgress:
    """A percentage AWS reports (``"42%"``): a tqdm bar on a terminal, one plain line per change otherwise."""

    def __init__(self, progress, desc: str):
        self.progress = progress
        self.desc = desc
        self.last: tuple[str, str] | None = None
        self.counter = progress.counter(desc, total=100, unit="%") if progress.mode == "bar" else None

    def at(self, percent: str, state: str) -> None:
        if (percent, state) == self.last:
            return
        self.last = (percent, state)
        if self.counter is not None:
            value = _percent(percent)
            self.counter.update(max(0, value - self.counter.n), note=state)
        else:
            self.progress.say(f"{self.desc}: {percent or '0%'} ({state})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.counter is not None:
            self.counter.close()


def _percent(text: str) -> int:
    try:
        return max(0, min(100, int(float(text.rstrip("%").strip() or 0))))
    except ValueError:
        return 0


def console_output(client, instance_id: str) -> str:
    """The instance's serial console text (the latest, where the instance type keeps it), "" when none yet."""
    what = f"console output of {instance_id}"
    try:
        answer = client.get_console_output(InstanceId=instance_id, Latest=True)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("UnsupportedOperation", "InvalidParameter",
                                                             "InvalidParameterCombination",
                                                             "InvalidParameterValue"):
            raise ec2_error(client, exc, what) from None
        answer = _plain_console(client, instance_id, what)
    except Exception as exc:
        raise ec2_error(client, exc, what) from None
    return answer.get("Output") or ""  # botocore decodes EC2's base64 itself (after-call handler)


def _plain_console(client, instance_id: str, what: str) -> dict:
    """Instance types without a latest-output buffer (Xen ones) answer only without ``Latest``."""
    try:
        return client.get_console_output(InstanceId=instance_id)
    except Exception as exc:
        raise ec2_error(client, exc, what) from None


def reboot_instance(run, client, instance_id: str) -> None:
    params = {"InstanceIds": [instance_id]}
    if run.dry:
        run.echo(call_line("RebootInstances", params))
        return
    try:
        client.reboot_instances(**params)
    except Exception as exc:
        raise ec2_error(client, exc, f"reboot {instance_id}") from None


def image_request(name: str, snapshot_id: str, *, root_device_name: str = "/dev/xvda",
                  architecture: str = "x86_64", ena: bool = True, boot_mode: str = "legacy-bios",
                  description: str = "") -> dict:
    """The RegisterImage parameters for an HVM image booting from ``snapshot_id``."""
    if boot_mode not in BOOT_MODES:
        raise ConfigError(f"boot mode {boot_mode!r}: expected one of {', '.join(BOOT_MODES)}")
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    if not root_device_name.startswith("/dev/"):
        raise ConfigError(f"root device {root_device_name!r}: expected a device name like /dev/xvda")
    request = {"Name": name, "Architecture": architecture, "VirtualizationType": "hvm", "EnaSupport": ena,
               "SriovNetSupport": "simple", "BootMode": boot_mode, "RootDeviceName": root_device_name,
               "BlockDeviceMappings": [{"DeviceName": root_device_name, "Ebs": {
                   "SnapshotId": snapshot_id, "DeleteOnTermination": True, "VolumeType": "gp3"}}]}
    if description:
        request["Description"] = description
    return request


def existing_image(client, name: str) -> str:
    """The id of this account's image called ``name``, "" when there is none."""
    try:
        images = client.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    except Exception as exc:
        raise ec2_error(client, exc, f"look for an image named {name!r}") from None
    return next((i["ImageId"] for i in images if i.get("Name") == name), "")


def register_ami(run, client, name: str, snapshot_id: str, *, root_device_name: str = "/dev/xvda",
                 architecture: str = "x86_64", ena: bool = True, boot_mode: str = "legacy-bios",
                 description: str = "", tags: Mapping[str, str] | None = None, wait_timeout: float,
                 poll_seconds: float = POLL_SECONDS) -> str:
    """Register an image from a snapshot, wait until it is available, tag it; returns its id.

    A name this account already uses is refused (AWS would refuse it too, but
    only after the snapshot was made; we look first).
    """
    request = image_request(name, snapshot_id, root_device_name=root_device_name, architecture=architecture,
                            ena=ena, boot_mode=boot_mode, description=description)
    taken = existing_image(client, name)
    if taken:
        raise OrchestratorError(f"image name {name!r} is already used by {taken} in this account "
                                f"({client.meta.region_name}): choose another name or deregister it")
    image_tags = tag_list({"Name": name, **(tags or {})})
    if run.dry:
        run.echo(call_line("RegisterImage", request))
        run.echo(call_line("CreateTags", {"Resources": [DRY_IMAGE], "Tags": image_tags}))
        return DRY_IMAGE
    try:
        image_id = client.register_image(**request)["ImageId"]
    except Exception as exc:
        raise ec2_error(client, exc, f"register image {name!r} from {snapshot_id}") from None
    run.progress.say(f"image {image_id} ({name}) registered from {snapshot_id}")
    wait_image(run, client, image_id, timeout=wait_timeout, poll_seconds=poll_seconds)
    try:
        client.create_tags(Resources=[image_id], Tags=image_tags)
    except Exception as exc:
        raise ec2_error(client, exc, f"tag image {image_id}") from None
    return image_id


def wait_image(run, client, image_id: str, *, timeout: float, poll_seconds: float = POLL_SECONDS) -> dict:
    """Poll until the image is ``available``; ``failed`` (or another end state) or the timeout is an error."""
    said = {"state": None}

    def show(image: dict) -> None:
        if image.get("State", "") != said["state"]:
            said["state"] = image.get("State", "")
            run.progress.say(f"image {image_id}: {said['state']}")

    def available(image: dict) -> bool:
        state = image.get("State", "")
        if state not in ("available", "pending", ""):
            reason = (image.get("StateReason") or {}).get("Message") or "no reason given"
            raise OrchestratorError(f"image {image_id}: state {state} ({reason})")
        return state == "available"

    def late(image: dict) -> str:
        return (f"image {image_id}: not available after {timeout:g} s (state {image.get('State', '')}); "
                "it may still become available: look at it before registering again")

    return poll_until(lambda: _describe_image(client, image_id), available, late, show=show, timeout=timeout,
                      poll_seconds=poll_seconds)


def _describe_image(client, image_id: str) -> dict:
    try:
        found = client.describe_images(ImageIds=[image_id])["Images"]
    except Exception as exc:
        raise ec2_error(client, exc, f"describe image {image_id}") from None
    if not found:
        raise OrchestratorError(f"describe image {image_id}: not found in region {client.meta.region_name}")
    return found[0]


__all__ = [
    "ARCHITECTURES", "BOOT_MODES", "DRY_IMAGE", "DRY_SNAPSHOT", "HOST_TAG", "Ec2Settings", "RootVolume", "call_line",
    "console_output", "describe_snapshot", "ec2_client", "ec2_error", "existing_image", "image_request",
    "instance_of", "reboot_instance", "register_ami", "root_volume", "snapshot_root", "wait_image", "wait_snapshot",
]
