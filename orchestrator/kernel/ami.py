"""``inv ami``: an EBS-backed image registered from a snapshot, or from a fleet host's root volume.

With ``--snapshot`` the snapshot must exist (a pending one is waited for). With
``--host`` the host's instance (``fleet.hosts[].instance_id``, else told by the
host over SSH: ``fleet.facts``) has its root volume snapshotted first, and the image takes the
instance's root device name and architecture unless told otherwise. Every check
that needs no change (names, the snapshot, the instance, a taken image name)
runs before anything is made, so a refused run leaves nothing behind; ``--dry``
runs the same checks and prints each changing call instead of making it.

The image is proven by EC2 itself: ``available`` under the name asked for. An
image is only as consistent as its snapshot: a running instance's root is
snapshotted crash-consistent (as ``aws ec2 create-image --no-reboot`` would);
stop the instance first for a clean filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import ec2
from ..config import Ec2Config, FleetConfig, HostConfig
from ..errors import ConfigError, OrchestratorError
from ..fleet import connect, select_hosts
from ..fleet.facts import gather
from ..job import JobRun

AMI_NAME = re.compile(r"[A-Za-z0-9()\[\]./\-'@_ ]{3,128}")
SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{8,17}")
SOURCE_TAG = "gentoo-ec2-orchestrator:source-snapshot"
IMAGE_TAG = "gentoo-ec2-orchestrator:image"  # on a snapshot made for an image: the image's name


@dataclass(frozen=True)
class AmiOptions:
    """What ``inv ami`` was asked; "" means the default (the host's own, else ``ec2.*``, else EC2's usual)."""

    name: str
    snapshot: str = ""
    host: str = ""
    root_device: str = ""
    boot_mode: str = ""
    architecture: str = ""
    ena: bool = True
    description: str = ""

    def check(self) -> None:
        if not AMI_NAME.fullmatch(self.name) or self.name != self.name.strip():
            raise ConfigError(f"NAME: {self.name!r} is not an image name (3-128 of letters, digits, spaces and "
                              "( ) [ ] . / - ' @ _)")
        if bool(self.snapshot) == bool(self.host):
            raise ConfigError("--snapshot / --host: give exactly one (an existing snapshot, or a fleet host whose "
                              "root volume is snapshotted first)")
        if self.snapshot and not SNAPSHOT_ID.fullmatch(self.snapshot):
            raise ConfigError(f"--snapshot: {self.snapshot!r} is not a snapshot id like snap-0123456789abcdef0")
        if self.boot_mode and self.boot_mode not in ec2.BOOT_MODES:
            raise ConfigError(f"--boot-mode: {self.boot_mode!r} is not one of {', '.join(ec2.BOOT_MODES)}")
        if self.architecture and self.architecture not in ec2.ARCHITECTURES:
            raise ConfigError(f"--arch: {self.architecture!r} is not one of {', '.join(ec2.ARCHITECTURES)}")
        if self.root_device and not re.fullmatch(r"/dev/[a-z0-9]+", self.root_device):
            raise ConfigError(f"--root-device: {self.root_device!r} is not a device name like /dev/xvda")


@dataclass(frozen=True)
class Source:
    """Where the image's root comes from: a snapshot (made here or given), and what the instance says."""

    snapshot_id: str
    root_device: str = ""
    architecture: str = ""
    boot_mode: str = ""  # the instance's own, when it reports one
    host: str = ""
    instance_id: str = ""


def make_ami(run: JobRun, options: AmiOptions) -> str:
    """Register the image ``options`` asks for; returns its id (``ami-DRYRUN`` under ``--dry``)."""
    options.check()
    cfg: Ec2Config = run.section("ec2")
    if options.host:
        client, source = _from_host(run, cfg, options)
    else:
        client = ec2.ec2_client(cfg.settings())
        _refuse_taken_name(client, options.name)
        source = _from_snapshot(run, client, cfg, options.snapshot)
    boot_mode = options.boot_mode or cfg.boot_mode
    if source.boot_mode and source.boot_mode != boot_mode:
        run.report.warnings.append(f"{source.host} ({source.instance_id}) boots {source.boot_mode}, the image is "
                                   f"registered {boot_mode} (--boot-mode / ec2.boot_mode): it may not boot")
    tags = {SOURCE_TAG: source.snapshot_id, **({ec2.HOST_TAG: source.host} if source.host else {})}
    arguments = {"root_device_name": options.root_device or source.root_device or "/dev/xvda",
                 "architecture": options.architecture or source.architecture or "x86_64",
                 "ena": options.ena, "boot_mode": boot_mode, "description": options.description}
    run.report.summary["request"] = ec2.image_request(options.name, source.snapshot_id, **arguments)
    image_id = ec2.register_ami(run, client, options.name, source.snapshot_id, **arguments, tags=tags,
                                wait_timeout=cfg.image_wait_timeout, poll_seconds=cfg.poll_seconds)
    _report(run, options, source, image_id)
    return image_id


def _refuse_taken_name(client, name: str) -> None:
    """Before any snapshot: a name this account already uses would only fail after the snapshot was made."""
    taken = ec2.existing_image(client, name)
    if taken:
        raise OrchestratorError(f"NAME: image name {name!r} is already used by {taken} in this account "
                                f"({client.meta.region_name}): choose another name or deregister it")


def _from_snapshot(run: JobRun, client, cfg: Ec2Config, snapshot_id: str) -> Source:
    """The given snapshot, which must exist; a pending one is waited for (not under ``--dry``)."""
    try:
        snapshot = ec2.describe_snapshot(client, snapshot_id)
    except OrchestratorError as exc:
        raise OrchestratorError(f"--snapshot: {exc}") from None
    state = snapshot.get("State")
    if state == "error":
        raise OrchestratorError(f"--snapshot: snapshot {snapshot_id} is in state error "
                                f"({snapshot.get('StateMessage') or 'no reason given'})")
    if state != "completed" and not run.dry:
        ec2.wait_snapshot(run, client, snapshot_id, timeout=cfg.snapshot_wait_timeout,
                          poll_seconds=cfg.poll_seconds)
    return Source(snapshot_id)


def _from_host(run: JobRun, cfg: Ec2Config, options: AmiOptions):
    """Snapshot the fleet host's root volume (after every check), and what its instance says about booting."""
    host, key = _one_host(run.section("fleet"), options.host)
    instance_id = host.instance_id or _told_instance_id(run, host, key)
    client = ec2.ec2_client(cfg.settings(), region=host.region, region_setting=f"{key}.region")
    _refuse_taken_name(client, options.name)
    instance = ec2.instance_of(client, instance_id)
    ec2.root_volume(client, instance_id)  # an instance-store or unmapped root stops here, before anything
    snapshot_id = ec2.snapshot_root(
        run, client, instance_id, host=host.name, description=f"root of {host.name} ({instance_id}) for image "
        f"{options.name}", tags={IMAGE_TAG: options.name}, wait_timeout=cfg.snapshot_wait_timeout,
        poll_seconds=cfg.poll_seconds)
    boot_mode = instance.get("CurrentInstanceBootMode") or instance.get("BootMode") or ""
    return client, Source(snapshot_id, instance.get("RootDeviceName", ""), instance.get("Architecture", ""),
                          boot_mode, host.name, instance_id)


def _told_instance_id(run: JobRun, host: HostConfig, key: str) -> str:
    """The instance id the host itself tells over SSH (its DMI asset tag, else IMDSv2): read-only, also dry."""
    with connect(run, host) as target:
        told = gather(target, host).instance_id
    if not told:
        raise ConfigError(f"{key}.instance_id: not set, and {host.name} did not tell its EC2 instance id (no DMI "
                          "asset tag, no answer from the metadata service): set it")
    run.progress.say(f"{host.name}: instance {told} (told by the host)")
    return told


def _one_host(fleet: FleetConfig, name: str) -> tuple[HostConfig, str]:
    hosts = select_hosts(fleet, [name], option="--host")
    if len(hosts) != 1:
        raise ConfigError(f"--host: {name!r} means {len(hosts)} hosts; an image is made from one host")
    return hosts[0], f"fleet.hosts[{fleet.hosts.index(hosts[0])}]"


def _report(run: JobRun, options: AmiOptions, source: Source, image_id: str) -> None:
    summary = run.report.summary
    summary["image"] = f"{image_id} ({options.name})" + (" (dry run: nothing registered)" if run.dry else "")
    summary["snapshot"] = source.snapshot_id
    if source.host:
        summary["host"] = f"{source.host} ({source.instance_id})"
    summary["boot mode"] = summary["request"]["BootMode"]
